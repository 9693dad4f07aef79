"""What the robot node asks of an arm with a gripper (lerobot's Robot, narrowed to an
end-effector streaming controller): connect, read the state, send a target, hold, recover.

Implementations: `FrankyRobot` (a real Panda / FR3 through franky, or franky-sim on loopback)
and `SimRobot` (the MuJoCo pnp-milk world). Poses are in the robot base frame, metres.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class RobotError(RuntimeError):
    """The robot refused or aborted a command (a reflex, a connection loss, ...)."""


@dataclass(frozen=True)
class RobotState:
    stamp: float  # seconds, the clock of the node that reads it (time.time() or sim time)
    ee_pos: np.ndarray  # (3,) measured end-effector (TCP) position
    ee_rot: np.ndarray  # (3, 3) measured end-effector orientation
    gripper_width: float  # metres
    joint_positions: np.ndarray  # (7,) radians
    error: str | None = None  # the robot's current error, if any


class Robot(ABC):
    @abstractmethod
    def connect(self) -> None:
        """Opens the connection; raises RobotError naming the host when it cannot."""

    @abstractmethod
    def disconnect(self) -> None: ...

    @abstractmethod
    def get_state(self) -> RobotState: ...

    @abstractmethod
    def send_target(self, position: np.ndarray, rotation: np.ndarray, gripper_width: float) -> None:
        """Streams one end-effector target (replacing the previous one) and a gripper width;
        returns at once."""

    @abstractmethod
    def hold(self) -> None:
        """Stops streaming and keeps the current pose (the safe reaction to any fault)."""

    @abstractmethod
    def recover(self) -> None:
        """Clears a recoverable robot error (franky: recover_from_errors)."""
