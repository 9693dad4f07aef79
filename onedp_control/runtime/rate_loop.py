"""A deadline-paced loop in its own thread: the command stream's clock.

Measured on the 2-core CI machine, a 20 Hz rclpy timer under load had p99 period errors of
~30 ms and spikes over 100 ms; a loop that sleeps until absolute deadlines (start + k * period)
in its own thread stayed within a few ms. Deadlines are absolute, so one late tick does not
shift the ones after it; a tick later than a whole period counts as a missed deadline and the
loop skips to the next deadline in the future instead of bursting to catch up.

A thread that wakes at its deadline must also get the GIL back: with CPython's default 5 ms
switch interval, a node's executor thread busy deserialising a message keeps the waking loop
waiting up to 5 ms. Starting a loop lowers the process's switch interval to 1 ms (measured
here with a busy second thread: worst period error 41 ms -> 9 ms on a loaded machine).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import numpy as np

GIL_SWITCH_INTERVAL_S = 0.001


class DeadlineLoop:
    def __init__(
        self,
        period_s: float,
        step: Callable[[float], None],
        name: str = "deadline-loop",
        clock: Callable[[], float] = time.monotonic,
        history: int = 100_000,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period must be > 0, got {period_s}")
        self.period_s = period_s
        self._step = step
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ticks: list[float] = []
        self._step_durations: list[float] = []
        self._history = history
        self.missed_deadlines = 0
        # The deadline of the tick being run: its nominal time (the step's `now` is at or after
        # it, by up to a period after a miss), for clocks that must keep the nominal pace.
        self.tick_deadline: float | None = None
        self.error: BaseException | None = None
        self._on_error = on_error

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        deadline = self._clock()
        try:
            while not self._stop.is_set():
                now = self._clock()
                if deadline - now > 0:
                    self._stop.wait(deadline - now)
                    if self._stop.is_set():
                        break
                    now = self._clock()
                if now - deadline >= self.period_s:
                    skipped = int((now - deadline) // self.period_s)
                    self.missed_deadlines += skipped
                    deadline += skipped * self.period_s
                self.tick_deadline = deadline
                self._step(now)
                if len(self._ticks) < self._history:
                    self._ticks.append(now)
                    self._step_durations.append(self._clock() - now)
                deadline += self.period_s
        except Exception as error:  # the loop ends; its owner decides what that means
            self.error = error
            if self._on_error is not None:
                self._on_error(error)

    def stats(self) -> dict[str, float | int]:
        """Tick period statistics so far: median, p99 and max absolute error against the
        nominal period (ms), missed deadlines, and how long the step itself took (ms)."""
        ticks = np.asarray(self._ticks)
        if ticks.size < 2:
            return {"ticks": int(ticks.size), "missed_deadlines": self.missed_deadlines}
        periods = np.diff(ticks)
        errors = np.abs(periods - self.period_s) * 1e3
        steps = np.asarray(self._step_durations) * 1e3
        return {
            "ticks": int(ticks.size),
            "step_median_ms": round(float(np.median(steps)), 3),
            "step_p99_ms": round(float(np.percentile(steps, 99)), 3),
            "period_median_ms": round(float(np.median(periods) * 1e3), 3),
            "period_error_p99_ms": round(float(np.percentile(errors, 99)), 3),
            "period_error_max_ms": round(float(errors.max()), 3),
            "missed_deadlines": self.missed_deadlines,
        }
