"""`onedp run`: the node graph as separate processes, for machines with only the PyPI wheels.

The processes are the ones the launch file starts, from the same definition
(runtime/graph.py): `python -m onedp_control.ros.<name>_node` with the task's params file, the
overrides of the graph, and node names set by remapping. The runner is itself a small node: it
drives the lifecycle nodes through configure and activate (lifecycle_msgs/ChangeState, what
launch_ros does with its lifecycle events), waits for the sim's episode reports, measures the
command stream and the camera-to-command latency from the topics, and shuts everything down
with SIGINT (then SIGKILL for anything that hangs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onedp_control.errors import ConfigError
from onedp_control.runtime.config import RuntimeConfig, load_runtime_config
from onedp_control.runtime.graph import (
    CHUNK_TOPIC,
    COMMAND_TOPIC,
    DIAGNOSTICS_TOPIC,
    EPISODE_TOPIC,
    POLICY_TIMING_TOPIC,
    LaunchArguments,
    NodeSpec,
    pnp_milk_graph,
)

# How long a lifecycle service call may stay unanswered before the node's state is asked: a
# configure that loads a model takes a few seconds on a loaded 2-core machine.
LIFECYCLE_ANSWER_S = 10.0


def node_command(spec: NodeSpec, config: Path, overrides: dict) -> list[str]:
    command = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    command += ["--params-file", str(config)]
    for key, value in {**spec.parameters, **overrides.get(spec.name, {})}.items():
        # Node-qualified: a plain `-p` is a `/**` value, which the file's node section beats.
        # JSON is YAML, which ROS parses the value as: strings stay strings ('000111').
        command += ["-p", f"{spec.name}:{key}:={json.dumps(value)}"]
    return command


@dataclass
class RunRecord:
    episodes: list[dict] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    observation_age_ms: list[float] = field(default_factory=list)
    command_stamps: list[float] = field(default_factory=list)
    streaming: list[bool] = field(default_factory=list)
    chunk_arrivals: list[tuple[float, float]] = field(default_factory=list)  # (stamp, arrival)
    hold_reasons: Counter = field(default_factory=Counter)  # watchdog reports, by first reason
    robot_hold_reasons: Counter = field(default_factory=Counter)  # robot/sim: why it held


def _percentiles(values, prefix: str) -> dict:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {f"{prefix}_median": None, f"{prefix}_p99": None}
    return {
        f"{prefix}_median": round(float(np.median(array)), 3),
        f"{prefix}_p99": round(float(np.percentile(array, 99)), 3),
    }


def latency_figures(record: RunRecord, period: float) -> dict:
    stamps = np.asarray(record.command_stamps)
    periods = np.diff(stamps) * 1e3 if stamps.size > 1 else np.zeros(0)
    errors = np.abs(periods - period * 1e3)
    # Camera to command: from a chunk's observation to the first command after it arrived.
    to_command = []
    for stamp, arrival in record.chunk_arrivals:
        index = np.searchsorted(stamps, arrival)
        if index < stamps.size:
            to_command.append((stamps[index] - stamp) * 1e3)
    return {
        **_percentiles(record.inference_ms, "inference_ms"),
        **_percentiles(record.observation_age_ms, "observation_age_at_inference_ms"),
        **_percentiles(to_command, "camera_to_command_ms"),
        "command_period_median_ms": round(float(np.median(periods)), 3) if periods.size else None,
        "command_period_error_p99_ms": round(float(np.percentile(errors, 99)), 3)
        if errors.size
        else None,
        "missed_deadlines": int(np.sum(periods > 1.5 * period * 1e3)),
        "commands": int(stamps.size),
        "watchdog_hold_reports": dict(record.hold_reasons),
        "robot_hold_reports": dict(record.robot_hold_reasons),
        "streaming_fraction": round(float(np.mean(record.streaming)), 3)
        if record.streaming
        else None,
        "chunks": len(record.chunk_arrivals),
    }


class GraphRunner:
    def __init__(
        self,
        config_path: Path,
        arguments: LaunchArguments,
        overrides: dict,
        domain_id: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.config: RuntimeConfig = load_runtime_config(config_path)
        self.nodes = pnp_milk_graph(arguments)
        self.engine = arguments.engine or self.config.policy.engine
        self.overrides = overrides
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_dir: Path | None = None
        # A ROS domain of its own keeps this graph apart from any other on the machine (and
        # one test's graph from the next one's processes while they exit).
        self.domain_id = domain_id
        self.record = RunRecord()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ processes
    def start(self, log_dir: Path | None) -> None:
        for spec in self.nodes:
            self.spawn(spec.name, log_dir)

    def spawn(self, name: str, log_dir: Path | None) -> None:
        """(Re)starts one node's process (the fault suite restarts the ones it killed). Its
        output goes to `<log_dir>/<name>.log` (a temporary directory by default), which errors
        quote."""
        spec = next(spec for spec in self.nodes if spec.name == name)
        if log_dir is None:
            log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="onedp-run-"))
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "a")  # noqa: SIM115 - lives with the process
        self.processes[name] = subprocess.Popen(
            node_command(spec, self.config_path, self.overrides),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        if self.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(self.domain_id)
        return env

    def last_words(self, name: str, lines: int = 3) -> str:
        """The end of a node's log, to say why it failed."""
        path = None if self.log_dir is None else self.log_dir / f"{name}.log"
        if path is None or not path.is_file():
            return ""
        tail = [
            line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()
        ]
        return " | ".join(tail[-lines:])

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.time() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ------------------------------------------------------------------ ROS side
    def attach(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from onedp_control.ros.common import RELIABLE_QOS, from_stamp

        def on_episode(message: String) -> None:
            with self._lock:
                self.record.episodes.append(json.loads(message.data))

        def on_timing(message: DiagnosticStatus) -> None:
            values = {item.key: float(item.value) for item in message.values}
            with self._lock:
                self.record.inference_ms.append(values["inference_ms"])
                self.record.observation_age_ms.append(values["observation_age_ms"])

        def on_command(message: JointTrajectory) -> None:
            with self._lock:
                self.record.command_stamps.append(from_stamp(message.header.stamp))
                self.record.streaming.append(bool(message.points))

        def on_chunk(message: JointTrajectory) -> None:
            with self._lock:
                self.record.chunk_arrivals.append((from_stamp(message.header.stamp), time.time()))

        def on_diagnostics(message: DiagnosticArray) -> None:
            for status in message.status:
                if not status.message.startswith("holding"):
                    continue
                if status.name == "onedp watchdog":
                    reason = status.message.removeprefix("holding: ").split(" ")[0]
                    with self._lock:
                        self.record.hold_reasons[reason] += 1
                elif status.name == "onedp robot":  # reported when the reason changes
                    # Without its measurement ("jump too large (0.126 m)"): one key per kind.
                    reason = status.message.removeprefix("holding: ").split(" (")[0]
                    with self._lock:
                        self.record.robot_hold_reasons[reason] += 1

        node.create_subscription(String, EPISODE_TOPIC, on_episode, RELIABLE_QOS)
        node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, on_diagnostics, RELIABLE_QOS)
        node.create_subscription(DiagnosticStatus, POLICY_TIMING_TOPIC, on_timing, RELIABLE_QOS)
        node.create_subscription(JointTrajectory, COMMAND_TOPIC, on_command, RELIABLE_QOS)
        node.create_subscription(JointTrajectory, CHUNK_TOPIC, on_chunk, RELIABLE_QOS)

    def transition(self, node, executor, name: str, transition_id: int, timeout: float) -> None:
        """Asks node `name` for a lifecycle transition and waits until it is in the state the
        transition leads to. `wait_for_service` only says the request can reach the node; on a
        loaded machine the reply path may not be matched yet and the answer is lost (seen in
        CI: a configure that never answered in 120 s). So an unanswered request is followed by
        asking the node's state: already there is success, still in the state before is a
        request lost, sent again. A refusal is settled the same way: a request sent again may
        reach the node after the first one did the work (a configure slower than the wait for
        its answer), and is then refused from the very state it asked for."""
        from lifecycle_msgs.msg import State, Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        start_state, goal_state = {
            Transition.TRANSITION_CONFIGURE: (
                State.PRIMARY_STATE_UNCONFIGURED,
                State.PRIMARY_STATE_INACTIVE,
            ),
            Transition.TRANSITION_ACTIVATE: (
                State.PRIMARY_STATE_INACTIVE,
                State.PRIMARY_STATE_ACTIVE,
            ),
        }[transition_id]
        deadline = time.time() + timeout
        change = node.create_client(ChangeState, f"/{name}/change_state")
        status = node.create_client(GetState, f"/{name}/get_state")
        try:
            for client in (change, status):
                while not client.wait_for_service(timeout_sec=0.2):
                    if name in self.dead():
                        raise ConfigError(f"node '{name}' exited: {self.last_words(name)}")
                    if time.time() > deadline:
                        raise ConfigError(
                            f"node '{name}': no lifecycle service after {timeout:.0f} s"
                        )
            request = ChangeState.Request()
            request.transition.id = transition_id
            while time.time() < deadline:
                answer = self._call(executor, change, request, deadline)
                if answer is not None and answer.success:
                    return
                state = self._settled_state(executor, status, name, deadline)
                if state == goal_state:
                    return
                if answer is not None or state != start_state:
                    break
            raise ConfigError(
                f"node '{name}': lifecycle transition {transition_id} failed: "
                f"{self.last_words(name)}"
            )
        finally:
            node.destroy_client(change)
            node.destroy_client(status)

    def _settled_state(self, executor, status, name: str, deadline: float) -> int | None:
        """The node's primary state once it is in one (a node busy in a transition answers
        get_state when it is done, or with the transition's state), or None: no answer before
        the deadline, or the node exited."""
        from lifecycle_msgs.msg import State
        from lifecycle_msgs.srv import GetState

        primary = (
            State.PRIMARY_STATE_UNCONFIGURED,
            State.PRIMARY_STATE_INACTIVE,
            State.PRIMARY_STATE_ACTIVE,
            State.PRIMARY_STATE_FINALIZED,
        )
        while time.time() < deadline and name not in self.dead():
            answer = self._call(executor, status, GetState.Request(), deadline)
            if answer is not None and answer.current_state.id in primary:
                return answer.current_state.id
            if answer is not None:  # in a transition: ask again shortly
                time.sleep(0.05)
        return None

    @staticmethod
    def _call(executor, client, request, deadline: float):
        """The service's answer, or None when none came within LIFECYCLE_ANSWER_S."""
        future = client.call_async(request)
        wait = min(LIFECYCLE_ANSWER_S, deadline - time.time())
        executor.spin_until_future_complete(future, timeout_sec=max(0.1, wait))
        if future.done():
            return future.result()
        client.remove_pending_request(future)
        return None

    def bring_up(
        self, node, executor, timeout_s: float = 120.0, names: tuple[str, ...] | None = None
    ) -> None:
        """Configure, then activate, every lifecycle node (or those `names`), in order."""
        from lifecycle_msgs.msg import Transition

        steps = (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE)
        for spec in self.nodes:
            if names is not None and spec.name not in names:
                continue
            for transition in steps if spec.lifecycle else ():
                self.transition(node, executor, spec.name, transition, timeout_s)

    def run(self, episodes: int, timeout_s: float, log_dir: Path | None) -> dict:
        """Sim: until the sim node has reported `episodes` episodes."""
        started = time.time()
        self._session(log_dir, lambda: len(self.record.episodes) >= episodes, timeout_s)
        return self.report(time.time() - started)

    def serve(self, log_dir: Path | None) -> None:
        """Real cell: until Ctrl-C."""
        with contextlib.suppress(KeyboardInterrupt):
            self._session(log_dir, lambda: False, None)

    def _session(self, log_dir: Path | None, done, timeout_s: float | None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        rclpy.init(domain_id=self.domain_id)
        node = rclpy.create_node("onedp_run")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        self.attach(node)
        started = time.time()
        self.start(log_dir)
        try:
            self.bring_up(node, executor)
            while not done():
                executor.spin_once(timeout_sec=0.1)
                if self.dead():
                    name = self.dead()[0]
                    raise ConfigError(f"node '{name}' exited: {self.last_words(name)}")
                if timeout_s is not None and time.time() - started > timeout_s:
                    raise ConfigError(f"the run took longer than {timeout_s:.0f} s")
        finally:
            self.stop()
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown()

    def report(self, wall_s: float) -> dict:
        episodes = self.record.episodes
        successes = [e for e in episodes if e["success"]]
        times = [e["completion_time_s"] for e in successes]
        return {
            "task": self.config.sim.task,
            "engine": self.engine,
            "episodes": len(episodes),
            "success_rate": len(successes) / len(episodes) if episodes else 0.0,
            "completion_time_s": round(float(np.mean(times)), 3) if times else None,
            "latency": latency_figures(self.record, self.config.shared.control_period_s),
            "wall_time_s": round(wall_s, 1),
            "per_episode": episodes,
        }
