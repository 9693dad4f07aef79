"""One tick of the command stream: what the robot is told to do now.

Called by the robot node's (and the sim node's) deadline loop at the control rate. The robot
streams the chunk's target for the current time only while nothing is wrong; otherwise it
holds, and says why:

- the robot reported an error (until it is recovered);
- the watchdog asks for a hold, or has been silent for `watchdog_timeout_s` (a dead watchdog
  is a fault, not a permission);
- there is no robot state to check the target against;
- there is no chunk left to execute (none yet, or the last one ran out);
- the safety filter rejects the target (NaN, a degenerate rotation).

Every target passes the safety filter (runtime/safety.py) before it reaches the robot; the first
one after a hold is limited relative to the measured pose.

Holding starts with one `robot.hold()` and clears the chunk: a chunk computed before the hold
is never resumed, only one computed from an observation taken after the hold began.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from onedp_control.geometry import matrix_from_rot6d
from onedp_control.robots.base import Robot, RobotError, RobotState
from onedp_control.runtime.chunks import ChunkScheduler
from onedp_control.runtime.safety import SafetyFilter


@dataclass(frozen=True)
class Command:
    stamp: float
    streaming: bool  # False: holding
    action: np.ndarray | None  # the 10-D target sent (after the safety filter) while streaming
    reason: str  # why it holds ("" while streaming)
    clamped: tuple[str, ...] = ()  # what the safety filter changed in this target


class CommandLoop:
    def __init__(
        self,
        robot: Robot,
        scheduler: ChunkScheduler,
        safety: SafetyFilter,
        watchdog_timeout_s: float,
    ) -> None:
        self.robot = robot
        self.scheduler = scheduler
        self.safety = safety
        self.watchdog_timeout_s = watchdog_timeout_s
        self._lock = threading.Lock()
        self._hold_requested = True
        self._watchdog_stamp: float | None = None
        self._robot_error: str | None = None
        self._streaming = False
        self.last_command: Command | None = None

    def on_watchdog(self, hold: bool, now: float) -> None:
        with self._lock:
            self._hold_requested = hold
            self._watchdog_stamp = now

    def on_robot_error(self, error: str | None) -> None:
        with self._lock:
            self._robot_error = error

    def _hold_reason(self, now: float) -> str:
        with self._lock:
            if self._robot_error is not None:
                return f"robot error: {self._robot_error}"
            if self._watchdog_stamp is None or now - self._watchdog_stamp > self.watchdog_timeout_s:
                return "watchdog silent"
            if self._hold_requested:
                return "watchdog hold"
        return ""

    def tick(self, now: float, state: RobotState | None) -> Command:
        """`state`: the robot's state read this tick (None when it could not be read)."""
        reason = self._hold_reason(now)
        if not reason and state is None:
            reason = "no robot state"
        action = None if reason else self.scheduler.target_at(now)
        if not reason and action is None:
            reason = "no chunk to execute"
        clamped: tuple[str, ...] = ()
        if not reason:
            if not self._streaming:
                self.safety.reset(state.ee_pos, state.ee_rot)
            filtered = self.safety.filter(action)
            action, clamped = filtered.action, filtered.reasons
            if action is None:
                reason = f"unsafe target: {clamped[0]}"
        if not reason:
            try:
                self.robot.send_target(action[:3], matrix_from_rot6d(action[3:9]), float(action[9]))
            except RobotError as error:
                self.on_robot_error(str(error))
                reason = f"robot error: {error}"
        if reason:
            command = self._hold(now, reason)
        else:
            self._streaming = True
            command = Command(now, True, action, "", clamped)
        self.last_command = command
        return command

    def _hold(self, now: float, reason: str) -> Command:
        if self._streaming:
            self._streaming = False
            self.scheduler.clear(not_before=now)
            try:
                self.robot.hold()
            except RobotError as error:
                self.on_robot_error(str(error))
        return Command(now, False, None, reason)
