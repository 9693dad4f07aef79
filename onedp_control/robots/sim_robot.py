"""The MuJoCo pnp-milk world behind the Robot interface, for sim-in-the-loop runs.

`send_target` stores the target (it returns at once, like franky's asynchronous motions);
`advance` steps the world by one control period toward it, or holding the last target, and is
called by the sim node once per tick. The state is the world's measured one.
"""

from __future__ import annotations

import numpy as np

from onedp_control.robots.base import Robot, RobotState
from onedp_control.sim.world import PnpMilkWorld, make_action


class SimRobot(Robot):
    def __init__(self, world: PnpMilkWorld) -> None:
        self.world = world
        self._target: np.ndarray | None = None
        self.time_offset = 0.0  # wall-clock time of world time 0, set at each reset

    def connect(self) -> None:
        """The world is in-process: nothing to open."""

    def disconnect(self) -> None:
        self._target = None

    def get_state(self) -> RobotState:
        position, rotation = self.world.tcp_pose()
        return RobotState(
            stamp=self.time_offset + self.world.time,
            ee_pos=position,
            ee_rot=rotation,
            gripper_width=self.world.gripper_width(),
            joint_positions=self.world.joint_positions(),
        )

    def send_target(self, position: np.ndarray, rotation: np.ndarray, gripper_width: float):
        self._target = make_action(position, rotation, gripper_width)

    def hold(self) -> None:
        """Stay where the arm is now (not at the last target, which may be a step ahead),
        keeping the gripper as commanded: opening it would drop what it holds."""
        position, rotation = self.world.tcp_pose()
        self._target = make_action(position, rotation, self.world.last_action[9])

    def recover(self) -> None:
        """The simulated arm has no error states."""

    def advance(self) -> None:
        if self._target is None:
            self.world.hold()
        else:
            self.world.step(self._target)

    def reset(self, seed: int, wall_time: float) -> None:
        self.world.reset(seed)
        self._target = None
        self.time_offset = wall_time - self.world.time
