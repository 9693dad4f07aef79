"""The MuJoCo pnp-milk world behind the Robot interface, for sim-in-the-loop runs.

`send_target` stores the target (it returns at once, like franky's asynchronous motions);
`advance` steps the world by control periods toward it, or holding the last target: the sim
node calls it once per tick, and once more for each tick its loop skipped, as a real arm keeps
moving while its controller is late. The state is the world's measured one, stamped on the
wall clock through `time_offset`.
"""

from __future__ import annotations

import numpy as np

from onedp_control.robots.base import Robot, RobotError, RobotState
from onedp_control.sim.world import PnpMilkWorld, make_action


class SimRobot(Robot):
    def __init__(self, world: PnpMilkWorld) -> None:
        self.world = world
        self._target: np.ndarray | None = None
        self.time_offset = 0.0  # wall-clock time of world time 0, set at each reset
        # Fault emulation (`onedp faults`): a lost connection, or a robot error that stays until
        # recover(), as a real arm's reflex does.
        self.disconnected = False
        self._error: str | None = None

    def connect(self) -> None:
        """The world is in-process: nothing to open."""

    def disconnect(self) -> None:
        self._target = None

    def raise_error(self, error: str) -> None:
        self._error = error

    def set_connected(self, connected: bool) -> None:
        """A real arm that loses its controller stops by itself (communication reflex)."""
        if not connected and not self.disconnected:
            self.hold()
        self.disconnected = not connected

    def _check_connected(self) -> None:
        if self.disconnected:
            raise RobotError("simulated robot: connection lost")

    def get_state(self) -> RobotState:
        self._check_connected()
        position, rotation = self.world.tcp_pose()
        return RobotState(
            stamp=self.time_offset + self.world.time,
            ee_pos=position,
            ee_rot=rotation,
            gripper_width=self.world.gripper_width(),
            joint_positions=self.world.joint_positions(),
            error=self._error,
        )

    def send_target(self, position: np.ndarray, rotation: np.ndarray, gripper_width: float):
        self._check_connected()
        if self._error is not None:
            raise RobotError(f"simulated robot: {self._error}")
        self._target = make_action(position, rotation, gripper_width)

    def hold(self) -> None:
        """Stay where the arm is now (not at the last target, which may be a step ahead),
        keeping the gripper as commanded: opening it would drop what it holds."""
        position, rotation = self.world.tcp_pose()
        self._target = make_action(position, rotation, self.world.last_action[9])

    def recover(self) -> None:
        self._check_connected()
        self._error = None

    def advance(self, periods: int = 1) -> None:
        for _ in range(periods):
            if self._target is None:
                self.world.hold()
            else:
                self.world.step(self._target)

    def anchor(self, wall_time: float) -> None:
        """The world as it is now is the world at `wall_time`."""
        self.time_offset = wall_time - self.world.time

    def reset(self, seed: int, wall_time: float) -> None:
        self.world.reset(seed)
        self._target = None
        self.anchor(wall_time)
