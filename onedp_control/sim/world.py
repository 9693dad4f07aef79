"""The pnp-milk world: reset from a seed, step one control period, observe, score.

Action (10 numbers, absolute, in the robot base frame): end-effector position (3), 6-D rotation
(6, first two columns of the rotation matrix) and gripper width in metres (1). One `step` tracks
the action for one control period (50 ms at 20 Hz) at the physics rate (500 Hz).

Observation: the front and wrist RGB images (120x160), end-effector position and 6-D rotation,
gripper width, each with its timestamp (the sim clock, in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from onedp_control.geometry import (
    matrix_from_quat,
    matrix_from_rot6d,
    rot6d_from_matrix,
)
from onedp_control.sim.controller import EndEffectorTracker
from onedp_control.sim.scene import (
    FRONT_CAMERA,
    HOME_QPOS,
    MAX_FINGER,
    WRIST_CAMERA,
    build_mjcf,
)
from onedp_control.sim.tasks import PushSpec, TaskSpec, get_task

ACTION_DIM = 10
POSITION = slice(0, 3)
ROT6D = slice(3, 9)
GRIPPER = 9
OPEN_WIDTH = 2 * MAX_FINGER
# Fingers this much wider than the carton are not holding it.
RELEASED_MARGIN_M = 0.008


@dataclass
class Observation:
    front_rgb: np.ndarray  # (H, W, 3) uint8
    wrist_rgb: np.ndarray  # (H, W, 3) uint8
    ee_pos: np.ndarray  # (3,) metres, base frame
    ee_rot6d: np.ndarray  # (6,)
    gripper_width: float  # metres
    front_stamp: float  # seconds on the world clock when each was taken
    wrist_stamp: float
    state_stamp: float

    def low_dim(self) -> np.ndarray:
        """(10,) state vector laid out like an action: position, 6-D rotation, gripper width."""
        return np.concatenate([self.ee_pos, self.ee_rot6d, [self.gripper_width]])


def make_action(position, rotation: np.ndarray, gripper_width: float) -> np.ndarray:
    return np.concatenate(
        [np.asarray(position, float), rot6d_from_matrix(rotation), [float(gripper_width)]]
    )


@dataclass
class _Push:
    start: np.ndarray
    offset: np.ndarray
    t_start: float


class CartonPusher:
    """A scripted person who slides the carton away when the gripper comes close to grasp it.

    The path is a straight line with a minimum-jerk profile; the carton is driven kinematically
    while it moves and released to the physics afterwards. Distances and directions are drawn
    from the episode's seed, so a seed always gives the same interference.
    """

    def __init__(self, spec: PushSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.remaining = int(rng.integers(spec.pushes[0], spec.pushes[1] + 1))
        self.done = 0
        self._rng = rng
        self._active: _Push | None = None
        self._last_end = -np.inf

    @property
    def moving(self) -> bool:
        return self._active is not None

    def _plan(self, start: np.ndarray, t_now: float) -> _Push:
        spec = self.spec
        for _ in range(100):
            angle = self._rng.uniform(-np.pi, np.pi)
            dist = self._rng.uniform(*spec.distance_m)
            offset = dist * np.array([np.cos(angle), np.sin(angle)])
            end = start[:2] + offset
            if (spec.region_x[0] <= end[0] <= spec.region_x[1]) and (
                spec.region_y[0] <= end[1] <= spec.region_y[1]
            ):
                return _Push(start.copy(), np.append(offset, 0.0), t_now)
        # Nowhere to go in the region from here: push towards its centre.
        centre = np.array([np.mean(spec.region_x), np.mean(spec.region_y)])
        offset = centre - start[:2]
        return _Push(start.copy(), np.append(offset, 0.0), t_now)

    def update(
        self,
        t_now: float,
        carton_pos: np.ndarray,
        tcp_pos: np.ndarray,
        carton_top: float,
        gripper_open: bool,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Returns (position, velocity) to impose on the carton this step, or None."""
        spec = self.spec
        if self._active is None:
            close = (
                np.linalg.norm(tcp_pos[:2] - carton_pos[:2]) < spec.trigger_radius_m
                and tcp_pos[2] < carton_top + spec.trigger_height_m
            )
            if not (
                self.remaining > 0
                and close
                and gripper_open
                and t_now - self._last_end >= spec.min_interval_s
            ):
                return None
            self._active = self._plan(carton_pos, t_now)
            self.remaining -= 1
        push = self._active
        tau = min(1.0, (t_now - push.t_start) / spec.duration_s)
        shape = 10 * tau**3 - 15 * tau**4 + 6 * tau**5
        rate = (30 * tau**2 - 60 * tau**3 + 30 * tau**4) / spec.duration_s
        if tau >= 1.0:
            self._active = None
            self._last_end = t_now
            self.done += 1
        return push.start + shape * push.offset, rate * push.offset


class PnpMilkWorld:
    """A Panda, a milk carton and a bin; the sim side of every training and scoring run."""

    def __init__(self, task: TaskSpec | str = "pnp_milk", render: bool = True) -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(self.task))
        self.data = mujoco.MjData(self.model)
        self.tracker = EndEffectorTracker(self.model, "tcp")
        self._renderer = (
            mujoco.Renderer(self.model, self.task.image_height, self.task.image_width)
            if render
            else None
        )
        self._tcp = self.model.site("tcp").id
        self._carton_body = self.model.body("carton").id
        carton_joint = self.model.joint("carton")
        self._carton_qpos = carton_joint.qposadr[0]
        self._carton_qvel = carton_joint.dofadr[0]
        self._finger_qpos = [
            self.model.joint(n).qposadr[0] for n in ("finger_left", "finger_right")
        ]
        self._substeps = round(self.task.control_period_s / self.model.opt.timestep)
        self.pusher: CartonPusher | None = None
        self._last_action = np.zeros(ACTION_DIM)
        self.seed: int | None = None

    def close(self) -> None:
        """Frees the GL context; left to the garbage collector at exit, EGL complains."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> PnpMilkWorld:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------------------- episode
    def reset(self, seed: int) -> Observation:
        """Same seed, same initial scene and interference, bit for bit."""
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        data.qpos[:7] = HOME_QPOS
        data.qpos[self._finger_qpos] = MAX_FINGER
        carton = self.task.carton
        offset = (rng.uniform(-0.5, 0.5, size=2)) * np.asarray(carton.area_size)
        xy = np.asarray(carton.area_center) + offset
        yaw = rng.uniform(*carton.yaw_range)
        q = self._carton_qpos
        data.qpos[q : q + 3] = [xy[0], xy[1], carton.half_size[2]]
        data.qpos[q + 3 : q + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self.pusher = CartonPusher(self.task.push, rng) if self.task.push is not None else None
        mujoco.mj_forward(model, data)
        self.tracker.reset(data.qpos, MAX_FINGER)
        data.ctrl[:7] = self.tracker.q_set
        data.ctrl[7] = MAX_FINGER
        pos, rot = self.tcp_pose()
        self._last_action = make_action(pos, rot, OPEN_WIDTH)
        return self.observe()

    def step(self, action: np.ndarray) -> None:
        """Track one absolute end-effector target for one control period."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has NaN or Inf: {action}")
        self._last_action = action.copy()
        rotation = matrix_from_rot6d(action[ROT6D])
        self.tracker.command(
            action[POSITION], rotation, action[GRIPPER], self.task.control_period_s
        )
        dt = self.model.opt.timestep
        for _ in range(self._substeps):
            q_set, finger_set = self.tracker.step(dt)
            self.data.ctrl[:7] = q_set
            self.data.ctrl[7] = finger_set
            self._drive_carton()
            mujoco.mj_step(self.model, self.data)

    def hold(self) -> None:
        """Keep tracking the last target for one more control period."""
        self.step(self._last_action)

    @property
    def last_action(self) -> np.ndarray:
        return self._last_action.copy()

    def _drive_carton(self) -> None:
        if self.pusher is None:
            return
        carton_pos, _ = self.carton_pose()
        imposed = self.pusher.update(
            self.data.time,
            carton_pos,
            self.data.site_xpos[self._tcp],
            carton_pos[2] + self.task.carton.half_size[2],
            self.gripper_open(),
        )
        if imposed is None:
            return
        position, velocity = imposed
        q, v = self._carton_qpos, self._carton_qvel
        self.data.qpos[q : q + 3] = position
        self.data.qvel[v : v + 3] = velocity
        self.data.qvel[v + 3 : v + 6] = 0.0

    # ----------------------------------------------------------------------------- sensing
    @property
    def time(self) -> float:
        return float(self.data.time)

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.data.site_xpos[self._tcp].copy(),
            self.data.site_xmat[self._tcp].reshape(3, 3).copy(),
        )

    def carton_pose(self) -> tuple[np.ndarray, np.ndarray]:
        q = self._carton_qpos
        return self.data.qpos[q : q + 3].copy(), matrix_from_quat(self.data.qpos[q + 3 : q + 7])

    def joint_positions(self) -> np.ndarray:
        """(7,) arm joint angles, radians."""
        return self.data.qpos[:7].copy()

    def gripper_width(self) -> float:
        return float(np.sum(self.data.qpos[self._finger_qpos]))

    def gripper_open(self) -> bool:
        """Fingers clearly wider than the carton: it cannot be held."""
        return self.gripper_width() > 2 * self.task.carton.half_size[0] + RELEASED_MARGIN_M

    def render(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            height, width = self.task.image_height, self.task.image_width
            return np.zeros((height, width, 3), dtype=np.uint8)
        self._renderer.update_scene(self.data, camera)
        return self._renderer.render().copy()

    def observe(self) -> Observation:
        pos, rot = self.tcp_pose()
        now = self.time
        return Observation(
            front_rgb=self.render(FRONT_CAMERA),
            wrist_rgb=self.render(WRIST_CAMERA),
            ee_pos=pos,
            ee_rot6d=rot6d_from_matrix(rot),
            gripper_width=self.gripper_width(),
            front_stamp=now,
            wrist_stamp=now,
            state_stamp=now,
        )

    # ----------------------------------------------------------------------------- scoring
    def carton_in_bin(self) -> bool:
        pos, _ = self.carton_pose()
        spec = self.task.bin
        inner_half = spec.outer_size / 2 - spec.wall_thickness
        inside = np.all(np.abs(pos[:2] - np.asarray(spec.center)) < inner_half)
        return bool(inside and pos[2] < spec.wall_height + 0.01)

    def is_success(self) -> bool:
        """The carton rests in the bin and the gripper has let go of it."""
        return self.carton_in_bin() and self.gripper_open()

    def failure(self) -> str | None:
        """A reason the episode can no longer succeed, or None."""
        pos, _ = self.carton_pose()
        if pos[2] < -0.05:
            return "carton_off_table"
        return None
