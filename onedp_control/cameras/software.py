"""Software RealSense cameras: frames from numpy arrays, carried through the real SDK.

Each camera is an `rs.software_device` with the camera's serial number and one colour sensor
offering the camera's native profile in rgb8, so `RealSenseCameras(configs, devices=rig.devices)`
finds, opens and streams it as it does a connected camera (sensor-level: see
`onedp_control.cameras.realsense`). For tests, and for replaying recorded images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyrealsense2 as rs

from onedp_control.cameras.realsense import CameraConfig


class SoftwareCameraRig:
    def __init__(self, configs: Sequence[CameraConfig]) -> None:
        self._configs = {camera.name: camera for camera in configs}
        self._devices: list[rs.software_device] = []
        self._sensors: dict[str, rs.software_sensor] = {}
        self._profiles: dict[str, rs.video_stream_profile] = {}
        for camera in configs:
            device = rs.software_device()
            device.register_info(rs.camera_info.serial_number, camera.serial)
            device.register_info(rs.camera_info.name, f"Software RealSense ({camera.name})")
            sensor = device.add_sensor("RGB Camera")
            stream = rs.video_stream()
            stream.type = rs.stream.color
            stream.index = 0
            stream.uid = len(
                self._devices
            )  # unique per stream, as the SDK's own devices number them
            stream.width = camera.width
            stream.height = camera.height
            stream.fps = camera.fps
            stream.bpp = 3
            stream.fmt = rs.format.rgb8
            self._profiles[camera.name] = sensor.add_video_stream(
                stream, True
            ).as_video_stream_profile()
            self._sensors[camera.name] = sensor
            self._devices.append(device)

    @property
    def devices(self) -> list[rs.software_device]:
        return list(self._devices)

    def inject(
        self,
        camera: str,
        rgb: np.ndarray,
        stamp_s: float,
        frame_number: int,
        domain: rs.timestamp_domain = rs.timestamp_domain.global_time,
    ) -> None:
        """Hand one (height, width, 3) uint8 RGB image to the SDK as the camera's next frame.

        `stamp_s` is seconds since the epoch for global time (the SDK carries milliseconds), or
        seconds on the device clock for `hardware_clock`. The SDK copies the pixels. A frame
        injected while the camera is not streaming is dropped, as a real camera's would be.
        """
        config = self._configs[camera]
        if rgb.shape != (config.height, config.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"camera {camera!r} takes ({config.height}, {config.width}, 3) uint8 images, "
                f"got {rgb.shape} {rgb.dtype}"
            )
        frame = rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(rgb)  # the SDK copies the buffer as one block
        frame.stride = config.width * 3
        frame.bpp = 3
        frame.timestamp = stamp_s * 1000
        frame.domain = domain
        frame.frame_number = frame_number
        frame.profile = self._profiles[camera]
        self._sensors[camera].on_video_frame(frame)
