"""Runs a policy in the world under one of two clocks, and scores the episode.

- lockstep: the world waits while the policy thinks. Scores the quality of the policy alone.
- realtime: the world keeps running while the policy thinks, as a real robot does. While a chunk
  is being computed the robot goes on executing the previous chunk (or holds its last target
  when that runs out); when the new chunk arrives, its steps whose time has already passed are
  skipped, as in diffusion_policy's real-robot loop. Scores what latency costs.

Observations are taken every control period (the cameras stream whether or not the policy is
thinking), so the policy's history is always its last `obs_horizon` consecutive frames.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onedp_control.geometry import yaw_of
from onedp_control.policies.base import Policy
from onedp_control.sim.world import Observation, PnpMilkWorld

CLOCKS = ("lockstep", "realtime")


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    completion_time_s: float | None  # world time at success
    duration_s: float  # world time at the end of the episode
    steps: int  # control steps executed
    failure: str | None  # why it failed: timeout, carton_off_table, ...
    pushes: int  # times the carton was moved away (pnp_milk_move)
    # The carton's yaw at the start, degrees: a policy that does not turn the gripper to it
    # succeeds or fails by it (models/pnp_milk/README.md, "Why OneDP-S lags").
    carton_yaw_deg: float
    inference_ms: list[float] = field(default_factory=list)
    # How far each policy target's position lies from the target before it (metres): a smooth
    # policy's targets move at arm speed (the expert's 1.5 cm a period); a policy that leaks
    # noise into its chunks jumps.
    target_steps_m: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "success": self.success,
            "completion_time_s": self.completion_time_s,
            "duration_s": round(self.duration_s, 3),
            "steps": self.steps,
            "failure": self.failure,
            "pushes": self.pushes,
            "carton_yaw_deg": round(self.carton_yaw_deg, 1),
            "inference_ms_median": float(np.median(self.inference_ms))
            if self.inference_ms
            else None,
            "wall_time_s": round(self.wall_time_s, 3),
        }


# Called with (observation before the step, action executed) for every control step.
StepCallback = Callable[[Observation, np.ndarray], None]


def run_episode(
    world: PnpMilkWorld,
    policy: Policy,
    seed: int,
    clock: str = "lockstep",
    latency_s: float | None = None,
    on_step: StepCallback | None = None,
) -> EpisodeResult:
    """One episode from `world.reset(seed)` until success, failure or the task's time limit.

    `latency_s`, on the real-time clock, replaces the measured inference time (reproducible
    runs); by default the measured wall-clock time of `predict_chunk` is used.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock '{clock}' (known: {', '.join(CLOCKS)})")
    wall_start = time.perf_counter()
    period = world.task.control_period_s
    max_steps = math.ceil(world.task.time_limit_s / period)
    observation = world.reset(seed)
    policy.reset()
    history: deque[Observation] = deque(
        [observation] * policy.obs_horizon, maxlen=policy.obs_horizon
    )
    pending: deque[np.ndarray] = deque()
    result = EpisodeResult(
        seed=seed,
        success=False,
        completion_time_s=None,
        duration_s=0.0,
        steps=0,
        failure=None,
        pushes=0,
        carton_yaw_deg=math.degrees(yaw_of(world.carton_pose()[1])),
    )

    def execute(action: np.ndarray | None) -> bool:
        """One control step; True when the episode is over."""
        if action is None:
            action = world.last_action
        else:
            step_m = np.linalg.norm(action[:3] - world.last_action[:3])
            result.target_steps_m.append(float(step_m))
        if on_step is not None:
            on_step(history[-1], action)
        world.step(action)
        result.steps += 1
        history.append(world.observe())
        if world.is_success():
            result.success = True
            result.completion_time_s = round(world.time, 3)
            return True
        result.failure = world.failure()
        if result.failure is None and result.steps >= max_steps:
            result.failure = "timeout"
        return result.failure is not None

    done = False
    while not done:
        t0 = time.perf_counter()
        chunk = np.asarray(policy.predict_chunk(list(history)), dtype=np.float64)
        measured = time.perf_counter() - t0
        result.inference_ms.append(measured * 1e3)
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise ValueError(f"policy '{policy.name}' returned a chunk of shape {chunk.shape}")
        lag = 0
        if clock == "realtime":
            # The world ran on while the policy thought: the rest of the old chunk (or a hold)
            # filled the gap, and the new chunk's first `lag` steps are already in the past.
            lag = math.ceil((measured if latency_s is None else latency_s) / period - 1e-9)
            for _ in range(lag):
                if done := execute(pending.popleft() if pending else None):
                    break
        pending = deque(chunk[lag:])
        for _ in range(min(policy.action_steps, len(pending))):
            if done or (done := execute(pending.popleft())):
                break
    result.duration_s = world.time
    result.pushes = world.pusher.done if world.pusher is not None else 0
    result.wall_time_s = time.perf_counter() - wall_start
    return result
