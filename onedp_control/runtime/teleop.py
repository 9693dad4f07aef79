"""Teleoperation as the command source: the teleop node's hardware-free core.

While demonstrations are recorded, a person (through any teleop device that publishes an
end-effector target pose and a gripper width) takes the policy's place. The teleop node turns
the newest command into the policy's output, an action chunk that holds that command, so the
robot and sim nodes execute it through the same scheduler, safety filter and watchdog as a
policy's chunks: a target too far away is rejected, a teleop that goes silent makes the robot
hold, nothing about the robot side changes between running a policy and teaching one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from onedp_control.errors import ConfigError
from onedp_control.runtime.chunks import ActionChunk


@dataclass(frozen=True)
class TeleopParams:
    """The teleop node's parameters (ROS parameters of the node `teleop`; without `-p`
    overrides, these defaults apply). The rate is the shared `control_period_s`."""

    # A command older than this is not executed any more: the chunks stop, the robot runs out
    # of steps and holds, and the watchdog reports the chunk age. A teleop that publishes only
    # on change must repeat its command at least this often.
    command_timeout_s: float = 0.5
    chunk_steps: int = 16  # steps per chunk, all holding the command

    def validate(self, where: str) -> None:
        if not 0 < self.command_timeout_s <= 10:
            raise ConfigError(f"{where}: command_timeout_s must be in (0, 10] s")
        if self.chunk_steps < 2:
            raise ConfigError(f"{where}: chunk_steps must be >= 2")


class TeleopCommands:
    """The newest target pose and gripper width, as a chunk while they are fresh.

    Thread-safe: the ROS callbacks set, the node's paced loop reads.
    """

    def __init__(self, params: TeleopParams, period_s: float) -> None:
        self.params = params
        self.period_s = period_s
        self._lock = threading.Lock()
        self._pose: np.ndarray | None = None  # position (3) + 6-D rotation (6)
        self._pose_received = -np.inf
        self._width: float | None = None

    def set_pose(self, position: np.ndarray, rot6d: np.ndarray, received: float) -> None:
        pose = np.concatenate([np.asarray(position, float), np.asarray(rot6d, float)])
        if pose.shape != (9,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"teleop target pose is not 9 finite numbers: {pose}")
        with self._lock:
            self._pose, self._pose_received = pose, received

    def set_gripper_width(self, width: float) -> None:
        if not np.isfinite(width):
            raise ValueError(f"teleop gripper width is not finite: {width}")
        with self._lock:
            self._width = float(width)

    def command_age(self, now: float) -> float:
        with self._lock:
            return now - self._pose_received

    def chunk(self, now: float) -> ActionChunk | None:
        """The chunk to publish at `now`: the command held for `chunk_steps` steps, stamped with
        the time the pose arrived (the operator's "observation", so that the chunk age the
        watchdog measures is the command's age); None before both a pose and a width have
        arrived, or once the pose is older than the timeout."""
        with self._lock:
            if self._pose is None or self._width is None:
                return None
            if now - self._pose_received > self.params.command_timeout_s:
                return None
            command = np.concatenate([self._pose, [self._width]])
            received = self._pose_received
        return ActionChunk(received, self.period_s, np.tile(command, (self.params.chunk_steps, 1)))
