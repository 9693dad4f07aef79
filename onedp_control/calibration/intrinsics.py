"""Colour-camera intrinsics: a RealSense camera's factory calibration, or a fit to ChArUco views,
stored as one CameraInfo-style YAML file per camera, named by its serial.

The file has the layout of ROS camera_calibration_parsers (so camera_info_manager reads it) plus
the camera's serial and where the numbers came from. The camera matrix K = [[fx, 0, cx], [0, fy,
cy], [0, 0, 1]] projects the optical frame (x right, y down, z forward) onto pixels, pixel centres
at integers. Distortion is OpenCV's, as ROS names it: plumb_bob = (k1, k2, p1, p2, k3),
rational_polynomial = (k1, k2, p1, p2, k3, k4, k5, k6).

RealSense distortion models: the D400 colour sensors report `inverse_brown_conrady` (some
firmware `brown_conrady`); the SDK projects points with both through the same forward
polynomial, with coefficients in the order (k1, k2, p1, p2, k3), which is OpenCV's plumb_bob, and
the realsense-ros driver publishes them as plumb_bob too. Models without that equivalence
(Kannala-Brandt, f-theta) are refused.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyrealsense2 as rs
import yaml

from onedp_control.calibration.charuco import (
    CharucoBoardSpec,
    board_points,
    detect_charuco,
    usable_for_pose,
)
from onedp_control.errors import ConfigError

DISTORTION_COEFFICIENT_COUNTS = {"plumb_bob": 5, "rational_polynomial": 8}
PLUMB_BOB_REALSENSE_MODELS = {
    rs.distortion.none,
    rs.distortion.brown_conrady,
    rs.distortion.modified_brown_conrady,
    rs.distortion.inverse_brown_conrady,
}
# Fewer views than this leave the focal length and the distortion trading off against each other.
MIN_INTRINSICS_VIEWS = 8


@dataclass(frozen=True, eq=False)
class CameraInfo:
    camera_name: str
    serial: str
    width: int
    height: int
    camera_matrix: np.ndarray  # (3, 3)
    distortion_model: str  # a key of DISTORTION_COEFFICIENT_COUNTS
    distortion_coefficients: np.ndarray  # (5,) plumb_bob or (8,) rational_polynomial
    source: str = ""  # where the numbers came from, for people
    reprojection_rms_px: float | None = None  # a fit's residual


# ----------------------------------------------------------------------------- from a device
def read_device_intrinsics(
    device_or_serial: rs.device | str, width: int = 640, height: int = 480, fps: int = 30
) -> CameraInfo:
    """The factory intrinsics of the device's colour stream at width x height and fps.

    A serial is looked up among the connected cameras (a ConfigError lists those found); a
    device (a connected one, or an `rs.software_device`) is read directly.
    """
    device = (
        _find_device(device_or_serial) if isinstance(device_or_serial, str) else device_or_serial
    )
    serial = device.get_info(rs.camera_info.serial_number)
    offered = set()
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() != rs.stream.color:
                continue
            video = profile.as_video_stream_profile()
            offered.add((video.width(), video.height(), video.fps()))
            if (video.width(), video.height(), video.fps()) == (width, height, fps):
                return _camera_info_from_realsense(device, serial, video.get_intrinsics())
    listed = ", ".join(f"{w}x{h}@{f}" for w, h, f in sorted(offered)) or "none"
    raise ConfigError(
        f"camera {serial}: no colour profile {width}x{height} at {fps} fps (offered: {listed})"
    )


def _find_device(serial: str) -> rs.device:
    devices = list(rs.context().query_devices())
    serials = [device.get_info(rs.camera_info.serial_number) for device in devices]
    if serial not in serials:
        raise ConfigError(
            f"no RealSense camera with serial {serial}; connected: {', '.join(serials) or 'none'}"
        )
    return devices[serials.index(serial)]


def _float32_value(value: float) -> float:
    """The SDK stores float32: its shortest decimal form is the stored value, without the float64
    digits that would only be noise in the file."""
    return float(str(np.float32(value)))


def default_camera_name(serial: str) -> str:
    """The camera_name of a camera's file: ROS wants a lower-case identifier, and the serial is
    what tells two cameras of one model apart."""
    return f"realsense_{serial}"


def _camera_info_from_realsense(
    device: rs.device, serial: str, intrinsics: rs.intrinsics
) -> CameraInfo:
    if intrinsics.model not in PLUMB_BOB_REALSENSE_MODELS:
        raise ConfigError(
            f"camera {serial}: distortion model {intrinsics.model.name} has no OpenCV "
            "equivalent here"
        )
    product = device.get_info(rs.camera_info.name) if device.supports(rs.camera_info.name) else ""
    fx, fy, cx, cy = (
        _float32_value(v) for v in (intrinsics.fx, intrinsics.fy, intrinsics.ppx, intrinsics.ppy)
    )
    return CameraInfo(
        camera_name=default_camera_name(serial),
        serial=serial,
        width=intrinsics.width,
        height=intrinsics.height,
        camera_matrix=np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]),
        distortion_model="plumb_bob",
        distortion_coefficients=np.array([_float32_value(c) for c in intrinsics.coeffs[:5]]),
        source=f"factory calibration of {product or 'a RealSense camera'} "
        f"({intrinsics.model.name})",
    )


# ----------------------------------------------------------------------------- ChArUco fit
def calibrate_intrinsics(
    images: Mapping[str, np.ndarray],
    board: CharucoBoardSpec,
    camera_name: str,
    serial: str,
    max_rms_px: float = 1.0,
) -> CameraInfo:
    """K and plumb_bob distortion fitted to ChArUco views (name -> RGB or grey uint8 image).

    Views where the board gives no pose are left out; fewer than MIN_INTRINSICS_VIEWS usable
    views, or a fit whose reprojection RMS exceeds `max_rms_px`, is a ConfigError.
    """
    sizes = {image.shape[:2] for image in images.values()}
    if len(sizes) != 1:
        raise ConfigError(f"the images differ in size: {sorted(sizes)}")
    ((height, width),) = sizes
    object_points, image_points, skipped = [], [], []
    for name, image in images.items():
        detection = detect_charuco(image, board)
        problem = usable_for_pose(detection, board)
        if problem is not None:
            skipped.append(f"{name} ({problem})")
            continue
        object_points.append(board_points(board, detection.ids).astype(np.float32))
        image_points.append(detection.corners.astype(np.float32))
    if len(object_points) < MIN_INTRINSICS_VIEWS:
        raise ConfigError(
            f"{len(object_points)} usable board views, {MIN_INTRINSICS_VIEWS} needed; "
            f"left out: {'; '.join(skipped) or 'none'}"
        )
    # k3 only pays off for wide-angle lenses; on the RealSense colour lenses it fits noise and
    # spoils the image borders.
    rms, camera_matrix, distortion, _, _ = cv2.calibrateCamera(
        object_points, image_points, (width, height), None, None, flags=cv2.CALIB_FIX_K3
    )
    if rms > max_rms_px:
        raise ConfigError(
            f"the intrinsics fit leaves {rms:.2f} px RMS reprojection error, more than "
            f"{max_rms_px} px: blurred views, a board that is not flat, or a wrong square length"
        )
    return CameraInfo(
        camera_name=camera_name,
        serial=serial,
        width=width,
        height=height,
        camera_matrix=camera_matrix,
        distortion_model="plumb_bob",
        distortion_coefficients=distortion.ravel()[:5],
        source=f"ChArUco fit, {len(object_points)} views",
        reprojection_rms_px=float(rms),
    )


# ----------------------------------------------------------------------------- YAML files
def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping; anything else is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def write_yaml_atomic(path: Path, values: dict, header: str) -> None:
    """Write `header` (comment lines) and `values`, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    text = comment + yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=100)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require(values: dict, key: str, where: str) -> object:
    if key not in values:
        raise ConfigError(f"{where}: missing required key '{key}'")
    return values[key]


def check_keys(values: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )


def number_list(value: object, length: int, where: str) -> np.ndarray:
    """A list of `length` finite numbers, as float64."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {length} numbers, got {value!r}")
    if len(value) != length:
        raise ConfigError(f"{where}: expected {length} numbers, got {len(value)}")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise ConfigError(f"{where}[{index}]: expected a finite number, got {item!r}")
    return np.array(value, dtype=np.float64)


def _matrix(values: dict, key: str, rows: int, cols: int, where: str) -> np.ndarray:
    matrix = require(values, key, where)
    field = f"{where}: {key}"
    if not isinstance(matrix, dict):
        raise ConfigError(f"{field}: expected a mapping with rows, cols and data")
    check_keys(matrix, {"rows", "cols", "data"}, field)
    shape = (require(matrix, "rows", field), require(matrix, "cols", field))
    if shape != (rows, cols):
        raise ConfigError(f"{field}: expected rows {rows} and cols {cols}, got {shape}")
    data = number_list(require(matrix, "data", field), rows * cols, f"{field}.data")
    return data.reshape(rows, cols)


def _matrix_yaml(matrix: np.ndarray) -> dict:
    rows, cols = matrix.shape
    return {"rows": rows, "cols": cols, "data": [float(v) for v in matrix.ravel()]}


def camera_info_to_yaml(info: CameraInfo) -> dict:
    projection = np.hstack([info.camera_matrix, np.zeros((3, 1))])
    values = {
        "image_width": info.width,
        "image_height": info.height,
        "camera_name": info.camera_name,
        "serial": info.serial,
        "camera_matrix": _matrix_yaml(info.camera_matrix),
        "distortion_model": info.distortion_model,
        "distortion_coefficients": _matrix_yaml(info.distortion_coefficients.reshape(1, -1)),
        # A monocular camera: no rectification, and the projection of the unrectified image.
        "rectification_matrix": _matrix_yaml(np.eye(3)),
        "projection_matrix": _matrix_yaml(projection),
        "source": info.source,
    }
    if info.reprojection_rms_px is not None:
        values["reprojection_rms_px"] = round(info.reprojection_rms_px, 4)
    return values


def save_camera_info(info: CameraInfo, path: Path) -> None:
    write_yaml_atomic(
        path,
        camera_info_to_yaml(info),
        f"Colour intrinsics of RealSense {info.serial}, written by `onedp calibrate intrinsics`.",
    )


CAMERA_INFO_KEYS = {
    "image_width",
    "image_height",
    "camera_name",
    "serial",
    "camera_matrix",
    "distortion_model",
    "distortion_coefficients",
    "rectification_matrix",
    "projection_matrix",
    "source",
    "reprojection_rms_px",
}


def load_camera_info(path: Path) -> CameraInfo:
    """A CameraInfo YAML file, checked strictly: every error names the file and the field."""
    values = read_yaml_mapping(path)
    where = str(path)
    check_keys(values, CAMERA_INFO_KEYS, where)
    size = {}
    for key in ("image_width", "image_height"):
        value = require(values, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key}: expected a positive integer, got {value!r}")
        size[key] = value
    width, height = size["image_width"], size["image_height"]
    text = {}
    for key in ("camera_name", "serial"):
        value = require(values, key, where)
        if not isinstance(value, str) or not value:
            hint = " (quote it: serials are strings)" if key == "serial" else ""
            raise ConfigError(f"{where}: {key}: expected a non-empty string{hint}, got {value!r}")
        text[key] = value
    camera_matrix = _matrix(values, "camera_matrix", 3, 3, where)
    fx, fy, cx, cy = (
        camera_matrix[0, 0],
        camera_matrix[1, 1],
        camera_matrix[0, 2],
        camera_matrix[1, 2],
    )
    if not (
        fx > 0
        and fy > 0
        and 0 < cx < width
        and 0 < cy < height
        and camera_matrix[1, 0] == camera_matrix[0, 1] == 0
        and list(camera_matrix[2]) == [0.0, 0.0, 1.0]
    ):
        raise ConfigError(
            f"{where}: camera_matrix: expected [fx, 0, cx, 0, fy, cy, 0, 0, 1] with fx, fy > 0 "
            f"and (cx, cy) inside the {width}x{height} image, got {camera_matrix.ravel().tolist()}"
        )
    model = require(values, "distortion_model", where)
    if model not in DISTORTION_COEFFICIENT_COUNTS:
        raise ConfigError(
            f"{where}: distortion_model: expected one of "
            f"{', '.join(DISTORTION_COEFFICIENT_COUNTS)}, got {model!r}"
        )
    coefficients = _matrix(
        values, "distortion_coefficients", 1, DISTORTION_COEFFICIENT_COUNTS[model], where
    ).ravel()
    if "rectification_matrix" in values:
        _matrix(values, "rectification_matrix", 3, 3, where)
    if "projection_matrix" in values:
        _matrix(values, "projection_matrix", 3, 4, where)
    source = values.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{where}: source: expected a string, got {source!r}")
    rms = values.get("reprojection_rms_px")
    if rms is not None and (isinstance(rms, bool) or not isinstance(rms, int | float) or rms < 0):
        raise ConfigError(f"{where}: reprojection_rms_px: expected a number >= 0, got {rms!r}")
    return CameraInfo(
        camera_name=text["camera_name"],
        serial=text["serial"],
        width=width,
        height=height,
        camera_matrix=camera_matrix,
        distortion_model=model,
        distortion_coefficients=coefficients,
        source=source,
        reprojection_rms_px=None if rms is None else float(rms),
    )
