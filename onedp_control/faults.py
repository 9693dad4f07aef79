"""`onedp faults`: the running controller under faults, fault by fault, in sim-in-the-loop.

The graph is the real one, as separate processes over DDS: the software camera node (SDK
software devices) for the images, the policy node, the watchdog node, and the sim node as the
robot (the MuJoCo cell with its cameras off), all started with `fault_injection: true`. Each
fault is injected while the robot streams, held for a while, then cleared (with the recovery
action it needs), and measured from the topics:

- detected_ms: injection (the fault in place) to the first hold (the watchdog's hold flag, or
  the robot's first holding command, whichever comes first);
- held: the robot's first holding command came within one control period (+10 ms transport)
  of the detection;
- unsafe_commands: streaming commands from the injection on that leave the workspace or the
  orientation cone, jump more than the per-step limits from the previous command, or are not
  finite (must be 0);
- recovered: after clearing, the robot streams again (after the watchdog's healthy time, or
  the recovery command).

Faults are switched by process signals (kill, SIGSTOP) or by messages on /onedp/fault, which
only nodes started with fault_injection listen to.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_rot6d, rotvec_from_matrix
from onedp_control.runtime.config import load_runtime_config
from onedp_control.runtime.graph import (
    COMMAND_TOPIC,
    DIAGNOSTICS_TOPIC,
    FAULT_TOPIC,
    HOLD_TOPIC,
    RECOVER_SERVICE,
    LaunchArguments,
    node_spec,
)
from onedp_control.runtime.safety import SafetyFilter, cone_angle

HOLD_WINDOW_S = 1.0  # how long each fault stays on
RECOVERY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class FaultCase:
    name: str
    inject: Callable[[FaultContext], None]
    clear: Callable[[FaultContext], None]
    quick: bool = True


class GraphMonitor:
    """A node that records what the graph does: commands (stamp, streaming, action), the hold
    flag and diagnostics, with receive times."""

    def __init__(self, name: str = "onedp_monitor") -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import Bool, String
        from trajectory_msgs.msg import JointTrajectory

        from onedp_control.ros.common import LATCHED_QOS, RELIABLE_QOS, from_stamp

        self.node = rclpy.create_node(name)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.commands: list[tuple[float, bool, np.ndarray | None]] = []
        self.holds: list[tuple[float, bool]] = []
        self.diagnostics: list[tuple[float, str]] = []

        def on_command(message: JointTrajectory) -> None:
            action = np.asarray(message.points[0].positions) if message.points else None
            with self.lock:
                self.commands.append((from_stamp(message.header.stamp), action is not None, action))

        def on_hold(message: Bool) -> None:
            with self.lock:
                self.holds.append((time.time(), bool(message.data)))

        def on_diagnostics(message: DiagnosticArray) -> None:
            with self.lock:
                self.diagnostics += [(time.time(), s.message) for s in message.status]

        self.node.create_subscription(JointTrajectory, COMMAND_TOPIC, on_command, RELIABLE_QOS)
        self.node.create_subscription(Bool, HOLD_TOPIC, on_hold, LATCHED_QOS)
        self.node.create_subscription(
            DiagnosticArray, DIAGNOSTICS_TOPIC, on_diagnostics, RELIABLE_QOS
        )
        self.faults = self.node.create_publisher(String, FAULT_TOPIC, RELIABLE_QOS)
        self._string = String

    def spin_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
            if condition():
                return True
        return False

    def streaming_now(self, count: int = 5) -> bool:
        with self.lock:
            recent = self.commands[-count:]
        return len(recent) == count and all(streaming for _, streaming, _ in recent)

    def send_fault(self, target: str, fault: str | None, value: object = True) -> None:
        payload = (
            {"target": target, "clear": True}
            if fault is None
            else {
                "target": target,
                "fault": fault,
                "value": value,
            }
        )
        self.faults.publish(self._string(data=json.dumps(payload)))

    def call_recover(self, timeout_s: float = 5.0) -> bool:
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, RECOVER_SERVICE)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                return False
            future = client.call_async(Trigger.Request())
            self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
            return future.done() and future.result().success
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


class FaultContext:
    """What a fault case can do to the running graph."""

    def __init__(self, runner, monitor: GraphMonitor, log_dir: Path | None) -> None:
        self.runner = runner
        self.monitor = monitor
        self.log_dir = log_dir

    def signal(self, name: str, number: int) -> None:
        self.runner.processes[name].send_signal(number)

    def kill(self, name: str) -> None:
        process = self.runner.processes[name]
        process.kill()
        process.wait()

    def respawn(self, name: str) -> None:
        self.runner.spawn(name, self.log_dir)
        self.runner.bring_up(self.monitor.node, self.monitor.executor, names=(name,))

    def fault(self, target: str, fault: str, value: object = True) -> None:
        self.monitor.send_fault(target, fault, value)

    def clear(self, target: str) -> None:
        self.monitor.send_fault(target, None)

    def recover_robot(self) -> None:
        self.clear("sim")
        self.monitor.spin_until(lambda: False, 0.2)
        self.monitor.call_recover()


def _nothing(context: FaultContext) -> None:
    """Nothing to undo: the fault clears by itself, or the node was respawned already."""


CASES = (
    FaultCase(
        "camera stream stalls",
        lambda c: c.signal("camera", signal.SIGSTOP),
        lambda c: c.signal("camera", signal.SIGCONT),
    ),
    FaultCase(
        "a camera disappears",
        lambda c: c.fault("camera", "drop", "wrist"),
        lambda c: c.clear("camera"),
    ),
    FaultCase(
        "one camera lags the other",
        lambda c: c.fault("camera", "wrist_lag_s", 0.2),
        lambda c: c.clear("camera"),
    ),
    FaultCase(
        "inference overruns its budget",
        lambda c: c.fault("policy", "delay_s", 0.3),
        lambda c: c.clear("policy"),
    ),
    FaultCase(
        "engine returns NaN", lambda c: c.fault("policy", "nan_output"), lambda c: c.clear("policy")
    ),
    FaultCase(
        "target outside the workspace",
        lambda c: c.fault("policy", "offset", [0.0, 0.0, 0.5]),
        lambda c: c.clear("policy"),
    ),
    FaultCase(
        "target jumps",
        lambda c: c.fault("policy", "offset", [0.0, 0.2, 0.0]),
        lambda c: c.clear("policy"),
        quick=False,
    ),
    FaultCase("policy process dies", lambda c: c.kill("policy"), lambda c: c.respawn("policy")),
    FaultCase(
        "robot connection lost",
        lambda c: c.fault("sim", "disconnect"),
        lambda c: c.recover_robot(),
        quick=False,
    ),
    FaultCase(
        "robot reports an error",
        lambda c: c.fault("sim", "robot_error", "cartesian_reflex"),
        lambda c: c.recover_robot(),
    ),
    FaultCase(
        "clock jumps", lambda c: c.fault("camera", "clock_jump_s", 2.0), lambda c: c.clear("camera")
    ),
    FaultCase(
        "watchdog process dies",
        lambda c: c.kill("watchdog"),
        lambda c: c.respawn("watchdog"),
        quick=False,
    ),
)


def unsafe_commands(commands, safety: SafetyFilter, previous: np.ndarray | None) -> int:
    """Streaming commands outside the limits the safety filter enforces (independent check)."""
    low, high = safety.low - 1e-9, safety.high + 1e-9
    count = 0
    for _, streaming, action in commands:
        if not streaming:
            previous = None  # the next target is limited against the measured pose
            continue
        if action is None or not np.all(np.isfinite(action)):
            count += 1
            continue
        rotation = matrix_from_rot6d(action[3:9])
        bad = np.any(action[:3] < low) or np.any(action[:3] > high)
        bad |= cone_angle(rotation, safety.axis) > safety.cone + 1e-6
        if previous is not None:
            bad |= np.linalg.norm(action[:3] - previous[:3]) > safety.max_step_m + 1e-6
            turn = rotvec_from_matrix(matrix_from_rot6d(previous[3:9]).T @ rotation)
            bad |= np.linalg.norm(turn) > safety.max_step_rad + 1e-6
        count += int(bad)
        previous = action
    return count


def measure(case: FaultCase, context: FaultContext, safety: SafetyFilter, period: float) -> dict:
    monitor = context.monitor
    result = {"fault": case.name, "detected_ms": None, "held": False, "unsafe_commands": 0}
    if not monitor.spin_until(monitor.streaming_now, 30.0):
        return {**result, "recovered": False, "cause": "the robot was not streaming before it"}
    with monitor.lock:
        start_index = len(monitor.commands)
        previous = monitor.commands[-1][2]
    case.inject(context)
    # Timed once the fault is in place (the signal sent, the message published): on a loaded
    # machine this process can be descheduled between reading the clock and injecting, and that
    # wait is not detection time. (A `bash .ci/run` here timed a stalled camera as "detected"
    # after 1004 ms with the newest frame 155 ms old, so the camera ran ~850 ms past that read.)
    injected = time.time()
    monitor.spin_until(lambda: False, HOLD_WINDOW_S)
    case.clear(context)
    recovered = monitor.spin_until(lambda: monitor.streaming_now(10), RECOVERY_TIMEOUT_S)
    with monitor.lock:
        commands = monitor.commands[start_index:]
        flag = [t for t, hold in monitor.holds if hold and t >= injected]
        causes = [m for t, m in monitor.diagnostics if t >= injected and m.startswith("holding")]
    holding = [stamp for stamp, streaming, _ in commands if not streaming and stamp >= injected]
    detected = min([*flag[:1], *holding[:1]], default=None)
    return {
        "fault": case.name,
        "detected_ms": None if detected is None else round((detected - injected) * 1e3, 1),
        "held": bool(holding) and detected is not None and holding[0] - detected <= period + 0.01,
        "unsafe_commands": unsafe_commands(commands, safety, previous),
        "recovered": recovered,
        "cause": causes[0].removeprefix("holding: ") if causes else "",
    }


def run_faults(
    engine: Path, config: Path, quick: bool, log_dir: Path | None, names: tuple[str, ...] = ()
) -> dict:
    import rclpy

    from onedp_control.ros.runner import GraphRunner

    runtime = load_runtime_config(config)
    cases = [c for c in CASES if (c.quick or not quick) and (not names or c.name in names)]
    if names and len(cases) != len(names):
        known = ", ".join(c.name for c in CASES)
        raise ConfigError(f"--fault: unknown fault name(s) (known: {known})")
    arguments = LaunchArguments(config=str(config), sim=True, engine=str(engine))
    overrides = {
        name: {"fault_injection": True} for name in ("policy", "watchdog", "sim", "camera")
    }
    overrides["sim"].update({"publish_cameras": False, "time_limit_s": 3600.0})
    overrides["camera"].update({"source": "software"})
    overrides["watchdog"].update({"recover_after_s": 0.5})
    domain_id = 1 + os.getpid() % 100  # its own ROS domain: no other graph hears the faults
    runner = GraphRunner(config, arguments, overrides, domain_id)
    runner.nodes.append(node_spec("camera", True, {}))
    safety = SafetyFilter(runtime.shared.safety_limits(), runtime.shared.control_period_s)
    rclpy.init(domain_id=domain_id)
    monitor = GraphMonitor()
    context = FaultContext(runner, monitor, log_dir)
    results = []
    runner.start(log_dir)
    try:
        runner.bring_up(monitor.node, monitor.executor)
        for case in cases:
            results.append(measure(case, context, safety, runtime.shared.control_period_s))
    finally:
        runner.stop()
        monitor.close()
        rclpy.shutdown()
    return {"engine": str(engine), "quick": quick, "faults": results}


def faults_table(report: dict) -> str:
    lines = [
        "| fault | detected after (ms) | held | unsafe commands | recovered | cause |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for r in report["faults"]:
        held = "yes" if r["held"] else "no"
        recovered = "yes" if r["recovered"] else "no"
        lines.append(
            f"| {r['fault']} | {r['detected_ms']} | {held} | {r['unsafe_commands']} "
            f"| {recovered} | {r['cause']} |"
        )
    return "\n".join(lines) + "\n"
