"""Camera node: the front D415 and the wrist D435, by serial number, as realsense-ros style
topics (`/camera/<name>/color/image_raw` + `camera_info`, sensor-data QoS).

A lifecycle node: configure finds both serials (a missing one fails the transition, naming it
and the serials present), activate starts streaming and a thread that polls at twice the frame
rate, publishing every new frame resized to 120x160 and stamped with its (global-time) hardware
timestamp; deactivate stops the streams. `source: software` feeds two SDK software devices with
a moving test pattern instead, through the same code from the SDK on (onedp_control/cameras).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo as CameraInfoMessage
from sensor_msgs.msg import Image

from onedp_control.cameras.realsense import CameraConfig, CameraError, CameraFrame, RealSenseCameras
from onedp_control.cameras.software import SoftwareCameraRig
from onedp_control.errors import ConfigError
from onedp_control.ros.common import (
    SENSOR_QOS,
    FaultSwitches,
    declare_params,
    image_message,
    spin_node,
    to_stamp,
)
from onedp_control.runtime.config import CameraParams
from onedp_control.runtime.graph import CAMERA_INFO_TOPIC, CAMERAS, IMAGE_TOPIC
from onedp_control.runtime.rate_loop import DeadlineLoop


def test_pattern(camera: str, frame_number: int, height: int, width: int) -> np.ndarray:
    """A bar that moves one column per frame (a stalled stream is visible), tinted per camera."""
    image = np.full((height, width, 3), 40 if camera == "front" else 90, dtype=np.uint8)
    column = frame_number % width
    image[:, column : column + 8] = (255, 200, 0)
    return image


class CameraNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("camera")
        self.params, shared = declare_params(self, CameraParams)
        self.faults = FaultSwitches(self, shared.fault_injection)
        self.cameras: RealSenseCameras | None = None
        self.calibration: dict[str, CameraInfoMessage] = {}
        self.rig: SoftwareCameraRig | None = None
        self.poll_loop: DeadlineLoop | None = None
        self.feed_loop: DeadlineLoop | None = None
        self._frame_number = 0
        self._lock = threading.Lock()
        self.images = {
            c: self.create_publisher(Image, IMAGE_TOPIC.format(camera=c), SENSOR_QOS)
            for c in CAMERAS
        }
        self.infos = {
            c: self.create_publisher(
                CameraInfoMessage, CAMERA_INFO_TOPIC.format(camera=c), SENSOR_QOS
            )
            for c in CAMERAS
        }

    def configs(self) -> list[CameraConfig]:
        p = self.params
        serials = {"front": p.front_serial, "wrist": p.wrist_serial}
        if p.source == "software":
            serials = {name: serial or f"software-{name}" for name, serial in serials.items()}
        return [
            CameraConfig(
                name=name,
                serial=serials[name],
                width=p.width,
                height=p.height,
                fps=p.fps,
                output_size=(p.image_height, p.image_width),
            )
            for name in CAMERAS
        ]

    def load_calibration(self, configs: list[CameraConfig]) -> dict[str, CameraInfoMessage]:
        """Each camera's CameraInfo from `calibration_dir/<serial>.yaml`, scaled to the published
        image size; ConfigError naming the file when one is missing or malformed."""
        from onedp_control.calibration.intrinsics import load_camera_info

        infos = {}
        for config in configs:
            path = Path(self.params.calibration_dir) / f"{config.serial}.yaml"
            if not path.is_file():
                raise ConfigError(f"{path}: no calibration for camera '{config.name}'")
            calibration = load_camera_info(path)
            if (calibration.width, calibration.height) != (config.width, config.height):
                raise ConfigError(
                    f"{path}: calibrated at {calibration.width}x{calibration.height}, the "
                    f"camera streams {config.width}x{config.height}"
                )
            scale = np.diag(
                [
                    self.params.image_width / config.width,
                    self.params.image_height / config.height,
                    1.0,
                ]
            )
            matrix = scale @ calibration.camera_matrix
            info = CameraInfoMessage()
            info.height, info.width = self.params.image_height, self.params.image_width
            info.distortion_model = calibration.distortion_model
            info.d = [float(v) for v in calibration.distortion_coefficients]
            info.k = [float(v) for v in matrix.ravel()]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = [float(v) for v in np.hstack([matrix, np.zeros((3, 1))]).ravel()]
            infos[config.name] = info
        return infos

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        configs = self.configs()
        missing = [c.name for c in configs if not c.serial]
        if missing:
            self.get_logger().error(f"no serial for camera(s) {missing}: set <name>_serial")
            return TransitionCallbackReturn.FAILURE
        try:
            self.calibration = self.load_calibration(configs) if self.params.calibration_dir else {}
        except ConfigError as error:
            self.get_logger().error(str(error))
            return TransitionCallbackReturn.FAILURE
        try:
            if self.params.source == "software":
                self.rig = SoftwareCameraRig(configs)
                self.cameras = RealSenseCameras(configs, devices=self.rig.devices)
            else:
                self.cameras = RealSenseCameras(configs)
        except CameraError as error:
            self.get_logger().error(str(error))
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.cameras.start()
        except CameraError as error:
            self.get_logger().error(str(error))
            return TransitionCallbackReturn.FAILURE
        period = 1.0 / (2 * self.params.fps)
        self.poll_loop = DeadlineLoop(
            period, self._poll, "camera-poll", time.time, on_error=self._on_error
        )
        self.poll_loop.start()
        if self.rig is not None:
            self.feed_loop = DeadlineLoop(
                1.0 / self.params.fps, self._feed, "camera-feed", time.time, on_error=self._on_error
            )
            self.feed_loop.start()
        return super().on_activate(state)

    def _feed(self, now: float) -> None:
        self._frame_number += 1
        for camera in CAMERAS:
            rgb = test_pattern(camera, self._frame_number, self.params.height, self.params.width)
            self.rig.inject(camera, rgb, now, self._frame_number)

    def _poll(self, now: float) -> None:
        with self._lock:
            frames = self.cameras.poll_frames() if self.cameras is not None else {}
        for frame in frames.values():
            self._publish(frame)

    def _publish(self, frame: CameraFrame) -> None:
        # Fault injection (`onedp faults`): a camera gone, a camera lagging, a clock jump.
        if frame.camera == self.faults.get("drop"):
            return
        stamp = frame.stamp + float(self.faults.get("clock_jump_s", 0.0))
        if frame.camera == "wrist":
            stamp -= float(self.faults.get("wrist_lag_s", 0.0))
        self.images[frame.camera].publish(image_message(frame.rgb, stamp, f"{frame.camera}_camera"))
        info = copy.deepcopy(self.calibration.get(frame.camera)) or CameraInfoMessage()
        info.header.stamp = to_stamp(stamp)
        info.header.frame_id = f"{frame.camera}_camera"
        info.height, info.width = frame.rgb.shape[:2]
        self.infos[frame.camera].publish(info)

    def _on_error(self, error: Exception) -> None:
        self.get_logger().fatal(f"camera loop stopped: {type(error).__name__}: {error}")

    def _stop(self) -> None:
        for loop in (self.feed_loop, self.poll_loop):
            if loop is not None:
                loop.stop(timeout=2.0)
        self.feed_loop = self.poll_loop = None
        with self._lock:
            if self.cameras is not None:
                self.cameras.stop()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        self._stop()
        self.cameras = None
        self.rig = None


def main() -> int:
    return spin_node(CameraNode)


if __name__ == "__main__":
    raise SystemExit(main())
