"""A fixed-capacity, thread-safe ring of time-stamped items (camera frames, robot states).

Stamps must increase: an item older than (or as old as) the newest is refused, so a replayed or
duplicated message cannot reorder the history a policy sees.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class StampedRing(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: deque[tuple[float, T]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def push(self, stamp: float, item: T) -> bool:
        """Appends; False (and nothing stored) when `stamp` is not newer than the newest."""
        with self._lock:
            if self._items and stamp <= self._items[-1][0]:
                return False
            self._items.append((stamp, item))
            return True

    def latest(self) -> tuple[float, T] | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def nearest(self, stamp: float, tolerance: float) -> tuple[float, T] | None:
        """The item whose stamp is closest to `stamp`, if within `tolerance` seconds."""
        with self._lock:
            if not self._items:
                return None
            best = min(self._items, key=lambda entry: abs(entry[0] - stamp))
        return best if abs(best[0] - stamp) <= tolerance else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
