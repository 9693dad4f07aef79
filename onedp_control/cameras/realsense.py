"""RealSense colour cameras (the front D415, the wrist D435) as small RGB frames with host stamps.

How frames flow on hardware: `RealSenseCameras(configs)` finds each camera's serial among
`rs.context().query_devices()`, and `start()` starts one `rs.pipeline` per camera
(`config.enable_device(serial)`, colour stream at the native profile in rgb8). Each pipeline syncs
its one stream and keeps only the newest frameset; `poll_frames()` / `wait_frames()` take it, copy
the image out of the SDK's buffer while resizing it to `output_size` (`cv2.INTER_AREA`), and turn
the frame's millisecond timestamp into seconds since the epoch.

How the test (and replay) path differs: a pipeline opens only devices that a context enumerates,
and pyrealsense2 2.59 never enumerates an `rs.software_device` (not even after `add_to(context)`),
so `RealSenseCameras(configs, devices=...)` streams the given devices one level down: it opens the
colour sensor with the configured profile and starts it into an `rs.syncer`, one per camera, which
is what a pipeline does inside. The serial look-up, the profile check and everything from the
frameset on are the same code on both paths; what the tests do not run is `rs.pipeline` itself
(its config resolution, device hub and internal syncer) and the switch to global time, an option
that software sensors do not have.

Timestamps, by `frame.get_frame_timestamp_domain()`:
- `global_time` (the default on D400 colour sensors; `start()` switches it on where the sensor
  offers the option): the device clock mapped by the SDK onto the host's wall clock, milliseconds
  since the epoch, so seconds = ms / 1000 and the two cameras' stamps are comparable.
- `system_time`: the host's wall clock when the frame arrived, milliseconds since the epoch; the
  same conversion, but the stamp is late by the frame's transfer time.
- `hardware_clock`: the device's own clock, milliseconds from an arbitrary origin. The offset to
  the host clock is estimated once per `start()` from the first frame against `time.time()`, so it
  includes that frame's transfer latency and corrects neither clock drift nor the counter wrapping
  around: keep global time on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import cv2
import numpy as np
import pyrealsense2 as rs


@dataclass(frozen=True)
class CameraFrame:
    camera: str
    rgb: np.ndarray  # (height, width, 3) uint8 RGB at the camera's output_size
    stamp: float  # seconds since the epoch, from the frame's timestamp (see the module docstring)
    frame_number: int


@dataclass(frozen=True)
class CameraConfig:
    name: str
    serial: str
    width: int = 640  # a native colour profile of the camera ...
    height: int = 480
    fps: int = 30
    output_size: tuple[int, int] = (120, 160)  # ... resized to this (height, width)


class CameraError(RuntimeError):
    pass


class _FrameSource(Protocol):
    """One camera's stream: started, stopped, and read as framesets like `rs.pipeline`."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poll(self) -> rs.composite_frame: ...

    def wait(self, timeout_ms: int) -> tuple[bool, rs.composite_frame]: ...


class _PipelineSource:
    """The hardware path: the pipeline opens the device by serial and syncs its colour stream."""

    def __init__(self, camera: CameraConfig, device: rs.device) -> None:
        # Checked now, so that a missing profile fails here naming it, not in start() as the
        # SDK's "couldn't resolve requests".
        _colour_sensor(device, camera)
        self._camera = camera
        self._config = rs.config()
        self._config.enable_device(camera.serial)
        self._config.enable_stream(
            rs.stream.color, camera.width, camera.height, rs.format.rgb8, camera.fps
        )
        self._pipeline = rs.pipeline()

    def start(self) -> None:
        profile = self._pipeline.start(self._config)
        # Global time is a host-side option of the device object the pipeline made, so it is set
        # on that object, after start.
        sensor, _ = _colour_sensor(profile.get_device(), self._camera)
        _enable_global_time(sensor)

    def stop(self) -> None:
        self._pipeline.stop()

    def poll(self) -> rs.composite_frame:
        return self._pipeline.poll_for_frames()

    def wait(self, timeout_ms: int) -> tuple[bool, rs.composite_frame]:
        return self._pipeline.try_wait_for_frames(timeout_ms)


class _SensorSource:
    """The path for devices a pipeline cannot open: the sensor streams into a syncer directly."""

    def __init__(self, camera: CameraConfig, device: rs.device) -> None:
        self._sensor, self._profile = _colour_sensor(device, camera)
        self._syncer = rs.syncer()

    def start(self) -> None:
        _enable_global_time(self._sensor)
        # A fresh syncer, so that no frameset from before a stop() comes out after a restart.
        self._syncer = rs.syncer()
        self._sensor.open(self._profile)
        self._sensor.start(self._syncer)

    def stop(self) -> None:
        self._sensor.stop()
        self._sensor.close()

    def poll(self) -> rs.composite_frame:
        return self._syncer.poll_for_frames()

    def wait(self, timeout_ms: int) -> tuple[bool, rs.composite_frame]:
        return self._syncer.try_wait_for_frames(timeout_ms)


class RealSenseCameras:
    """The configured cameras, streamed from `start()` to `stop()` (or as a context manager).

    Not thread-safe: start, read and stop from one thread. A camera node that publishes each
    camera's frames as they come calls `poll_frames()` from a timer at twice the frame rate or
    more (it never blocks), or `wait_frames()` in a loop on a thread of its own.
    """

    def __init__(
        self, configs: Sequence[CameraConfig], devices: Iterable[rs.device] | None = None
    ) -> None:
        """Look every camera up by serial; `CameraError` names a serial that is not there.

        `devices=None` streams the connected cameras through `rs.pipeline`s. Given devices
        (`SoftwareCameraRig.devices`, or devices from a context) are streamed sensor-level.
        """
        names = [camera.name for camera in configs]
        if len(set(names)) != len(names):
            raise CameraError(f"camera names must be distinct, got {names}")
        found = list(rs.context().query_devices() if devices is None else devices)
        self._configs = {camera.name: camera for camera in configs}
        self._sources: dict[str, _FrameSource] = {}
        for camera in configs:
            device = _find_device(camera, found)
            self._sources[camera.name] = (
                _PipelineSource(camera, device)
                if devices is None
                else _SensorSource(camera, device)
            )
        self._hardware_clock_offsets_s: dict[str, float] = {}
        self._streaming = False

    def start(self) -> None:
        if self._streaming:
            raise CameraError("the cameras are already streaming")
        started: list[_FrameSource] = []
        for name, source in self._sources.items():
            try:
                source.start()
            except RuntimeError as error:
                for started_source in started:
                    started_source.stop()
                raise CameraError(f"{self._describe(name)} did not start: {error}") from error
            started.append(source)
        self._hardware_clock_offsets_s.clear()
        self._streaming = True

    def stop(self) -> None:
        """Stop streaming; a no-op when not streaming, so that it can sit in a `finally`."""
        if not self._streaming:
            return
        self._streaming = False
        for source in self._sources.values():
            source.stop()

    def __enter__(self) -> RealSenseCameras:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def poll_frames(self) -> dict[str, CameraFrame]:
        """The newest frame of each camera that has one not yet returned; never blocks.

        A camera that delivered several frames since the last call gives only its newest one
        (the SDK drops the others), so each camera's frames come out in order, one per call.
        """
        self._check_streaming()
        frames = {}
        for name, source in self._sources.items():
            frameset = source.poll()
            if frameset:  # an empty frameset: nothing new
                frames[name] = self._camera_frame(name, frameset)
        return frames

    def wait_frames(self, timeout_s: float) -> dict[str, CameraFrame]:
        """One frame from every camera: the newest not yet returned, waiting where there is none.

        Blocks the calling thread for up to `timeout_s` in all; a camera with no frame by then is
        a `CameraError` naming it. The frames are each camera's newest, not matched by stamp:
        compare their stamps to pair them.
        """
        self._check_streaming()
        deadline = time.monotonic() + timeout_s
        frames = {}
        for name, source in self._sources.items():
            remaining_ms = max(0, round((deadline - time.monotonic()) * 1000))
            arrived, frameset = source.wait(remaining_ms)
            if not arrived:
                raise CameraError(f"{self._describe(name)} gave no frame within {timeout_s} s")
            frames[name] = self._camera_frame(name, frameset)
        return frames

    def _check_streaming(self) -> None:
        if not self._streaming:
            raise CameraError("the cameras are not streaming: call start() first")

    def _describe(self, name: str) -> str:
        return f"camera {name!r} (serial {self._configs[name].serial})"

    def _camera_frame(self, name: str, frameset: rs.composite_frame) -> CameraFrame:
        colour = frameset.get_color_frame()
        height, width = self._configs[name].output_size
        # The array views the SDK's buffer; cv2.resize writes a new array, so the frame (and its
        # buffer, which the SDK recycles) can go as soon as this returns.
        rgb = cv2.resize(
            np.asanyarray(colour.get_data()), (width, height), interpolation=cv2.INTER_AREA
        )
        return CameraFrame(
            camera=name,
            rgb=rgb,
            stamp=self._stamp_s(name, colour),
            frame_number=colour.get_frame_number(),
        )

    def _stamp_s(self, name: str, frame: rs.frame) -> float:
        stamp_s = frame.get_timestamp() / 1000
        if frame.get_frame_timestamp_domain() != rs.timestamp_domain.hardware_clock:
            return stamp_s  # global_time and system_time: already host wall-clock time
        if name not in self._hardware_clock_offsets_s:
            self._hardware_clock_offsets_s[name] = time.time() - stamp_s
        return stamp_s + self._hardware_clock_offsets_s[name]


def _find_device(camera: CameraConfig, devices: Sequence[rs.device]) -> rs.device:
    serials = [device.get_info(rs.camera_info.serial_number) for device in devices]
    if camera.serial not in serials:
        raise CameraError(
            f"camera {camera.name!r}: no RealSense device with serial {camera.serial}; "
            f"found: {', '.join(serials) or 'none'}"
        )
    return devices[serials.index(camera.serial)]


def _colour_sensor(
    device: rs.device, camera: CameraConfig
) -> tuple[rs.sensor, rs.video_stream_profile]:
    """The sensor offering the camera's colour profile in rgb8, and that profile.

    Found by profile rather than with `first_color_sensor()`, which software sensors do not answer.
    """
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() != rs.stream.color or profile.format() != rs.format.rgb8:
                continue
            video = profile.as_video_stream_profile()
            if (video.width(), video.height(), video.fps()) == (
                camera.width,
                camera.height,
                camera.fps,
            ):
                return sensor, video
    raise CameraError(
        f"camera {camera.name!r} (serial {camera.serial}) has no colour profile "
        f"{camera.width}x{camera.height} rgb8 at {camera.fps} fps"
    )


def _enable_global_time(sensor: rs.sensor) -> None:
    if sensor.supports(rs.option.global_time_enabled):
        sensor.set_option(rs.option.global_time_enabled, 1)
