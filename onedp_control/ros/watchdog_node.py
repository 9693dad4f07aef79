"""Watchdog node: measures the latency budget and makes the robot hold when it is broken.

It listens to what every other node emits (camera info stamps, the policy's timing and chunks,
the robot's commands and measured pose), evaluates the rules of runtime/watchdog.py at
`rate_hz` in a deadline-paced thread, publishes the hold flag on /watchdog/hold at every tick
(the robot holds if it stops hearing it), and reports every quantity, its limit and the reason
for a hold on /diagnostics, at 5 Hz and whenever the hold state changes.
`/watchdog/resume` (std_srvs/Trigger) resumes in recovery mode `command`.
"""

from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from onedp_control.ros.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    SENSOR_QOS,
    declare_params,
    from_stamp,
    spin_node,
    to_stamp,
)
from onedp_control.runtime.config import WatchdogParams
from onedp_control.runtime.graph import (
    CAMERA_INFO_TOPIC,
    CAMERAS,
    CHUNK_TOPIC,
    COMMAND_TOPIC,
    DIAGNOSTICS_TOPIC,
    EE_POSE_TOPIC,
    HOLD_TOPIC,
    POLICY_TIMING_TOPIC,
    RESUME_SERVICE,
)
from onedp_control.runtime.rate_loop import DeadlineLoop
from onedp_control.runtime.watchdog import (
    METRICS,
    Fault,
    LatencyLimits,
    Watchdog,
    WatchdogStatus,
)

REPORT_PERIOD_S = 0.2


class WatchdogNode(Node):
    def __init__(self) -> None:
        super().__init__("watchdog")
        self.params, _ = declare_params(self, WatchdogParams)
        limits = {name: getattr(self.params, name) for name in LatencyLimits.__dataclass_fields__}
        self.watchdog = Watchdog(LatencyLimits(**limits))
        self._lock = threading.Lock()
        self._frames: dict[str, float] = {}
        self._inference_ms: float | None = None
        self._policy_fault: str | None = None
        self._chunk_stamp: float | None = None
        self._command_wall: float | None = None
        self._state_stamp: float | None = None
        self._holding: bool | None = None
        self._last_report = 0.0
        self.hold = self.create_publisher(Bool, HOLD_TOPIC, LATCHED_QOS)
        self.diagnostics = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, RELIABLE_QOS)
        for camera in CAMERAS:
            self.create_subscription(
                CameraInfo,
                CAMERA_INFO_TOPIC.format(camera=camera),
                lambda m, c=camera: self._set_frame(c, from_stamp(m.header.stamp)),
                SENSOR_QOS,
            )
        self.create_subscription(
            DiagnosticStatus,
            POLICY_TIMING_TOPIC,
            self._on_timing,
            RELIABLE_QOS,
        )
        self.create_subscription(JointTrajectory, CHUNK_TOPIC, self._on_chunk, RELIABLE_QOS)
        self.create_subscription(JointTrajectory, COMMAND_TOPIC, self._on_command, RELIABLE_QOS)
        self.create_subscription(PoseStamped, EE_POSE_TOPIC, self._on_state, SENSOR_QOS)
        self.create_service(Trigger, RESUME_SERVICE, self._on_resume)
        self.rate_loop = DeadlineLoop(1.0 / self.params.rate_hz, self._tick, "watchdog", time.time)
        self.rate_loop.start()

    def _set_frame(self, camera: str, stamp: float) -> None:
        with self._lock:
            self._frames[camera] = stamp

    def _on_timing(self, message: DiagnosticStatus) -> None:
        values = {item.key: item.value for item in message.values}
        with self._lock:
            if message.level == DiagnosticStatus.ERROR:
                self._policy_fault = message.message
                return
            self._policy_fault = None
            self._inference_ms = float(values["inference_ms"])

    def _on_chunk(self, message: JointTrajectory) -> None:
        with self._lock:
            self._chunk_stamp = from_stamp(message.header.stamp)

    def _on_command(self, message: JointTrajectory) -> None:
        # Received time, not the stamp: a stalled command stream is what this measures.
        with self._lock:
            self._command_wall = time.time()

    def _on_state(self, message: PoseStamped) -> None:
        with self._lock:
            self._state_stamp = from_stamp(message.header.stamp)

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response):
        self.watchdog.request_resume()
        response.success, response.message = True, "resume requested"
        return response

    def metrics(self, now: float) -> dict[str, float | None]:
        def age(stamp: float | None) -> float | None:
            return None if stamp is None else (now - stamp) * 1e3

        with self._lock:
            frames = [self._frames.get(camera) for camera in CAMERAS]
            oldest = None if None in frames else min(frames)
            skew = None if None in frames else (max(frames) - min(frames)) * 1e3
            return {
                "observation_age_ms": age(oldest),
                "camera_skew_ms": skew,
                "inference_ms": self._inference_ms,
                "chunk_age_ms": age(self._chunk_stamp),
                "command_period_ms": age(self._command_wall),
                "robot_state_age_ms": age(self._state_stamp),
            }

    def _tick(self, now: float) -> None:
        metrics = self.metrics(now)
        with self._lock:
            faults = () if self._policy_fault is None else (Fault("policy", self._policy_fault),)
        status = self.watchdog.evaluate(metrics, now, faults)
        self.hold.publish(Bool(data=status.holding))
        changed = status.holding != self._holding
        if changed and status.holding:
            self.get_logger().warning(f"hold: {status.reason}")
        elif changed:
            self.get_logger().info("resume: every latency within its limit")
        if changed or now - self._last_report >= REPORT_PERIOD_S:
            self._report(status, metrics, now)
            self._last_report = now
        self._holding = status.holding

    def _report(self, status: WatchdogStatus, metrics: dict, now: float) -> None:
        item = DiagnosticStatus(name="onedp watchdog", hardware_id="onedp_control")
        item.level = (
            DiagnosticStatus.ERROR
            if status.breaches
            else (DiagnosticStatus.WARN if status.holding else DiagnosticStatus.OK)
        )
        item.message = f"holding: {status.reason}" if status.holding else "streaming"
        item.values = [KeyValue(key="holding", value=str(status.holding).lower())]
        for name in METRICS:
            value = metrics[name]
            shown = "none" if value is None else f"{value:.1f}"
            item.values.append(KeyValue(key=name, value=shown))
            item.values.append(KeyValue(key=f"{name}_limit", value=f"{getattr(self.params, name)}"))
        item.values.append(KeyValue(key="healthy_for_s", value=f"{status.healthy_for_s:.2f}"))
        array = DiagnosticArray(status=[item])
        array.header.stamp = to_stamp(now)
        self.diagnostics.publish(array)

    def close(self) -> None:
        self.rate_loop.stop(timeout=2.0)


def main() -> int:
    return spin_node(WatchdogNode)


if __name__ == "__main__":
    raise SystemExit(main())
