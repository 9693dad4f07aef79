"""Calibration node: hand-eye calibration from the running cell, over ROS 2 services.

Beside the camera and robot nodes (or the sim), it keeps the newest image and CameraInfo of one
camera (`camera`: wrist, eye-in-hand; front, eye-to-hand) and the recent measured poses on
/robot/ee_pose. std_srvs/Trigger services:

- /calibration/capture: the newest image paired with the pose measured nearest its stamp,
  kept when the ChArUco board gives a pose (the answer says how many corners, or why not);
- /calibration/solve: solves from the kept samples with the published intrinsics, writes the
  samples directory and the hand-eye YAML (the files `onedp calibrate handeye` reads and
  writes) and answers with the residuals, or refuses naming why (too few or degenerate poses,
  residuals over the limits); nothing is written then;
- /calibration/reset: drops the kept samples.

The robot is moved by whoever runs the cell (teleop, hand guiding); this node never commands
it. Calibrate from images at the camera's native size: start the camera node with
`image_height`/`image_width` at its profile (e.g. 480/640), not the policy's 120x160.
Core: calibration/session.py.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo as CameraInfoMessage
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from onedp_control.calibration.handeye import make_transform
from onedp_control.calibration.intrinsics import CameraInfo
from onedp_control.calibration.session import CalibrationParams, CalibrationSession
from onedp_control.errors import ConfigError
from onedp_control.ros.common import (
    SENSOR_QOS,
    declare_params,
    from_stamp,
    image_array,
    pose_from_message,
    spin_node,
)
from onedp_control.runtime.graph import (
    CALIBRATION_CAPTURE_SERVICE,
    CALIBRATION_RESET_SERVICE,
    CALIBRATION_SOLVE_SERVICE,
    CAMERA_INFO_TOPIC,
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
)

POSE_HISTORY = 200  # measured poses kept to pair with an image (10 s at 20 Hz)


def camera_info_from_message(message: CameraInfoMessage, serial: str) -> CameraInfo:
    return CameraInfo(
        camera_name=message.header.frame_id,
        serial=serial,
        width=message.width,
        height=message.height,
        camera_matrix=np.asarray(message.k, dtype=np.float64).reshape(3, 3),
        distortion_model=message.distortion_model,
        distortion_coefficients=np.asarray(message.d, dtype=np.float64),
        source=f"{CAMERA_INFO_TOPIC} ({message.header.frame_id})",
    )


class CalibrationNode(Node):
    def __init__(self) -> None:
        super().__init__("calibration")
        params, _ = declare_params(self, CalibrationParams)
        self.declare_parameter("camera_serial", "")
        params.validate(f"node {self.get_name()}")
        self.session = CalibrationSession(params, self.get_parameter("camera_serial").value)
        self._lock = threading.Lock()
        self._image: tuple[float, np.ndarray] | None = None
        self._info: CameraInfoMessage | None = None
        self._poses: deque[tuple[float, np.ndarray]] = deque(maxlen=POSE_HISTORY)
        camera = params.camera
        self.create_subscription(
            Image, IMAGE_TOPIC.format(camera=camera), self._on_image, SENSOR_QOS
        )
        self.create_subscription(
            CameraInfoMessage, CAMERA_INFO_TOPIC.format(camera=camera), self._on_info, SENSOR_QOS
        )
        self.create_subscription(PoseStamped, EE_POSE_TOPIC, self._on_pose, SENSOR_QOS)
        self.create_service(Trigger, CALIBRATION_CAPTURE_SERVICE, self._capture)
        self.create_service(Trigger, CALIBRATION_SOLVE_SERVICE, self._solve)
        self.create_service(Trigger, CALIBRATION_RESET_SERVICE, self._reset)
        self.get_logger().info(
            f"{params.mode} calibration of the {camera} camera; "
            f"{CALIBRATION_CAPTURE_SERVICE} at each pose, then {CALIBRATION_SOLVE_SERVICE}"
        )

    def _on_image(self, message: Image) -> None:
        with self._lock:
            self._image = (from_stamp(message.header.stamp), image_array(message))

    def _on_info(self, message: CameraInfoMessage) -> None:
        with self._lock:
            self._info = message

    def _on_pose(self, message: PoseStamped) -> None:
        position, rotation = pose_from_message(message)
        pose = make_transform(rotation, position)
        with self._lock:
            self._poses.append((from_stamp(message.header.stamp), pose))

    def _capture(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            image, poses = self._image, list(self._poses)
        if image is None:
            response.success, response.message = False, "no image received yet"
            return response
        # The answer names the image it used: the newest when the request came.
        try:
            kept = self.session.add(image[1], image[0], poses)
            response.success, response.message = True, f"image {image[0]:.3f}: {kept}"
        except ConfigError as error:
            response.success, response.message = False, f"image {image[0]:.3f}: {error}"
        return response

    def _solve(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            info = self._info
        if info is None:
            response.success, response.message = False, "no camera_info received yet"
            return response
        try:
            camera = camera_info_from_message(info, self.session.camera_serial)
            result, samples_dir, out = self.session.solve(camera)
        except (ConfigError, OSError) as error:
            response.success, response.message = False, str(error)
            return response
        residuals = result.residuals
        response.success = True
        response.message = (
            f"wrote {out} and {samples_dir}: {residuals.samples} samples, board residuals RMS "
            f"{residuals.translation_rms_mm:.2f} mm / {residuals.rotation_rms_deg:.2f} deg"
        )
        self.get_logger().info(response.message)
        return response

    def _reset(self, request: Trigger.Request, response: Trigger.Response):
        count = self.session.reset()
        response.success, response.message = True, f"dropped {count} samples"
        return response

    def close(self) -> None:
        """Nothing runs outside the executor's callbacks."""


def main() -> int:
    return spin_node(CalibrationNode)


if __name__ == "__main__":
    raise SystemExit(main())
