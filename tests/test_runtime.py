"""The controller's real-time blocks, each on its own: ring buffer, deadline loop, chunk timing
and interpolation, the command loop's hold rules, the watchdog rules, observation assembly,
the runtime config and the node graph."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_rot6d, rot6d_from_matrix
from onedp_control.robots.sim_robot import SimRobot
from onedp_control.runtime.chunks import ActionChunk, ChunkScheduler, interpolate_action
from onedp_control.runtime.command_loop import CommandLoop
from onedp_control.runtime.config import load_runtime_config, node_parameters
from onedp_control.runtime.graph import LaunchArguments, pnp_milk_graph
from onedp_control.runtime.observations import ObservationAssembler, RobotSample
from onedp_control.runtime.rate_loop import DeadlineLoop
from onedp_control.runtime.ring_buffer import StampedRing
from onedp_control.runtime.safety import SafetyFilter, SafetyLimits
from onedp_control.runtime.teleop import TeleopCommands, TeleopParams
from onedp_control.runtime.watchdog import METRICS, Fault, LatencyLimits, Watchdog
from onedp_control.sim.world import PnpMilkWorld

CONFIG = Path(__file__).resolve().parents[1] / "config" / "pnp_milk.yaml"
HEALTHY = {
    "observation_age_ms": 30.0,
    "camera_skew_ms": 5.0,
    "inference_ms": 20.0,
    "chunk_age_ms": 100.0,
    "command_period_ms": 50.0,
    "robot_state_age_ms": 20.0,
}


def action(x: float, gripper: float = 0.08, yaw: float = 0.0, z: float = 0.3) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, -1.0])
    return np.concatenate([[x, 0.0, z], rot6d_from_matrix(rotation), [gripper]])


# ---------------------------------------------------------------------------- ring buffer
def test_ring_keeps_the_newest_and_refuses_old_stamps():
    ring: StampedRing[int] = StampedRing(3)
    assert ring.latest() is None and ring.nearest(1.0, 1.0) is None
    for stamp in (1.0, 2.0, 3.0, 4.0):
        assert ring.push(stamp, int(stamp))
    assert len(ring) == 3 and ring.latest() == (4.0, 4)
    assert not ring.push(4.0, 99) and not ring.push(3.5, 99)  # a replay cannot reorder
    assert ring.nearest(2.1, 0.2) == (2.0, 2)
    assert ring.nearest(1.0, 0.5) is None  # evicted
    assert ring.nearest(10.0, 1.0) is None


# ---------------------------------------------------------------------------- deadline loop
def test_deadline_loop_keeps_absolute_deadlines_and_counts_misses():
    fake_now = [0.0]
    ticks, deadlines = [], []

    def clock() -> float:
        return fake_now[0]

    def step(now: float) -> None:
        ticks.append(now)
        deadlines.append(loop.tick_deadline)
        # Each step takes 10 ms, and the fourth one 130 ms (more than two periods).
        fake_now[0] += 0.13 if len(ticks) == 4 else 0.01
        if len(ticks) == 8:
            loop._stop.set()

    loop = DeadlineLoop(0.05, step, clock=clock)
    # Sleeping advances the fake clock exactly to the deadline.
    loop._stop.wait = lambda seconds: fake_now.__setitem__(0, fake_now[0] + seconds)
    loop._run()
    assert ticks[:4] == pytest.approx([0.0, 0.05, 0.10, 0.15])
    # 0.15 + 0.13 = 0.28: the deadlines at 0.20 and 0.25 are gone; the next is 0.30.
    assert loop.missed_deadlines == 1
    assert ticks[4:] == pytest.approx([0.28, 0.30, 0.35, 0.40])
    # The late tick's nominal time is the last deadline it passed.
    assert deadlines == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.25, 0.30, 0.35, 0.40])


def test_deadline_loop_in_a_thread_reports_errors_and_stops():
    seen = []
    errors = []

    def step(now: float) -> None:
        seen.append(now)
        if len(seen) == 3:
            raise RuntimeError("boom")

    loop = DeadlineLoop(0.01, step, clock=time.monotonic, on_error=errors.append)
    default_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # CPython's default
    try:
        loop.start()
        # The waking loop gets the GIL back within a millisecond, not CPython's 5.
        assert sys.getswitchinterval() == pytest.approx(0.001)
        loop._thread.join(2.0)
    finally:
        sys.setswitchinterval(default_interval)
    assert not loop.running and len(seen) == 3
    assert isinstance(loop.error, RuntimeError) and errors == [loop.error]
    stats = loop.stats()
    # The third step raised: two completed steps were timed.
    assert stats["ticks"] == 2 and stats["period_median_ms"] == pytest.approx(10, abs=8)


# ---------------------------------------------------------------------------- chunks
def test_chunk_steps_in_the_past_are_skipped_and_between_steps_interpolated():
    actions = np.stack([action(0.3 + 0.01 * k, gripper=0.08 - 0.005 * k) for k in range(15)])
    scheduler = ChunkScheduler()
    assert scheduler.target_at(10.0) is None
    assert scheduler.offer(ActionChunk(10.0, 0.05, actions))
    # 120 ms after the observation: steps 0 and 1 are past, 40% of the way from 2 to 3.
    target = scheduler.target_at(10.12)
    assert target[0] == pytest.approx(0.3 + 0.024)
    assert target[9] == pytest.approx(0.08 - 0.012)
    np.testing.assert_allclose(scheduler.target_at(10.0), actions[0])
    np.testing.assert_allclose(scheduler.target_at(10.0 + 14 * 0.05), actions[14])
    assert scheduler.target_at(10.0 + 14 * 0.05 + 1e-3) is None  # ran out: hold


def test_older_chunks_and_chunks_from_before_a_clear_are_refused():
    actions = np.stack([action(0.3)] * 4)
    scheduler = ChunkScheduler()
    assert scheduler.offer(ActionChunk(5.0, 0.05, actions))
    assert not scheduler.offer(ActionChunk(4.9, 0.05, actions))
    assert not scheduler.offer(ActionChunk(5.0, 0.05, actions))
    scheduler.clear(not_before=6.0)
    assert scheduler.chunk is None
    assert not scheduler.offer(ActionChunk(5.5, 0.05, actions))
    assert scheduler.offer(ActionChunk(6.0, 0.05, actions))
    with pytest.raises(ValueError, match="chunk actions"):
        ActionChunk(1.0, 0.05, np.zeros((3, 9)))


def test_rotation_interpolation_stays_a_rotation_between_the_ends():
    first, second = action(0.3, yaw=0.0), action(0.3, yaw=0.2)
    middle = interpolate_action(first, second, 0.5)
    rotation = matrix_from_rot6d(middle[3:9])
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    expected = matrix_from_rot6d(action(0.3, yaw=0.1)[3:9])
    assert np.degrees(np.arccos((np.trace(expected.T @ rotation) - 1) / 2)) < 0.1


# ---------------------------------------------------------------------------- command loop
@pytest.fixture(scope="module")
def sim_robot():
    with PnpMilkWorld("pnp_milk", render=False) as world:
        robot = SimRobot(world)
        robot.reset(0, wall_time=0.0)
        yield robot


def test_command_loop_holds_until_the_watchdog_allows_and_a_chunk_exists(sim_robot):
    loop = CommandLoop(
        sim_robot, ChunkScheduler(), SafetyFilter(SafetyLimits(), 0.05), watchdog_timeout_s=0.2
    )
    state = sim_robot.get_state()
    assert loop.tick(0.0, state).reason == "watchdog silent"
    loop.on_watchdog(True, 0.0)
    assert loop.tick(0.01, state).reason == "watchdog hold"
    loop.on_watchdog(False, 0.02)
    assert loop.tick(0.03, None).reason == "no robot state"
    assert loop.tick(0.03, state).reason == "no chunk to execute"
    far = np.stack([action(0.37, z=0.45)] * 15)  # 7 cm away: clamped, not rejected
    loop.scheduler.offer(ActionChunk(0.03, 0.05, far))
    command = loop.tick(0.04, state)
    # Streaming, but the first step from the measured pose is limited to 0.6 m/s x 50 ms.
    assert command.streaming and "translation jump" in command.clamped
    assert np.linalg.norm(command.action[:3] - state.ee_pos) == pytest.approx(0.03)
    np.testing.assert_allclose(sim_robot._target, command.action)
    assert loop.tick(0.3, state).reason == "watchdog silent"  # 280 ms without a message
    # Holding keeps the arm where it is now, and forgets the chunk.
    np.testing.assert_allclose(sim_robot._target[:3], state.ee_pos, atol=1e-6)
    assert loop.scheduler.chunk is None
    loop.on_watchdog(False, 0.31)
    assert loop.tick(0.32, state).reason == "no chunk to execute"
    assert not loop.scheduler.offer(ActionChunk(0.25, 0.05, far))  # from before the hold
    loop.on_robot_error("reflex")
    loop.scheduler.offer(ActionChunk(0.33, 0.05, far))
    assert loop.tick(0.34, state).reason == "robot error: reflex"
    loop.on_robot_error(None)
    assert loop.tick(0.35, state).streaming
    nan_chunk = far.copy()
    nan_chunk[:, 0] = np.nan
    loop.scheduler.offer(ActionChunk(0.36, 0.05, nan_chunk))
    assert loop.tick(0.37, state).reason == "unsafe target: non-finite target"


def test_sim_robot_steps_skipped_periods_and_stamps_its_state_on_the_wall_clock():
    """A loop that skipped ticks advances the world by as many periods (the world does not wait
    for a late controller); the state's stamp is world time on the wall clock."""
    with PnpMilkWorld("pnp_milk", render=False) as world:
        robot = SimRobot(world)
        period = world.task.control_period_s
        robot.reset(0, wall_time=100.0)
        assert robot.get_state().stamp == pytest.approx(100.0)
        robot.advance()
        robot.advance(3)
        assert world.time == pytest.approx(4 * period)
        assert robot.get_state().stamp == pytest.approx(100.0 + 4 * period)
        robot.advance(0)
        assert world.time == pytest.approx(4 * period)
        robot.anchor(200.0)  # after a pause: the world as it is now is the world at 200 s
        assert robot.get_state().stamp == pytest.approx(200.0)


# ---------------------------------------------------------------------------- watchdog
def test_watchdog_starts_holding_and_resumes_after_being_healthy_long_enough():
    watchdog = Watchdog(LatencyLimits(recover_after_s=1.0))
    status = watchdog.evaluate({**HEALTHY, "chunk_age_ms": None}, now=0.0)
    assert status.holding and status.reason == "chunk_age_ms: no measurement yet"
    assert watchdog.evaluate(HEALTHY, now=0.5).reason == "recovering"
    assert watchdog.evaluate(HEALTHY, now=1.4).holding
    assert not watchdog.evaluate(HEALTHY, now=1.5).holding
    breach = watchdog.evaluate({**HEALTHY, "inference_ms": 250.0}, now=1.6)
    assert breach.holding and breach.reason == "inference_ms 250.0 > 100.0"
    assert watchdog.evaluate(HEALTHY, now=1.7).holding  # healthy again, but not for long enough
    assert not watchdog.evaluate(HEALTHY, now=2.7).holding


def test_watchdog_in_command_mode_resumes_only_when_asked_while_healthy():
    watchdog = Watchdog(LatencyLimits(recovery="command"))
    assert watchdog.evaluate(HEALTHY, now=0.0).reason == "waiting for resume"
    assert watchdog.evaluate(HEALTHY, now=100.0).holding
    watchdog.request_resume()
    assert watchdog.evaluate({**HEALTHY, "observation_age_ms": 999.0}, now=100.1).holding
    assert watchdog.evaluate(HEALTHY, now=100.2).holding  # the breach cancelled the request
    watchdog.request_resume()
    assert not watchdog.evaluate(HEALTHY, now=100.3).holding


def test_stamps_from_the_future_and_reported_faults_hold():
    watchdog = Watchdog(LatencyLimits(recover_after_s=0.0))
    assert not watchdog.evaluate(HEALTHY, now=0.0).holding
    jumped = watchdog.evaluate({**HEALTHY, "observation_age_ms": -2000.0}, now=0.1)
    assert jumped.holding and "from the future" in jumped.reason
    assert not watchdog.evaluate(HEALTHY, now=0.2).holding
    fault = watchdog.evaluate(HEALTHY, now=0.3, faults=(Fault("policy", "output NaN"),))
    assert fault.holding and fault.reason == "policy: output NaN"


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_over_its_limit_holds(metric):
    watchdog = Watchdog(LatencyLimits(recover_after_s=0.0))
    assert not watchdog.evaluate(HEALTHY, now=0.0).holding
    status = watchdog.evaluate({**HEALTHY, metric: 1e6}, now=0.1)
    assert status.holding and status.breaches[0].metric == metric


# ---------------------------------------------------------------------------- observations
def test_observation_history_pairs_cameras_within_the_sync_window():
    assembler = ObservationAssembler(obs_horizon=2, period_s=0.05, sync_window_s=0.02)
    image = np.zeros((4, 4, 3), np.uint8)
    sample = RobotSample(np.zeros(3), np.zeros(6), 0.08)
    for k in range(6):  # cameras at 30 fps, the wrist 5 ms behind; state at 20 Hz
        assembler.front.push(1.0 + k / 30, image)
        assembler.wrist.push(1.005 + k / 30, image)
    for k in range(4):
        assembler.state.push(1.0 + 0.05 * k, sample)
    history = assembler.history()
    assert [round(o.front_stamp, 4) for o in history] == [
        round(1 + 3 / 30, 4),
        round(1 + 5 / 30, 4),
    ]
    assert all(abs(o.wrist_stamp - o.front_stamp) <= 0.02 for o in history)
    lagging = ObservationAssembler(obs_horizon=2, period_s=0.05, sync_window_s=0.02)
    for k in range(6):  # the wrist camera 100 ms behind: no observation
        lagging.front.push(1.0 + k / 30, image)
        lagging.wrist.push(0.9 + k / 30 - 0.1, image)
        lagging.state.push(1.0 + k / 30, sample)
    assert lagging.history() is None


# ---------------------------------------------------------------------------- config and graph
def test_runtime_config_loads_and_bad_files_name_the_field(tmp_path):
    config = load_runtime_config(CONFIG)
    assert config.shared.control_period_s == 0.05 and config.watchdog.recovery == "auto"
    assert node_parameters(config, "policy")["control_period_s"] == 0.05
    cases = {
        "policy:\n  ros__parameters:\n    enigne: x.onnx\n": "unknown key 'enigne'",
        "watchdog:\n  ros__parameters:\n    inference_ms: x\n": "inference_ms: expected a number",
        "watchdog:\n  ros__parameters:\n    inference_ms: -5\n": "inference_ms must be in",
        "camerra:\n  ros__parameters: {}\n": "unknown node 'camerra'",
        "robot:\n  robot_host: x\n": "expected exactly one key, 'ros__parameters'",
        "robot: [": "not valid YAML",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as raised:
            load_runtime_config(path)
        assert "bad.yaml" in str(raised.value)


def test_graph_is_the_same_definition_for_sim_and_real():
    sim = {
        n.name: n
        for n in pnp_milk_graph(LaunchArguments(config="c.yaml", sim=True, engine="m.onnx"))
    }
    real = {
        n.name: n
        for n in pnp_milk_graph(
            LaunchArguments(
                config="c.yaml", front_serial="123", wrist_serial="456", robot_host="10.0.0.2"
            )
        )
    }
    assert set(sim) == {"policy", "watchdog", "sim"}
    assert set(real) == {"policy", "watchdog", "camera", "robot"}
    assert sim["policy"].parameters == {"engine": "m.onnx"} and real["policy"].parameters == {}
    assert real["camera"].parameters == {"front_serial": "123", "wrist_serial": "456"}
    assert real["robot"].lifecycle and sim["sim"].lifecycle and not sim["watchdog"].lifecycle
    for node in real.values():
        assert node.executable == f"{node.name}_node"
        assert node.module == f"onedp_control.ros.{node.name}_node"


def test_recording_swaps_the_policy_for_teleop_and_recorder_and_keeps_the_robot_side():
    real = LaunchArguments(config="c.yaml", front_serial="123", robot_host="10.0.0.2")
    recording = dataclasses.replace(real, record=True, dataset="data/demos.zarr")
    nodes = {n.name: n for n in pnp_milk_graph(recording)}
    assert set(nodes) == {"teleop", "watchdog", "recorder", "camera", "robot"}
    assert nodes["recorder"].parameters == {"dataset": "data/demos.zarr"}
    robot_side = {n.name: n for n in pnp_milk_graph(real) if n.name in ("camera", "robot")}
    assert {name: nodes[name] for name in robot_side} == robot_side
    sim = {n.name for n in pnp_milk_graph(dataclasses.replace(recording, sim=True))}
    assert sim == {"teleop", "watchdog", "recorder", "sim"}


def test_teleop_commands_become_held_chunks_only_while_fresh():
    commands = TeleopCommands(TeleopParams(command_timeout_s=0.5), period_s=0.05)
    start = np.concatenate([[0.4, 0.1, 0.3], rot6d_from_matrix(np.diag([1.0, -1.0, -1.0]))])
    assert commands.chunk(10.0) is None, "nothing before a command"
    commands.set_pose(start[:3], start[3:], received=10.0)
    assert commands.chunk(10.1) is None, "a pose without a gripper width is not a command"
    commands.set_gripper_width(0.05)
    chunk = commands.chunk(10.2)
    assert chunk.stamp == 10.0 and chunk.period == 0.05 and chunk.actions.shape == (16, 10)
    assert np.allclose(chunk.actions, np.concatenate([start, [0.05]]))
    assert commands.chunk(10.51) is None, "a stale command is not executed"
    with pytest.raises(ValueError, match="finite"):
        commands.set_pose([np.nan, 0.0, 0.3], start[3:], received=11.0)
    with pytest.raises(ValueError, match="finite"):
        commands.set_gripper_width(float("inf"))
    assert commands.chunk(10.3) is not None, "a refused command leaves the last good one"
    with pytest.raises(ConfigError, match="command_timeout_s"):
        TeleopParams(command_timeout_s=0.0).validate("node teleop")


def test_the_launch_file_is_valid_python_built_on_the_graph():
    source = (CONFIG.parents[1] / "launch" / "pnp_milk.launch.py").read_text()
    compile(source, "pnp_milk.launch.py", "exec")
    assert "pnp_milk_graph(" in source
    pytest.importorskip("launch_ros", reason="launch_ros comes from apt (ROS 2 Kilted)")


def test_thread_safety_of_the_scheduler_under_concurrent_offers():
    scheduler = ChunkScheduler()
    actions = np.stack([action(0.3)] * 15)

    def offer(start: int) -> None:
        for k in range(start, 400, 4):
            scheduler.offer(ActionChunk(float(k), 0.05, actions))

    threads = [threading.Thread(target=offer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scheduler.chunk.stamp == 399.0
