"""FrankyRobot through the real franky client against franky-sim (a MuJoCo server speaking the
libfranka protocol) on loopback; the connection errors and the gripper's state machine need no
server.

franky-sim lags its commands by about 100 ms and settles slowly, so the tolerances here check
that the arm goes where it is sent and stops when held, not how well it tracks.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from onedp_control.robots import franky_robot
from onedp_control.robots.base import RobotError
from onedp_control.robots.franky_robot import FrankyRobot
from tests.conftest import start_franky_sim, stop_process

CONTROL_PERIOD_S = 0.05  # 20 Hz, the rate the policy streams at
OPEN_WIDTH_M = 0.08  # the Franka Hand's full opening


@pytest.fixture
def robot(franky_sim_host: str) -> Iterator[FrankyRobot]:
    # franky-sim runs on a kernel without realtime scheduling.
    robot = FrankyRobot(franky_sim_host, enforce_realtime=False)
    robot.connect()
    yield robot
    robot.disconnect()


def _stream(
    robot: FrankyRobot, start: np.ndarray, goal: np.ndarray, rotation: np.ndarray, steps: int
) -> None:
    """Sends `steps` targets along the line from start to goal at the control rate, hand open."""
    for fraction in np.linspace(0.0, 1.0, steps + 1)[1:]:
        robot.send_target(start + fraction * (goal - start), rotation, OPEN_WIDTH_M)
        time.sleep(CONTROL_PERIOD_S)


def _rotation_angle(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    cosine = (np.trace(rotation_a.T @ rotation_b) - 1.0) / 2.0
    return float(np.arccos(np.clip(cosine, -1.0, 1.0)))


@pytest.mark.slow
def test_connect_reads_the_measured_state(robot: FrankyRobot) -> None:
    state = robot.get_state()
    assert abs(state.stamp - time.time()) < 1.0
    assert state.ee_pos.shape == (3,) and np.all(np.isfinite(state.ee_pos))
    assert 0.2 < np.linalg.norm(state.ee_pos) < 1.0  # in the arm's reach, in metres
    np.testing.assert_allclose(state.ee_rot @ state.ee_rot.T, np.eye(3), atol=1e-6)
    assert state.joint_positions.shape == (7,) and np.all(np.isfinite(state.joint_positions))
    assert 0.0 <= state.gripper_width <= OPEN_WIDTH_M + 1e-3
    assert state.error is None


@pytest.mark.slow
def test_streamed_targets_move_the_measured_pose(robot: FrankyRobot) -> None:
    start = robot.get_state()
    goal = start.ee_pos + np.array([0.0, 0.0, -0.05])
    _stream(robot, start.ee_pos, goal, start.ee_rot, steps=20)
    # The stream has ended by now; the arm catches up with the last target, which keeps running.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        reached = robot.get_state()
        if np.linalg.norm(reached.ee_pos - goal) < 0.005:
            break
        time.sleep(CONTROL_PERIOD_S)
    assert np.linalg.norm(reached.ee_pos - goal) < 0.01, (start.ee_pos, goal, reached.ee_pos)
    assert start.ee_pos[2] - reached.ee_pos[2] > 0.04  # it moved, measured, not only commanded
    assert _rotation_angle(reached.ee_rot, start.ee_rot) < 0.05


@pytest.mark.slow
def test_hold_keeps_the_robot_still_and_streaming_resumes(robot: FrankyRobot) -> None:
    start = robot.get_state()
    goal = start.ee_pos + np.array([0.0, 0.05, 0.0])
    # Half of a 5 cm stream at 5 cm/s: the arm, ~100 ms behind, is moving when hold() comes, and
    # would go on for the last target if hold() did not stop it.
    _stream(robot, start.ee_pos, (start.ee_pos + goal) / 2, start.ee_rot, steps=10)
    robot.hold()
    robot.hold()  # held already: nothing to stop
    before = robot.get_state()
    time.sleep(0.3)
    after = robot.get_state()
    assert np.linalg.norm(after.ee_pos - before.ee_pos) < 0.002

    robot.send_target(goal, start.ee_rot, OPEN_WIDTH_M)
    time.sleep(1.0)
    assert np.linalg.norm(robot.get_state().ee_pos - after.ee_pos) > 0.005


def _hold_pose_and_stream_width(
    robot: FrankyRobot, width: float, reached: Callable[[float], bool], timeout_s: float = 4.0
) -> float:
    """Streams the current pose with a gripper width until the measured width is `reached`;
    returns the last measured width."""
    held = robot.get_state()
    deadline = time.monotonic() + timeout_s
    measured_width = held.gripper_width
    while not reached(measured_width) and time.monotonic() < deadline:
        robot.send_target(held.ee_pos, held.ee_rot, width)
        time.sleep(CONTROL_PERIOD_S)
        measured_width = robot.get_state().gripper_width
    return measured_width


@pytest.mark.slow
def test_gripper_closes_then_opens(robot: FrankyRobot) -> None:
    assert _hold_pose_and_stream_width(robot, 0.0, lambda width: width < 0.005) < 0.005
    assert _hold_pose_and_stream_width(robot, 0.07, lambda width: width > 0.065) > 0.065


@pytest.mark.slow
def test_lost_connection_raises_and_hold_stays_safe(tmp_path: Path) -> None:
    server, host = start_franky_sim(tmp_path / "server.log")
    robot = FrankyRobot(host, enforce_realtime=False)
    try:
        robot.connect()
        start = robot.get_state()
        # Let the first gripper command (open) finish: libfranka gives a command whose
        # connection is gone up only after 60 s, and disconnect() would wait that long for it.
        robot.send_target(start.ee_pos, start.ee_rot, OPEN_WIDTH_M)
        time.sleep(1.0)
        _stream(robot, start.ee_pos, start.ee_pos + np.array([0.03, 0.0, 0.0]), start.ee_rot, 5)
        stop_process(server)
        # libfranka notices after its 1 s UDP timeout and aborts the running motion.
        deadline = time.monotonic() + 5.0
        with pytest.raises(RobotError, match=re.escape(host)):
            while time.monotonic() < deadline:
                robot.send_target(start.ee_pos, start.ee_rot, OPEN_WIDTH_M)
                time.sleep(CONTROL_PERIOD_S)
        robot.hold()
        robot.hold()
    finally:
        robot.disconnect()
        stop_process(server)


def test_refused_connection_raises_naming_the_host() -> None:
    host = "127.3.2.1"
    # Bound but not listening: the address is ours, and a connection to it is refused.
    with socket.socket() as reserved:
        reserved.bind((host, franky_robot.FCI_COMMAND_PORT))
        started = time.monotonic()
        with pytest.raises(RobotError, match=f"robot {re.escape(host)}: cannot connect"):
            FrankyRobot(host).connect()
    assert time.monotonic() - started < 3.0


def test_silent_host_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """libfranka alone waits 60 s for a host that drops the connection attempt."""
    monkeypatch.setattr(franky_robot, "CONNECT_TIMEOUT_S", 0.5)
    host = "127.3.2.2"
    with socket.socket() as listener, socket.socket() as queued:
        # A listener whose accept queue (backlog 0: one connection) is full drops further SYNs,
        # as a host behind a firewall does.
        listener.bind((host, franky_robot.FCI_COMMAND_PORT))
        listener.listen(0)
        queued.connect((host, franky_robot.FCI_COMMAND_PORT))
        started = time.monotonic()
        with pytest.raises(RobotError, match=f"robot {re.escape(host)}: cannot connect"):
            FrankyRobot(host).connect()
    assert time.monotonic() - started < 2.0


class _FakeCommand:
    """A franky.BoolFuture that finishes when the test says so."""

    def __init__(self) -> None:
        self.finished = False

    def wait(self, timeout: float) -> bool:
        return self.finished

    def get(self) -> bool:
        return True


class _FakeHand:
    """Records the commands a franky.Gripper receives."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, float]] = []
        self.running: list[_FakeCommand] = []

    def grasp_async(self, width: float, **_: float) -> _FakeCommand:
        return self._start("grasp", width)

    def move_async(self, width: float, **_: float) -> _FakeCommand:
        return self._start("move", width)

    def _start(self, name: str, width: float) -> _FakeCommand:
        self.commands.append((name, width))
        self.running.append(_FakeCommand())
        return self.running[-1]


class _FakeArm:
    def move(self, motion: object, asynchronous: bool) -> None:
        pass


@pytest.fixture
def hand() -> FrankyRobot:
    """A FrankyRobot on a fake arm and hand (both private, set as connect() would)."""
    robot = FrankyRobot("fake", grasp_threshold=0.04)
    robot._robot, robot._gripper = _FakeArm(), _FakeHand()
    robot._gripper_max_width = OPEN_WIDTH_M
    return robot


def _send_widths(robot: FrankyRobot, widths: list[float], finish_commands: bool) -> None:
    for width in widths:
        robot.send_target(np.zeros(3), np.eye(3), width)
        if finish_commands:
            for command in robot._gripper.running:
                command.finished = True


def test_gripper_is_sent_only_state_changes_with_hysteresis(hand: FrankyRobot) -> None:
    widths = [0.08, 0.08, 0.0, 0.0, 0.042, 0.0, 0.05, 0.05, 0.2]
    _send_widths(hand, widths, finish_commands=True)
    # 0.042 is above the threshold but inside the hysteresis band: the hand stays closed.
    # 0.2 is a state the hand is in already (open), so it is not sent, not even clipped.
    assert hand._gripper.commands == [("move", 0.08), ("grasp", 0.0), ("move", 0.05)]


def test_gripper_change_waits_for_the_running_command(hand: FrankyRobot) -> None:
    _send_widths(hand, [0.0, 0.08, 0.08], finish_commands=False)
    assert hand._gripper.commands == [("grasp", 0.0)]  # the grasp still runs: open deferred
    hand._gripper.running[0].finished = True
    _send_widths(hand, [0.2], finish_commands=False)
    assert hand._gripper.commands == [("grasp", 0.0), ("move", OPEN_WIDTH_M)]  # clipped
