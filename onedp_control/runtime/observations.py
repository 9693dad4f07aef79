"""Observation histories from asynchronous streams: two cameras and the robot state.

The policy was trained on frames one control period apart in which both cameras and the state
were taken together. On a real cell they arrive separately (cameras at 30 fps, the state at the
command rate), so a history is assembled around the newest front-camera frame: for each of the
`obs_horizon` times t - k * period, the front frame nearest that time, the wrist frame within
the sync window of it, and the nearest robot state. A camera lagging the other beyond the sync
window yields no observation (the policy waits; the watchdog sees the observation age grow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onedp_control.runtime.ring_buffer import StampedRing
from onedp_control.sim.world import Observation


@dataclass(frozen=True)
class RobotSample:
    ee_pos: np.ndarray  # (3,)
    ee_rot6d: np.ndarray  # (6,)
    gripper_width: float


class ObservationAssembler:
    def __init__(
        self, obs_horizon: int, period_s: float, sync_window_s: float, capacity: int = 64
    ) -> None:
        self.obs_horizon = obs_horizon
        self.period_s = period_s
        self.sync_window_s = sync_window_s
        self.front: StampedRing[np.ndarray] = StampedRing(capacity)
        self.wrist: StampedRing[np.ndarray] = StampedRing(capacity)
        self.state: StampedRing[RobotSample] = StampedRing(capacity)

    def newest_stamp(self) -> float | None:
        latest = self.front.latest()
        return None if latest is None else latest[0]

    def clear(self) -> None:
        for ring in (self.front, self.wrist, self.state):
            ring.clear()

    def _frame(self, when: float) -> Observation | None:
        front = self.front.nearest(when, self.period_s / 2)
        if front is None:
            return None
        wrist = self.wrist.nearest(front[0], self.sync_window_s)
        state = self.state.nearest(front[0], self.period_s)
        if wrist is None or state is None:
            return None
        sample = state[1]
        return Observation(
            front_rgb=front[1],
            wrist_rgb=wrist[1],
            ee_pos=sample.ee_pos,
            ee_rot6d=sample.ee_rot6d,
            gripper_width=sample.gripper_width,
            front_stamp=front[0],
            wrist_stamp=wrist[0],
            state_stamp=state[0],
        )

    def history(self) -> list[Observation] | None:
        """The last `obs_horizon` frames, oldest first, around the newest front frame; None
        until all of them can be assembled."""
        newest = self.newest_stamp()
        if newest is None:
            return None
        frames = []
        for k in range(self.obs_horizon - 1, -1, -1):
            frame = self._frame(newest - k * self.period_s)
            if frame is None:
                return None
            frames.append(frame)
        return frames
