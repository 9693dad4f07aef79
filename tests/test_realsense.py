"""RealSenseCameras on software cameras: injected frames go through the real SDK (software
devices, sensors, syncers, frames), only no USB camera is involved."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyrealsense2 as rs
import pytest

from onedp_control.cameras.realsense import CameraConfig, CameraError, RealSenseCameras
from onedp_control.cameras.software import SoftwareCameraRig

FRONT = CameraConfig("front", "000000000415")
WRIST = CameraConfig("wrist", "000000000435")
TIMEOUT_S = 1.0

# Each camera's image: four quadrants of distinct colours, so that a resize to exactly a quarter
# keeps every quadrant one solid colour, and swapped channels or a flipped image show.
QUADRANT_COLOURS = {
    "front": [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)]],
    "wrist": [[(10, 20, 30), (40, 50, 60)], [(70, 80, 90), (200, 150, 100)]],
}


def quadrants(colours: list[list[tuple[int, int, int]]], height: int, width: int) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    for row, row_colours in enumerate(colours):
        for column, colour in enumerate(row_colours):
            rows = slice(row * height // 2, (row + 1) * height // 2)
            columns = slice(column * width // 2, (column + 1) * width // 2)
            image[rows, columns] = colour
    return image


def native_image(camera: str) -> np.ndarray:
    return quadrants(QUADRANT_COLOURS[camera], 480, 640)


@pytest.fixture
def rig() -> SoftwareCameraRig:
    return SoftwareCameraRig([FRONT, WRIST])


@pytest.fixture
def cameras(rig: SoftwareCameraRig) -> Iterator[RealSenseCameras]:
    with RealSenseCameras([FRONT, WRIST], devices=rig.devices) as cameras:
        yield cameras


def inject_both(rig: SoftwareCameraRig, stamp_s: float, frame_number: int) -> None:
    for camera in ("front", "wrist"):
        rig.inject(camera, native_image(camera), stamp_s, frame_number)


def test_frames_come_out_resized_with_colours_stamps_and_numbers(rig, cameras):
    start_s = time.time()
    previous_numbers = {"front": 0, "wrist": 0}
    for frame_number in (1, 2, 3):
        stamp_s = start_s + frame_number / 30
        inject_both(rig, stamp_s, frame_number)
        frames = cameras.wait_frames(TIMEOUT_S)
        assert set(frames) == {"front", "wrist"}
        for name, frame in frames.items():
            assert frame.camera == name
            assert frame.rgb.shape == (120, 160, 3)
            assert frame.rgb.dtype == np.uint8
            np.testing.assert_array_equal(frame.rgb, quadrants(QUADRANT_COLOURS[name], 120, 160))
            assert frame.stamp == pytest.approx(stamp_s, abs=1e-3)
            assert frame.frame_number == frame_number > previous_numbers[name]
            previous_numbers[name] = frame.frame_number


def test_frames_with_one_stamp_come_out_paired_newest_first(rig, cameras):
    start_s = time.time()
    rig.inject("front", native_image("front"), start_s, 1)
    # The wrist's frame of the same instant arrives after the front's next one: the front's
    # stale frame is dropped and the newest of each camera come out together.
    rig.inject("front", native_image("front"), start_s + 1 / 30, 2)
    rig.inject("wrist", native_image("wrist"), start_s + 1 / 30, 2)
    frames = cameras.wait_frames(TIMEOUT_S)
    assert (
        frames["front"].stamp == frames["wrist"].stamp == pytest.approx(start_s + 1 / 30, abs=1e-3)
    )
    assert frames["front"].frame_number == frames["wrist"].frame_number == 2


def test_poll_returns_only_cameras_with_a_new_frame(rig, cameras):
    assert cameras.poll_frames() == {}
    rig.inject("wrist", native_image("wrist"), time.time(), 1)
    deadline = time.monotonic() + TIMEOUT_S
    frames = cameras.poll_frames()
    while not frames and time.monotonic() < deadline:
        frames = cameras.poll_frames()
    assert list(frames) == ["wrist"]
    assert cameras.poll_frames() == {}


def test_a_camera_without_a_frame_times_out_naming_it(rig, cameras):
    rig.inject("front", native_image("front"), time.time(), 1)
    with pytest.raises(CameraError, match=r"'wrist' \(serial 000000000435\) gave no frame"):
        cameras.wait_frames(0.05)


def test_hardware_clock_stamps_are_offset_to_the_host_clock_from_the_first_frame(rig, cameras):
    device_start_s = 1234.5  # seconds on the device's clock: an arbitrary origin
    stamps = []
    for frame_number in (1, 2):
        for camera in ("front", "wrist"):
            rig.inject(
                camera,
                native_image(camera),
                device_start_s + frame_number / 30,
                frame_number,
                domain=rs.timestamp_domain.hardware_clock,
            )
        stamps.append(cameras.wait_frames(TIMEOUT_S)["front"].stamp)
    assert stamps[0] == pytest.approx(time.time(), abs=0.5)
    assert stamps[1] - stamps[0] == pytest.approx(1 / 30, abs=1e-3)


def test_stop_and_restart(rig, cameras):
    inject_both(rig, time.time(), 1)
    cameras.wait_frames(TIMEOUT_S)
    inject_both(rig, time.time(), 2)  # never read: must not come out after the restart
    cameras.stop()
    cameras.stop()  # stopping twice is harmless
    with pytest.raises(CameraError, match="not streaming"):
        cameras.poll_frames()
    inject_both(rig, time.time(), 3)  # no one streams: dropped, as a real camera's frame is
    cameras.start()
    with pytest.raises(CameraError, match="already streaming"):
        cameras.start()
    assert cameras.poll_frames() == {}
    stamp_s = time.time()
    inject_both(rig, stamp_s, 4)
    frames = cameras.wait_frames(TIMEOUT_S)
    assert {name: frame.frame_number for name, frame in frames.items()} == {"front": 4, "wrist": 4}
    assert frames["wrist"].stamp == pytest.approx(stamp_s, abs=1e-3)


def test_a_serial_not_connected_is_named_with_the_serials_found(rig):
    missing = CameraConfig("wrist", "999999999999")
    with pytest.raises(CameraError, match="999999999999; found: 000000000415, 000000000435"):
        RealSenseCameras([FRONT, missing], devices=rig.devices)
    # The hardware path looks in the SDK's list of connected cameras.
    with pytest.raises(CameraError, match="no RealSense device with serial 999999999999"):
        RealSenseCameras([missing])


def test_a_profile_the_camera_lacks_is_named(rig):
    with pytest.raises(CameraError, match="no colour profile 1280x720 rgb8 at 30 fps"):
        RealSenseCameras([CameraConfig("front", FRONT.serial, 1280, 720)], devices=rig.devices)


def test_inject_rejects_an_image_of_the_wrong_shape(rig):
    with pytest.raises(ValueError, match=r"\(480, 640, 3\) uint8"):
        rig.inject("front", np.zeros((120, 160, 3), np.uint8), time.time(), 1)
