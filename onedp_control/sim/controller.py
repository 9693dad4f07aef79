"""End-effector target tracking inside the sim: interpolation + damped least-squares IK.

The policy commands an absolute end-effector pose and gripper width at 20 Hz. At every physics
step (500 Hz) the tracker moves a reference pose from the previous command to the new one over
one control period (so the arm moves smoothly, not in 20 Hz steps), capped at Cartesian speed
limits, and solves one damped least-squares IK step on a kinematic copy of the arm to turn the
reference into joint position set-points for the joint servos. A null-space term keeps the
elbow near the ready posture.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from onedp_control.geometry import matrix_from_rotvec, rotvec_from_matrix
from onedp_control.sim.scene import HOME_QPOS, MAX_FINGER


@dataclass(frozen=True)
class TrackerLimits:
    max_linear_speed: float = 1.0  # m/s, below the Panda's 1.7 m/s Cartesian limit
    max_angular_speed: float = 2.5  # rad/s
    max_finger_speed: float = 0.1  # m/s per finger
    damping: float = 0.02  # DLS damping (m, rad)
    nullspace_gain: float = 0.02  # fraction of the posture error removed per physics step


class EndEffectorTracker:
    """Turns end-effector targets into joint servo set-points for the first seven joints."""

    def __init__(
        self,
        model: mujoco.MjModel,
        site: str,
        limits: TrackerLimits | None = None,
    ) -> None:
        self.model = model
        self.limits = limits or TrackerLimits()
        self._ik_data = mujoco.MjData(model)  # kinematics of the set-point, not of the arm
        self._site = model.site(site).id
        self._dofs = np.arange(7)
        self._joint_low = model.jnt_range[:7, 0].copy()
        self._joint_high = model.jnt_range[:7, 1].copy()
        self._home = np.asarray(HOME_QPOS)
        self._jac_pos = np.zeros((3, model.nv))
        self._jac_rot = np.zeros((3, model.nv))
        self.q_set = self._home.copy()
        self.finger_set = MAX_FINGER
        self._from_pos = np.zeros(3)
        self._from_rot = np.eye(3)
        self._to_pos = np.zeros(3)
        self._to_rot = np.eye(3)
        self._turn = np.zeros(3)  # rotation vector from the previous target to the new one
        self._finger_goal = MAX_FINGER
        self._ref_pos = np.zeros(3)
        self._ref_rot = np.eye(3)
        self._elapsed = 0.0
        self._period = 0.05

    def reset(self, qpos: np.ndarray, finger: float) -> None:
        """Start holding the arm where it is."""
        self.q_set = np.asarray(qpos[:7], dtype=np.float64).copy()
        self.finger_set = self._finger_goal = float(finger)
        pos, rot = self._set_point_pose()
        self._from_pos, self._from_rot = pos.copy(), rot.copy()
        self._to_pos, self._to_rot = pos.copy(), rot.copy()
        self._turn = np.zeros(3)
        self._ref_pos, self._ref_rot = pos.copy(), rot.copy()
        self._elapsed = 0.0

    def command(
        self, position: np.ndarray, rotation: np.ndarray, gripper_width: float, period: float
    ) -> None:
        """A new target, reached by interpolation over `period` seconds."""
        self._from_pos, self._from_rot = self._ref_pos.copy(), self._ref_rot.copy()
        self._to_pos = np.asarray(position, dtype=np.float64).copy()
        self._to_rot = np.asarray(rotation, dtype=np.float64).copy()
        self._turn = rotvec_from_matrix(self._to_rot @ self._from_rot.T)
        self._finger_goal = float(np.clip(gripper_width / 2.0, 0.0, MAX_FINGER))
        self._elapsed = 0.0
        self._period = period

    def step(self, dt: float) -> tuple[np.ndarray, float]:
        """Advance the reference one physics step; returns (joint set-points, finger set-point)."""
        lim = self.limits
        self._elapsed += dt
        alpha = min(1.0, self._elapsed / self._period)
        wanted_pos = self._from_pos + alpha * (self._to_pos - self._from_pos)
        wanted_rot = matrix_from_rotvec(alpha * self._turn) @ self._from_rot

        step_pos = wanted_pos - self._ref_pos
        norm = np.linalg.norm(step_pos)
        if norm > lim.max_linear_speed * dt:
            step_pos *= lim.max_linear_speed * dt / norm
        self._ref_pos = self._ref_pos + step_pos
        step_rot = rotvec_from_matrix(wanted_rot @ self._ref_rot.T)
        angle = np.linalg.norm(step_rot)
        if angle > lim.max_angular_speed * dt:
            step_rot *= lim.max_angular_speed * dt / angle
        self._ref_rot = matrix_from_rotvec(step_rot) @ self._ref_rot

        self._solve_ik()
        finger_step = np.clip(
            self._finger_goal - self.finger_set,
            -lim.max_finger_speed * dt,
            lim.max_finger_speed * dt,
        )
        self.finger_set += float(finger_step)
        return self.q_set, self.finger_set

    def _set_point_pose(self) -> tuple[np.ndarray, np.ndarray]:
        data = self._ik_data
        data.qpos[:7] = self.q_set
        mujoco.mj_kinematics(self.model, data)
        mujoco.mj_comPos(self.model, data)
        return data.site_xpos[self._site].copy(), data.site_xmat[self._site].reshape(3, 3).copy()

    def _solve_ik(self) -> None:
        pos, rot = self._set_point_pose()
        error = np.concatenate([self._ref_pos - pos, rotvec_from_matrix(self._ref_rot @ rot.T)])
        mujoco.mj_jacSite(self.model, self._ik_data, self._jac_pos, self._jac_rot, self._site)
        jac = np.vstack([self._jac_pos[:, :7], self._jac_rot[:, :7]])
        damping = self.limits.damping**2 * np.eye(6)
        jac_pinv = jac.T @ np.linalg.solve(jac @ jac.T + damping, np.eye(6))
        dq = jac_pinv @ error
        nullspace = np.eye(7) - jac_pinv @ jac
        dq += nullspace @ (self.limits.nullspace_gain * (self._home - self.q_set))
        self.q_set = np.clip(self.q_set + dq, self._joint_low, self._joint_high)
