"""The safety filter every target passes before it reaches the robot (hardware-free).

In order, for each 10-D target (position, 6-D rotation, gripper width):

1. non-finite values, or a 6-D rotation too degenerate to orthonormalise: rejected (the robot
   holds instead); so is a target more than `reject_outside_m` outside the workspace or more
   than `reject_jump_steps` per-step limits away from the previous target: that is a broken
   policy, not one to follow at reduced speed;
2. position clamped into the workspace box;
3. orientation limited to a cone around the tool's expected approach direction (the tool z
   axis within `cone_half_angle_deg` of `cone_axis`): rotated back onto the cone's edge;
4. per-step jumps from the previous target limited: translation to `max_speed_m_s * period`,
   rotation to `max_angular_speed_rad_s * period` (along the geodesic); if the limited rotation
   leaves the cone (a geodesic between two in-cone rotations can bulge out of it), the previous
   orientation is kept;
5. gripper width clamped.

Every clamp and rejection is counted by reason, for /diagnostics. The first target after a
(re)start is limited relative to the measured pose given to `reset`, so resuming never jumps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_rotvec, rot6d_from_matrix, rotvec_from_matrix


@dataclass(frozen=True)
class SafetyLimits:
    workspace_min: tuple[float, float, float] = (0.15, -0.40, 0.01)  # metres, base frame
    workspace_max: tuple[float, float, float] = (0.75, 0.40, 0.60)
    cone_axis: tuple[float, float, float] = (0.0, 0.0, -1.0)  # the tool z axis points down ...
    cone_half_angle_deg: float = 40.0  # ... within this angle
    max_speed_m_s: float = 0.6  # per-step translation limit = this x the control period
    max_angular_speed_rad_s: float = 2.0
    gripper_min_m: float = 0.0
    gripper_max_m: float = 0.08
    reject_outside_m: float = 0.10
    reject_jump_steps: float = 4.0

    def validate(self, where: str) -> None:
        low, high = np.asarray(self.workspace_min), np.asarray(self.workspace_max)
        if not np.all(low < high):
            raise ConfigError(f"{where}: workspace_min must be below workspace_max on every axis")
        if np.linalg.norm(self.cone_axis) < 1e-6:
            raise ConfigError(f"{where}: cone_axis must not be zero")
        if not 0 < self.cone_half_angle_deg <= 180:
            raise ConfigError(f"{where}: cone_half_angle_deg must be in (0, 180]")
        if not (self.max_speed_m_s > 0 and self.max_angular_speed_rad_s > 0):
            raise ConfigError(f"{where}: max speeds must be > 0")
        if not 0 <= self.gripper_min_m < self.gripper_max_m:
            raise ConfigError(f"{where}: need 0 <= gripper_min_m < gripper_max_m")
        if not (self.reject_outside_m >= 0 and self.reject_jump_steps >= 1):
            raise ConfigError(f"{where}: need reject_outside_m >= 0 and reject_jump_steps >= 1")


@dataclass(frozen=True)
class Filtered:
    action: np.ndarray | None  # None: rejected, hold instead
    reasons: tuple[str, ...]  # what was clamped, or why it was rejected


def orthonormal_rotation(rot6d: np.ndarray) -> np.ndarray | None:
    """Gram-Schmidt of a 6-D rotation, or None when its two vectors are (nearly) parallel or
    zero: such a target means the network produced garbage, not a direction."""
    a, b = rot6d[:3], rot6d[3:]
    if np.linalg.norm(a) < 1e-3:
        return None
    x = a / np.linalg.norm(a)
    b = b - (x @ b) * x
    if np.linalg.norm(b) < 1e-3:
        return None
    y = b / np.linalg.norm(b)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def cone_angle(rotation: np.ndarray, axis: np.ndarray) -> float:
    return float(np.arccos(np.clip(rotation[:, 2] @ axis, -1.0, 1.0)))


class SafetyFilter:
    def __init__(self, limits: SafetyLimits, period_s: float) -> None:
        limits.validate("safety")
        self.limits = limits
        self.low = np.asarray(limits.workspace_min, dtype=np.float64)
        self.high = np.asarray(limits.workspace_max, dtype=np.float64)
        self.axis = np.asarray(limits.cone_axis, dtype=np.float64)
        self.axis /= np.linalg.norm(self.axis)
        self.cone = np.radians(limits.cone_half_angle_deg)
        self.max_step_m = limits.max_speed_m_s * period_s
        self.max_step_rad = limits.max_angular_speed_rad_s * period_s
        self.counts: Counter[str] = Counter()
        self._previous: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self, position: np.ndarray, rotation: np.ndarray) -> None:
        """The measured pose the next target is limited against (at start, after a hold)."""
        self._previous = (np.asarray(position, float).copy(), np.asarray(rotation, float).copy())

    def _into_cone(self, rotation: np.ndarray) -> np.ndarray:
        z = rotation[:, 2]
        excess = cone_angle(rotation, self.axis) - self.cone
        if excess <= 0:
            return rotation
        turn = np.cross(z, self.axis)
        if np.linalg.norm(turn) < 1e-9:  # pointing straight away from the axis: any turn
            turn = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
        turn /= np.linalg.norm(turn)
        return matrix_from_rotvec(turn * (excess + 1e-9)) @ rotation

    def filter(self, action: np.ndarray) -> Filtered:
        if self._previous is None:
            raise RuntimeError("SafetyFilter.reset(measured pose) must come before filter()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (10,) or not np.all(np.isfinite(action)):
            return self._reject("non-finite target")
        rotation = orthonormal_rotation(action[3:9])
        if rotation is None:
            return self._reject("degenerate rotation")
        outside = np.linalg.norm(action[:3] - np.clip(action[:3], self.low, self.high))
        if outside > self.limits.reject_outside_m:
            return self._reject("far outside the workspace", f"{outside:.3f} m")
        jump = np.linalg.norm(action[:3] - self._previous[0])
        if jump > self.limits.reject_jump_steps * self.max_step_m:
            return self._reject("jump too large", f"{jump:.3f} m")
        reasons = []
        position = np.clip(action[:3], self.low, self.high)
        if not np.array_equal(position, action[:3]):
            reasons.append("workspace")
        in_cone = self._into_cone(rotation)
        if in_cone is not rotation:
            reasons.append("orientation cone")
        previous_position, previous_rotation = self._previous
        step = position - previous_position
        distance = np.linalg.norm(step)
        if distance > self.max_step_m:
            position = previous_position + step * (self.max_step_m / distance)
            reasons.append("translation jump")
        relative = rotvec_from_matrix(previous_rotation.T @ in_cone)
        angle = np.linalg.norm(relative)
        rotation = in_cone
        if angle > self.max_step_rad:
            rotation = previous_rotation @ matrix_from_rotvec(
                relative * (self.max_step_rad / angle)
            )
            reasons.append("rotation jump")
            if cone_angle(rotation, self.axis) > self.cone + 1e-6:
                rotation = previous_rotation
        gripper = float(np.clip(action[9], self.limits.gripper_min_m, self.limits.gripper_max_m))
        if gripper != action[9]:
            reasons.append("gripper width")
        self._previous = (position, rotation)
        self.counts.update(reasons)
        return Filtered(
            np.concatenate([position, rot6d_from_matrix(rotation), [gripper]]), tuple(reasons)
        )

    def _reject(self, reason: str, detail: str = "") -> Filtered:
        """Counted by reason; the detail (how far, how much) goes only into the message."""
        self.counts[reason] += 1
        return Filtered(None, (f"{reason} ({detail})" if detail else reason,))
