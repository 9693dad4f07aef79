"""The scripted expert: a privileged pick-and-place controller that makes the demonstrations.

It sees the carton's true pose (as a person teleoperating the robot would), moves a target
pose towards the waypoint of its current phase at a teleoperator-like speed, and re-plans from
the carton's pose at every control step, so when the carton is moved away it follows it and
tries again. Phases:

  approach -> descend -> close -> lift -> transport -> lower -> release -> retreat

A carton that slips away before it is held, or is missing between the fingers after closing
or while carried, sends the expert back to `approach`.

`PerturbedExpert` makes demonstrations that teach recovery (DART, Laskey et al. 2017): the arm
executes the expert's target plus slowly varying noise, while the dataset records the expert's
own target. The expert re-plans from where the arm really is, so the recorded actions lead back
from states a clean run never visits -- the states a learned policy's small errors put it in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onedp_control.geometry import (
    matrix_from_rot6d,
    rot6d_from_matrix,
    rotation_z,
    wrap_angle,
    yaw_of,
)
from onedp_control.sim.world import OPEN_WIDTH, Observation, PnpMilkWorld, make_action


@dataclass(frozen=True)
class ExpertConfig:
    speed: float = 0.30  # m/s while travelling
    descend_speed: float = 0.15  # m/s near the carton and the bin
    yaw_rate: float = 1.5  # rad/s
    hover_above_top: float = 0.10  # m above the carton's top before descending
    carry_height: float = 0.25  # m, table to gripper centre while carrying
    release_height: float = 0.17  # m, gripper centre over the bin when letting go
    grasp_below_top: float = 0.045  # m, gripper centre below the carton's top when closing
    close_time: float = 0.6  # s the gripper is given to close
    release_time: float = 0.4  # s to open before retreating
    lost_xy: float = 0.025  # m: carton this far from the gripper axis is not where we thought
    reached_tol: float = 0.012  # m between measured gripper and waypoint to call it reached


def top_down_rotation(yaw: float) -> np.ndarray:
    """Gripper pointing down, fingers closing along the base y axis turned by `yaw`."""
    return rotation_z(yaw) @ np.diag([1.0, -1.0, -1.0])


class ScriptedExpert:
    name = "expert"
    obs_horizon = 1
    action_steps = 1
    sampler = None
    backend = None

    def __init__(self, world: PnpMilkWorld, config: ExpertConfig | None = None) -> None:
        self.world = world
        self.config = config or ExpertConfig()
        self.phase = "approach"
        self._target_pos = np.zeros(3)
        self._target_yaw = 0.0
        self._gripper = OPEN_WIDTH
        self._phase_time = 0.0

    def reset(self) -> None:
        pos, rot = self.world.tcp_pose()
        self._target_pos = pos
        self._target_yaw = yaw_of(rot)
        self._gripper = OPEN_WIDTH
        self._enter("approach")

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_time = 0.0

    def _grasp_yaw(self, carton_rot: np.ndarray) -> float:
        """The carton's square section: any multiple of 90 degrees grasps it; take the nearest."""
        yaw = yaw_of(carton_rot)
        return self._target_yaw + wrap_angle(4 * (yaw - self._target_yaw)) / 4

    def predict_chunk(self, history: Sequence[Observation]) -> np.ndarray:
        cfg = self.config
        obs = history[-1]
        dt = self.world.task.control_period_s
        carton_pos, carton_rot = self.world.carton_pose()
        half = self.world.task.carton.half_size
        top = carton_pos[2] + half[2]
        bin_xy = np.asarray(self.world.task.bin.center)
        tcp = obs.ee_pos
        holding = obs.gripper_width > 2 * half[0] * 0.6 and obs.gripper_width < 2 * half[0] + 0.004
        carton_near_axis = np.linalg.norm(carton_pos[:2] - tcp[:2]) < cfg.lost_xy
        self._phase_time += dt

        speed = cfg.speed
        yaw = self._target_yaw
        if self.phase == "approach":
            self._gripper = OPEN_WIDTH
            yaw = self._grasp_yaw(carton_rot)
            waypoint = np.array([carton_pos[0], carton_pos[1], top + cfg.hover_above_top])
            if self._reached(tcp, waypoint, xy_tol=0.008) and self._yaw_reached(yaw):
                self._enter("descend")
        elif self.phase == "descend":
            yaw = self._grasp_yaw(carton_rot)
            speed = cfg.descend_speed
            waypoint = np.array([carton_pos[0], carton_pos[1], top - cfg.grasp_below_top])
            if not carton_near_axis:
                self._enter("approach")
            elif self._reached(tcp, waypoint):
                self._enter("close")
        elif self.phase == "close":
            waypoint = self._target_pos
            self._gripper = 0.0
            if self._phase_time >= cfg.close_time:
                self._enter("lift" if holding else "approach")
        elif self.phase in ("lift", "transport", "lower"):
            if not (holding and carton_near_axis):
                self._enter("approach")
                return self.predict_chunk(history)
            if self.phase == "lift":
                waypoint = np.array([tcp[0], tcp[1], cfg.carry_height])
                if tcp[2] > cfg.carry_height - 0.03:
                    self._enter("transport")
            elif self.phase == "transport":
                waypoint = np.array([bin_xy[0], bin_xy[1], cfg.carry_height])
                if self._reached(tcp, waypoint, xy_tol=0.01):
                    self._enter("lower")
            else:
                speed = cfg.descend_speed
                waypoint = np.array([bin_xy[0], bin_xy[1], cfg.release_height])
                if self._reached(tcp, waypoint):
                    self._enter("release")
        elif self.phase == "release":
            waypoint = self._target_pos
            self._gripper = OPEN_WIDTH
            if self._phase_time >= cfg.release_time:
                self._enter("retreat")
        else:  # retreat
            waypoint = np.array([bin_xy[0], bin_xy[1], cfg.carry_height + 0.05])

        step = waypoint - self._target_pos
        norm = np.linalg.norm(step)
        if norm > speed * dt:
            step *= speed * dt / norm
        self._target_pos = self._target_pos + step
        max_turn = cfg.yaw_rate * dt
        self._target_yaw += float(np.clip(wrap_angle(yaw - self._target_yaw), -max_turn, max_turn))
        action = make_action(self._target_pos, top_down_rotation(self._target_yaw), self._gripper)
        return action[None, :]

    def _reached(self, tcp: np.ndarray, waypoint: np.ndarray, xy_tol: float | None = None) -> bool:
        cfg = self.config
        target_there = np.linalg.norm(self._target_pos - waypoint) < 1e-6
        if xy_tol is None:
            return target_there and np.linalg.norm(tcp - waypoint) < cfg.reached_tol
        return (
            target_there
            and np.linalg.norm(tcp[:2] - waypoint[:2]) < xy_tol
            and abs(tcp[2] - waypoint[2]) < cfg.reached_tol
        )

    def _yaw_reached(self, yaw: float) -> bool:
        return abs(wrap_angle(yaw - self._target_yaw)) < 1e-3


@dataclass(frozen=True)
class PerturbationConfig:
    position_std_m: float = 0.015  # stationary std of the executed target's offset, per axis
    yaw_std_rad: float = 0.08
    correlation_s: float = 0.5  # how long an offset lasts (Ornstein-Uhlenbeck time constant)
    # Phases the offset is scaled in: none while the fingers act (a push there would knock the
    # carton, not teach anything), half near the carton and the bin, full while travelling.
    phase_scale: tuple[tuple[str, float], ...] = (
        ("close", 0.0),
        ("release", 0.0),
        ("descend", 0.5),
        ("lower", 0.5),
    )


class PerturbedExpert:
    """The scripted expert, executed with noise; `clean_action` is what the dataset records."""

    name = "expert (perturbed)"
    obs_horizon = 1
    action_steps = 1
    sampler = None
    backend = None

    def __init__(
        self,
        world: PnpMilkWorld,
        config: PerturbationConfig | None = None,
        expert: ScriptedExpert | None = None,
    ) -> None:
        self.world = world
        self.config = config or PerturbationConfig()
        self.expert = expert or ScriptedExpert(world)
        self.clean_action: np.ndarray | None = None
        self._offset = np.zeros(4)  # x, y, z, yaw
        self._rng = np.random.default_rng(0)

    def reset(self) -> None:
        self.expert.reset()
        # The world's seed also seeds the noise: a demonstration is reproducible from its seed.
        self._rng = np.random.default_rng(self.world.seed)
        self._offset = np.zeros(4)
        self.clean_action = None

    def predict_chunk(self, history: Sequence[Observation]) -> np.ndarray:
        cfg = self.config
        clean = self.expert.predict_chunk(history)[0]
        self.clean_action = clean
        decay = float(np.exp(-self.world.task.control_period_s / cfg.correlation_s))
        std = np.array([cfg.position_std_m] * 3 + [cfg.yaw_std_rad])
        self._offset = decay * self._offset + np.sqrt(1 - decay**2) * std * self._rng.normal(size=4)
        scale = dict(cfg.phase_scale).get(self.expert.phase, 1.0)
        offset = scale * self._offset
        rotation = rotation_z(offset[3]) @ matrix_from_rot6d(clean[3:9])
        return np.concatenate([clean[:3] + offset[:3], rot6d_from_matrix(rotation), clean[9:]])[
            None, :
        ]
