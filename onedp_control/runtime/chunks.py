"""Action chunks on the wall clock, and which target to command now.

A chunk is the policy's answer to one observation: step k is the end-effector target for time
`stamp + k * period`, where `stamp` is the time of the newest observation it was computed from
(step 0 is "now" as the policy saw it). By the time the chunk reaches the robot, inference and
transport have eaten into it: the steps whose time has passed are skipped, as in
diffusion_policy's real-robot loop, and a command between two step times is interpolated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from onedp_control.geometry import matrix_from_rot6d, rot6d_from_matrix


@dataclass(frozen=True)
class ActionChunk:
    stamp: float  # seconds: time of the observation the chunk was computed from
    period: float  # seconds between steps
    actions: np.ndarray  # (T, 10): position (3), 6-D rotation (6), gripper width (1)

    def __post_init__(self) -> None:
        if self.actions.ndim != 2 or self.actions.shape[0] < 1 or self.actions.shape[1] != 10:
            raise ValueError(f"chunk actions must be (T >= 1, 10), got {self.actions.shape}")
        if not self.period > 0:
            raise ValueError(f"chunk period must be > 0, got {self.period}")

    @property
    def end(self) -> float:
        """Time of the last step."""
        return self.stamp + (len(self.actions) - 1) * self.period


def interpolate_action(first: np.ndarray, second: np.ndarray, alpha: float) -> np.ndarray:
    """Between two actions: position and gripper linearly, rotation by interpolating the 6-D
    representation and re-orthonormalising (steps 50 ms apart turn a few degrees at most,
    where this is within 1e-3 rad of a geodesic slerp)."""
    blended = (1.0 - alpha) * first + alpha * second
    blended[3:9] = rot6d_from_matrix(matrix_from_rot6d(blended[3:9]))
    return blended


class ChunkScheduler:
    """Holds the newest chunk; thread-safe (the policy's subscriber writes, the command loop
    reads)."""

    def __init__(self) -> None:
        self._chunk: ActionChunk | None = None
        self._not_before = -np.inf
        self._lock = threading.Lock()

    def offer(self, chunk: ActionChunk) -> bool:
        """Takes a chunk computed from a newer observation than the current one's (and not
        older than the last `clear`); False when it is refused."""
        with self._lock:
            if chunk.stamp < self._not_before:
                return False
            if self._chunk is not None and chunk.stamp <= self._chunk.stamp:
                return False
            self._chunk = chunk
            return True

    def clear(self, not_before: float) -> None:
        """Drops the current chunk and refuses any computed from observations before
        `not_before` (after a hold or a reset: the world has changed since)."""
        with self._lock:
            self._chunk = None
            self._not_before = not_before

    @property
    def chunk(self) -> ActionChunk | None:
        with self._lock:
            return self._chunk

    def target_at(self, now: float) -> np.ndarray | None:
        """The action for time `now`, or None when there is nothing left to execute (no
        chunk, or `now` past its last step): the caller holds."""
        chunk = self.chunk
        if chunk is None or now > chunk.end:
            return None
        position = max(0.0, (now - chunk.stamp) / chunk.period)
        index = int(position)
        if index >= len(chunk.actions) - 1:
            return chunk.actions[-1].copy()
        return interpolate_action(chunk.actions[index], chunk.actions[index + 1], position - index)
