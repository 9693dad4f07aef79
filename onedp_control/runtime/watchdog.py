"""The latency budget: rules that decide when the robot must hold, and when it may go on.

Five measured quantities, each with a limit from the task's YAML config:

- `observation_age_ms`: now minus the stamp of the newest camera frame (the oldest of the
  cameras' newest frames): a stalled or vanished camera;
- `camera_skew_ms`: between the two cameras' newest frames: one camera lagging the other;
- `inference_ms`: how long the policy took for its last chunk;
- `chunk_age_ms`: now minus the observation stamp of the newest chunk: the policy has stopped
  producing, or its chunks arrive too late to be useful;
- `command_period_ms`: time since the robot loop's last command: the command stream stalled;
- `robot_state_age_ms`: now minus the stamp of the newest robot state.

A quantity that has never been measured (no chunk yet, no frame yet) is a breach too: the
controller starts holding and begins to move only when every quantity is within its limit. An
age below -FUTURE_TOLERANCE_MS (a stamp from the future: the clock jumped) is a breach, and so
is any fault a node reports (a policy that refused its output, ...).
After a breach it resumes only when everything has been healthy for `recover_after_s` (mode
`auto`) or, in mode `command`, on an explicit resume request made while healthy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from onedp_control.errors import ConfigError

METRICS = (
    "observation_age_ms",
    "camera_skew_ms",
    "inference_ms",
    "chunk_age_ms",
    "command_period_ms",
    "robot_state_age_ms",
)
RECOVERY_MODES = ("auto", "command")
AGES = ("observation_age_ms", "chunk_age_ms", "command_period_ms", "robot_state_age_ms")
FUTURE_TOLERANCE_MS = 20.0


@dataclass(frozen=True)
class LatencyLimits:
    observation_age_ms: float = 150.0
    camera_skew_ms: float = 75.0
    inference_ms: float = 100.0
    chunk_age_ms: float = 1000.0
    command_period_ms: float = 100.0
    robot_state_age_ms: float = 150.0
    recover_after_s: float = 1.0
    recovery: str = "auto"

    def validate(self, where: str) -> None:
        for name in METRICS:
            value = getattr(self, name)
            if not 0 < value <= 10_000:
                raise ConfigError(f"{where}: {name} must be in (0, 10000] ms, got {value}")
        if not 0 <= self.recover_after_s <= 60:
            raise ConfigError(
                f"{where}: recover_after_s must be in [0, 60], got {self.recover_after_s}"
            )
        if self.recovery not in RECOVERY_MODES:
            raise ConfigError(
                f"{where}: recovery must be one of {', '.join(RECOVERY_MODES)}, "
                f"got '{self.recovery}'"
            )


@dataclass(frozen=True)
class Breach:
    metric: str
    value: float | None  # None: never measured
    limit: float

    def describe(self) -> str:
        if self.value is None:
            return f"{self.metric}: no measurement yet"
        if self.value < 0:
            return f"{self.metric} {self.value:.1f}: a stamp from the future (clock jump?)"
        return f"{self.metric} {self.value:.1f} > {self.limit:.1f}"


@dataclass(frozen=True)
class Fault:
    """A fault a node reported (not a measured quantity)."""

    source: str
    message: str

    def describe(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(frozen=True)
class WatchdogStatus:
    holding: bool
    breaches: tuple[Breach | Fault, ...]
    reason: str  # why it holds (the first breach, or "recovering", or "waiting for resume")
    healthy_for_s: float


class Watchdog:
    def __init__(self, limits: LatencyLimits) -> None:
        limits.validate("watchdog")
        self.limits = limits
        self._holding = True
        self._healthy_since: float | None = None
        self._resume_requested = False
        self._lock = threading.Lock()

    def request_resume(self) -> None:
        """Recovery mode `command`: resume at the next evaluation if healthy then."""
        with self._lock:
            self._resume_requested = True

    def breaches(self, metrics: dict[str, float | None]) -> tuple[Breach, ...]:
        found = []
        for name in METRICS:
            value, limit = metrics.get(name), getattr(self.limits, name)
            too_new = name in AGES and value is not None and value < -FUTURE_TOLERANCE_MS
            if value is None or not value <= limit or too_new:
                found.append(Breach(name, value, limit))
        return tuple(found)

    def evaluate(
        self, metrics: dict[str, float | None], now: float, faults: tuple[Fault, ...] = ()
    ) -> WatchdogStatus:
        breaches = (*faults, *self.breaches(metrics))
        with self._lock:
            if breaches:
                self._holding = True
                self._healthy_since = None
                self._resume_requested = False
                return WatchdogStatus(True, breaches, breaches[0].describe(), 0.0)
            if self._healthy_since is None:
                self._healthy_since = now
            healthy_for = now - self._healthy_since
            if self._holding:
                if self.limits.recovery == "auto" and healthy_for >= self.limits.recover_after_s:
                    self._holding = False
                elif self.limits.recovery == "command" and self._resume_requested:
                    self._holding = False
                    self._resume_requested = False
            if not self._holding:
                return WatchdogStatus(False, (), "", healthy_for)
            waiting = "recovering" if self.limits.recovery == "auto" else "waiting for resume"
            return WatchdogStatus(True, (), waiting, healthy_for)
