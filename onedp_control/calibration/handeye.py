"""Hand-eye calibration: where a camera sits relative to the robot, from views of a ChArUco board.

Frames and notation: `T_a_b` is the pose of frame b in frame a, a 4x4 homogeneous transform with
p_a = T_a_b @ p_b; metres.
- base: the robot base frame, in which the robot reports its poses (franky's, libfranka's O).
- gripper: the frame whose pose the robot reports (`RobotState.ee_pos` / `ee_rot`): franky's
  end-effector frame, the TCP as configured in Desk, and the sim's `tcp` site. A hand-eye result
  holds only for the end-effector setting it was measured with.
- camera: the colour camera's optical frame (x right, y down, z forward), as in `charuco`.
- board: the ChArUco board's frame, as in `charuco`.

Modes, and what each solves for:
- eye-in-hand (the wrist D435): the board lies still in the cell and the camera rides on the
  hand. Unknown X = T_gripper_camera; the board's pose in the base frame,
  T_base_board = T_base_gripper_i @ X @ T_camera_board_i, is the same at every sample.
- eye-to-hand (the front D415): the camera stands still and the board rides on the hand. Unknown
  X = T_base_camera; the board's pose on the hand,
  T_gripper_board = inv(T_base_gripper_i) @ X @ T_camera_board_i, is the same at every sample.
  `cv2.calibrateHandEye` solves it when given the inverted robot poses, as OpenCV documents.

Residuals: how far each sample's board pose (in base for eye-in-hand, on the hand for
eye-to-hand) lies from their mean, in mm and degrees. A solution whose RMS residuals exceed the
thresholds is refused (ConfigError): a bad sample, a loose board or camera, wrong intrinsics or a
wrong square length all show there.

Samples are (T_base_gripper, image or board detection) pairs; `guided_capture` records them by
moving a `Robot` through `calibration_poses`. The samples file formats are in calibration/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from onedp_control.calibration.charuco import (
    CharucoBoardSpec,
    CharucoDetection,
    board_from_dict,
    corner_count,
    detect_charuco,
    estimate_board_pose,
    usable_for_pose,
)
from onedp_control.calibration.intrinsics import (
    CameraInfo,
    check_keys,
    number_list,
    read_yaml_mapping,
    require,
    write_yaml_atomic,
)
from onedp_control.cameras.realsense import CameraFrame
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path
from onedp_control.geometry import (
    matrix_from_quat,
    matrix_from_rotvec,
    quat_from_matrix,
    rotvec_from_matrix,
)
from onedp_control.robots.base import Robot, RobotError, RobotState

EYE_IN_HAND = "eye-in-hand"
EYE_TO_HAND = "eye-to-hand"
MODES = (EYE_IN_HAND, EYE_TO_HAND)
# What each mode's transform maps from (parent) and to (child), and where the board is fixed.
PARENT_FRAME = {EYE_IN_HAND: "gripper", EYE_TO_HAND: "base"}
BOARD_FRAME = {EYE_IN_HAND: "base", EYE_TO_HAND: "gripper"}
CAMERA_FRAME = "camera_optical"
HAND_EYE_METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}

MIN_SAMPLES = 3
# The largest rotation between two sample poses: below it, pixel noise swamps the rotation part.
MIN_ROTATION_DEG = 10.0
# Rotations all about one axis leave the camera's offset along that axis unobservable (Tsai and
# Lenz need two motions with non-parallel axes); this is the least angle between two axes.
MIN_AXIS_ANGLE_DEG = 20.0
# A motion smaller than this has no reliable axis under measurement noise.
AXIS_MIN_MOTION_RAD = np.radians(3.0)


# ----------------------------------------------------------------------------- transforms
def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = np.asarray(translation, dtype=np.float64).ravel()
    return transform


def invert_transform(transform: np.ndarray) -> np.ndarray:
    rotation = transform[:3, :3]
    return make_transform(rotation.T, -rotation.T @ transform[:3, 3])


def rotation_angle_deg(rotation: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(rotvec_from_matrix(rotation))))


def pose_from_state(state: RobotState) -> np.ndarray:
    """T_base_gripper of a robot state."""
    return make_transform(state.ee_rot, state.ee_pos)


# ----------------------------------------------------------------------------- solving
def check_pose_diversity(gripper_poses: Sequence[np.ndarray]) -> None:
    """A ConfigError, before any solving, for T_base_gripper sets that cannot determine a
    hand-eye transform: too few, too little rotation, or all rotations about one axis."""
    if len(gripper_poses) < MIN_SAMPLES:
        raise ConfigError(
            f"{len(gripper_poses)} usable samples; hand-eye calibration needs at least "
            f"{MIN_SAMPLES} (12 or more give a reliable result)"
        )
    rotations = np.array([pose[:3, :3] for pose in gripper_poses])
    largest = max(
        rotation_angle_deg(a.T @ b) for i, a in enumerate(rotations) for b in rotations[i + 1 :]
    )
    if largest < MIN_ROTATION_DEG:
        raise ConfigError(
            f"the gripper turns at most {largest:.1f} deg between samples; hand-eye calibration "
            f"needs {MIN_ROTATION_DEG:.0f} deg or more (tilt it 15-25 deg about several axes)"
        )
    # Motions from the first pose share one axis exactly when all motions between poses do; one
    # of them turns 5 deg or more, given the largest rotation above.
    motions = [rotvec_from_matrix(rotations[0].T @ rotation) for rotation in rotations[1:]]
    axes = np.array(
        [m / np.linalg.norm(m) for m in motions if np.linalg.norm(m) >= AXIS_MIN_MOTION_RAD]
    )
    spread = float(np.degrees(np.arccos(np.clip(np.abs(axes @ axes.T).min(), 0.0, 1.0))))
    if spread < MIN_AXIS_ANGLE_DEG:
        raise ConfigError(
            f"the gripper rotations are all about one axis (gripper frame "
            f"{np.round(axes[0], 2).tolist()}, spread {spread:.1f} deg < "
            f"{MIN_AXIS_ANGLE_DEG:.0f} deg): the camera offset along it cannot be found; tilt "
            "about at least two different axes"
        )


@dataclass(frozen=True)
class HandEyeResiduals:
    """Each sample's board pose against the samples' mean: (translation mm, rotation deg)."""

    per_sample: tuple[tuple[float, float], ...]

    @property
    def samples(self) -> int:
        return len(self.per_sample)

    @property
    def translation_rms_mm(self) -> float:
        return float(np.sqrt(np.mean([t**2 for t, _ in self.per_sample])))

    @property
    def translation_max_mm(self) -> float:
        return max(t for t, _ in self.per_sample)

    @property
    def rotation_rms_deg(self) -> float:
        return float(np.sqrt(np.mean([r**2 for _, r in self.per_sample])))

    @property
    def rotation_max_deg(self) -> float:
        return max(r for _, r in self.per_sample)


@dataclass(frozen=True, eq=False)
class HandEyeCalibration:
    mode: str
    # eye-in-hand: T_gripper_camera; eye-to-hand: T_base_camera.
    transform: np.ndarray
    # The board's mean pose in BOARD_FRAME[mode]: T_base_board (eye-in-hand) or T_gripper_board.
    board_pose: np.ndarray
    residuals: HandEyeResiduals
    camera_serial: str
    method: str
    max_translation_mm: float
    max_rotation_deg: float

    @property
    def parent_frame(self) -> str:
        return PARENT_FRAME[self.mode]


class CalibrationRefusedError(ConfigError):
    """A hand-eye solution whose residuals exceed the thresholds."""


def _mean_and_deviations(
    transforms: Sequence[np.ndarray],
) -> tuple[np.ndarray, tuple[tuple[float, float], ...]]:
    translations = np.array([t[:3, 3] for t in transforms])
    mean_translation = translations.mean(axis=0)
    # The rotation nearest (in the Frobenius norm) to the average of the matrices.
    u, _, vt = np.linalg.svd(np.sum([t[:3, :3] for t in transforms], axis=0))
    mean_rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    deviations = tuple(
        (
            float(1000.0 * np.linalg.norm(t[:3, 3] - mean_translation)),
            rotation_angle_deg(mean_rotation.T @ t[:3, :3]),
        )
        for t in transforms
    )
    return make_transform(mean_rotation, mean_translation), deviations


def _calibrate_hand_eye(
    method: str, robot_poses: Sequence[np.ndarray], board_poses: Sequence[np.ndarray]
) -> np.ndarray | None:
    """OpenCV's solution with one method, or None where that method fails on these poses."""
    try:
        rotation, translation = cv2.calibrateHandEye(
            [pose[:3, :3] for pose in robot_poses],
            [pose[:3, 3] for pose in robot_poses],
            [pose[:3, :3] for pose in board_poses],
            [pose[:3, 3] for pose in board_poses],
            method=HAND_EYE_METHODS[method],
        )
    except cv2.error:  # Andreff and Tsai on some pose sets: "determinant(R) is null"
        return None
    transform = make_transform(rotation, translation)
    return transform if np.all(np.isfinite(transform)) else None


def solve_hand_eye(
    mode: str,
    gripper_poses: Sequence[np.ndarray],
    board_poses: Sequence[np.ndarray],
    *,
    camera_serial: str = "",
    max_translation_mm: float = 5.0,
    max_rotation_deg: float = 1.0,
    method: str = "auto",
    sample_names: Sequence[str] | None = None,
) -> HandEyeCalibration:
    """The hand-eye transform of `mode` (see the module docstring) from paired poses:
    `gripper_poses` T_base_gripper and `board_poses` T_camera_board, one of each per sample.

    `method` is one of HAND_EYE_METHODS, or "auto": each of them, keeping the solution whose
    board poses agree best (relative to the thresholds). None of OpenCV's methods is best on
    every pose set, and some fail outright on some.

    Raises ConfigError for a degenerate pose set (before solving) and CalibrationRefusedError when
    the RMS residuals exceed `max_translation_mm` or `max_rotation_deg`; its message names the
    worst samples (`sample_names`, default "sample <index>").
    """
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if method != "auto" and method not in HAND_EYE_METHODS:
        raise ConfigError(
            f"method: expected auto or one of {', '.join(HAND_EYE_METHODS)}, got {method!r}"
        )
    if not (max_translation_mm > 0 and max_rotation_deg > 0):
        raise ConfigError(
            f"the residual limits must be > 0, got {max_translation_mm} mm, {max_rotation_deg} deg"
        )
    if len(gripper_poses) != len(board_poses):
        raise ValueError(f"{len(gripper_poses)} robot poses but {len(board_poses)} board poses")
    names = list(sample_names or (f"sample {i}" for i in range(len(gripper_poses))))
    check_pose_diversity(gripper_poses)
    robot_poses = (
        list(gripper_poses)
        if mode == EYE_IN_HAND
        else [invert_transform(pose) for pose in gripper_poses]
    )

    def badness(deviations: Sequence[tuple[float, float]]) -> float:
        """The residuals against the limits: above 1 is refused."""
        translation_mm, rotation_deg = np.sqrt(np.mean(np.square(deviations), axis=0))
        return max(translation_mm / max_translation_mm, rotation_deg / max_rotation_deg)

    candidates = []
    for name in HAND_EYE_METHODS if method == "auto" else [method]:
        transform = _calibrate_hand_eye(name, robot_poses, board_poses)
        if transform is None:
            continue
        board_pose, deviations = _mean_and_deviations(
            [
                robot @ transform @ board
                for robot, board in zip(robot_poses, board_poses, strict=True)
            ]
        )
        candidates.append((badness(deviations), name, transform, board_pose, deviations))
    if not candidates:
        raise ConfigError(f"OpenCV's hand-eye solver ({method}) failed on these samples")
    score, chosen, transform, board_pose, deviations = min(candidates, key=lambda c: c[0])
    residuals = HandEyeResiduals(deviations)
    if score > 1.0:
        worst = sorted(range(len(deviations)), key=lambda i: -badness([deviations[i]]))[:3]
        listed = ", ".join(
            f"{names[i]} ({deviations[i][0]:.1f} mm, {deviations[i][1]:.2f} deg)" for i in worst
        )
        raise CalibrationRefusedError(
            f"{mode} solution refused: the board pose varies by {residuals.translation_rms_mm:.2f}"
            f" mm / {residuals.rotation_rms_deg:.2f} deg RMS across {residuals.samples} samples "
            f"(limits {max_translation_mm} mm / {max_rotation_deg} deg, method {chosen}); "
            f"worst: {listed}"
        )
    return HandEyeCalibration(
        mode=mode,
        transform=transform,
        board_pose=board_pose,
        residuals=residuals,
        camera_serial=camera_serial,
        method=chosen,
        max_translation_mm=max_translation_mm,
        max_rotation_deg=max_rotation_deg,
    )


# ----------------------------------------------------------------------------- result files
def pose_to_yaml(transform: np.ndarray) -> dict:
    return {
        "translation": [round(float(v), 6) for v in transform[:3, 3]],
        "quaternion_wxyz": [round(float(v), 8) for v in quat_from_matrix(transform[:3, :3])],
    }


def pose_from_yaml(values: object, where: str, field: str = "") -> np.ndarray:
    """A pose {translation: [x, y, z], quaternion_wxyz: [w, x, y, z]} as a 4x4 transform.

    Errors read "<where>: <field><key>": `where` is the file, `field` the pose's own path in it
    ("board_pose.", or "" for keys at the top level).
    """
    mapping_where = f"{where}: {field.rstrip('.')}" if field else where
    if not isinstance(values, dict):
        raise ConfigError(
            f"{mapping_where}: expected a mapping with translation and quaternion_wxyz"
        )
    check_keys(values, {"translation", "quaternion_wxyz"}, mapping_where)
    translation = number_list(
        require(values, "translation", mapping_where), 3, f"{where}: {field}translation"
    )
    quaternion = number_list(
        require(values, "quaternion_wxyz", mapping_where), 4, f"{where}: {field}quaternion_wxyz"
    )
    # Rounding to 3 decimals (by hand) is within 1e-2 of unit length; further off is a typo.
    if abs(np.linalg.norm(quaternion) - 1.0) > 1e-2:
        raise ConfigError(
            f"{where}: {field}quaternion_wxyz: expected a unit quaternion (w, x, y, z), got norm "
            f"{np.linalg.norm(quaternion):.4f}"
        )
    return make_transform(matrix_from_quat(quaternion), translation)


def handeye_to_yaml(result: HandEyeCalibration) -> dict:
    residuals = result.residuals
    return {
        "mode": result.mode,
        "parent_frame": result.parent_frame,
        "child_frame": CAMERA_FRAME,
        "camera_serial": result.camera_serial,
        **pose_to_yaml(result.transform),
        "board_pose": {"frame": BOARD_FRAME[result.mode], **pose_to_yaml(result.board_pose)},
        "method": result.method,
        "thresholds": {
            "max_translation_mm": result.max_translation_mm,
            "max_rotation_deg": result.max_rotation_deg,
        },
        "residuals": {
            "samples": residuals.samples,
            "translation_rms_mm": round(residuals.translation_rms_mm, 3),
            "translation_max_mm": round(residuals.translation_max_mm, 3),
            "rotation_rms_deg": round(residuals.rotation_rms_deg, 4),
            "rotation_max_deg": round(residuals.rotation_max_deg, 4),
            "per_sample_mm_deg": [[round(t, 3), round(r, 4)] for t, r in residuals.per_sample],
        },
    }


def save_handeye(result: HandEyeCalibration, path: Path) -> None:
    frames = f"{result.parent_frame} -> {CAMERA_FRAME}"
    write_yaml_atomic(
        path,
        handeye_to_yaml(result),
        f"Hand-eye calibration ({result.mode}, {frames}) of RealSense {result.camera_serial},\n"
        "written by `onedp calibrate handeye`: translation (m) and quaternion_wxyz give\n"
        f"T_{result.parent_frame}_camera, the camera's optical frame in the {result.parent_frame}"
        " frame.",
    )


def _positive_number(values: dict, key: str, where: str) -> float:
    value = require(values, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: {key}: expected a number > 0, got {value!r}")
    return float(value)


def load_handeye(path: Path) -> HandEyeCalibration:
    """A hand-eye YAML file, checked strictly: every error names the file and the field."""
    values = read_yaml_mapping(path)
    where = str(path)
    check_keys(
        values,
        {
            "mode",
            "parent_frame",
            "child_frame",
            "camera_serial",
            "translation",
            "quaternion_wxyz",
            "board_pose",
            "method",
            "thresholds",
            "residuals",
        },
        where,
    )
    mode = require(values, "mode", where)
    if mode not in MODES:
        raise ConfigError(f"{where}: mode: expected one of {', '.join(MODES)}, got {mode!r}")
    for key, expected in (("parent_frame", PARENT_FRAME[mode]), ("child_frame", CAMERA_FRAME)):
        if require(values, key, where) != expected:
            raise ConfigError(
                f"{where}: {key}: {mode} maps {PARENT_FRAME[mode]} -> {CAMERA_FRAME}, "
                f"so {key} must be {expected!r}, got {values[key]!r}"
            )
    serial = require(values, "camera_serial", where)
    if not isinstance(serial, str):
        raise ConfigError(f"{where}: camera_serial: expected a string (quote it), got {serial!r}")
    transform = pose_from_yaml(
        {key: require(values, key, where) for key in ("translation", "quaternion_wxyz")}, where
    )
    board = require(values, "board_pose", where)
    board_where = f"{where}: board_pose"
    if not isinstance(board, dict) or board.get("frame") != BOARD_FRAME[mode]:
        raise ConfigError(
            f"{board_where}: expected a mapping with frame {BOARD_FRAME[mode]!r} ({mode}), "
            "translation and quaternion_wxyz"
        )
    board_pose = pose_from_yaml(
        {k: v for k, v in board.items() if k != "frame"}, where, "board_pose."
    )
    method = require(values, "method", where)
    if method not in HAND_EYE_METHODS:
        raise ConfigError(
            f"{where}: method: expected one of {', '.join(HAND_EYE_METHODS)}, got {method!r}"
        )
    thresholds = require(values, "thresholds", where)
    thresholds_where = f"{where}: thresholds"
    if not isinstance(thresholds, dict):
        raise ConfigError(f"{thresholds_where}: expected a mapping")
    check_keys(thresholds, {"max_translation_mm", "max_rotation_deg"}, thresholds_where)
    residuals = require(values, "residuals", where)
    residuals_where = f"{where}: residuals"
    if not isinstance(residuals, dict):
        raise ConfigError(f"{residuals_where}: expected a mapping")
    # The summary numbers are there for people; the per-sample pairs are what they summarise.
    check_keys(
        residuals,
        {
            "samples",
            "translation_rms_mm",
            "translation_max_mm",
            "rotation_rms_deg",
            "rotation_max_deg",
            "per_sample_mm_deg",
        },
        residuals_where,
    )
    per_sample = require(residuals, "per_sample_mm_deg", residuals_where)
    if not isinstance(per_sample, list) or len(per_sample) < MIN_SAMPLES:
        raise ConfigError(
            f"{residuals_where}: per_sample_mm_deg: expected a list of at least {MIN_SAMPLES} "
            "[mm, deg] pairs"
        )
    pairs = tuple(
        tuple(float(v) for v in number_list(pair, 2, f"{residuals_where}.per_sample_mm_deg[{i}]"))
        for i, pair in enumerate(per_sample)
    )
    return HandEyeCalibration(
        mode=mode,
        transform=transform,
        board_pose=board_pose,
        residuals=HandEyeResiduals(pairs),
        camera_serial=serial,
        method=method,
        max_translation_mm=_positive_number(thresholds, "max_translation_mm", thresholds_where),
        max_rotation_deg=_positive_number(thresholds, "max_rotation_deg", thresholds_where),
    )


# ----------------------------------------------------------------------------- samples
@dataclass(frozen=True, eq=False)
class HandEyeSample:
    T_base_gripper: np.ndarray  # the measured gripper pose when the image was taken
    image: np.ndarray | None = None  # (H, W, 3) RGB or (H, W) grey uint8 ...
    detection: CharucoDetection | None = None  # ... or the board corners found in it


@dataclass(frozen=True, eq=False)
class SampleSet:
    board: CharucoBoardSpec
    samples: list[HandEyeSample]
    camera_serial: str = ""  # the camera that took the images, where known
    mode: str = ""  # the mode they were recorded for, where known


SAMPLES_FILE = "samples.yaml"


def load_samples(path: Path) -> SampleSet:
    """Samples from a directory (its samples.yaml), a .yaml file or an .npz file."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    if path.is_dir():
        path = path / SAMPLES_FILE
    if path.suffix in (".yaml", ".yml"):
        return _load_samples_yaml(path)
    if path.suffix == ".npz":
        return _load_samples_npz(path)
    raise ConfigError(f"{path}: samples must be a directory, a .yaml or an .npz file")


def _check_rigid(transform: np.ndarray, where: str) -> None:
    rotation = transform[:3, :3]
    if not (
        np.allclose(transform[3], [0.0, 0.0, 0.0, 1.0])
        and np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-4)
        and np.linalg.det(rotation) > 0
    ):
        raise ConfigError(f"{where}: not a rigid transform (rotation and translation)")


def _check_text(values: dict, key: str, where: str) -> str:
    value = values.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key}: expected a string (quote it), got {value!r}")
    return value


def _load_samples_yaml(path: Path) -> SampleSet:
    values = read_yaml_mapping(path)
    where = str(path)
    check_keys(values, {"board", "samples", "camera_serial", "mode"}, where)
    board = board_from_dict(require(values, "board", where), f"{where}: board")
    entries = require(values, "samples", where)
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: samples: expected a list")
    samples = []
    for index, entry in enumerate(entries):
        entry_where = f"{where}: samples[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{entry_where}: expected a mapping")
        check_keys(entry, {"T_base_gripper", "image", "corners", "ids"}, entry_where)
        pose = pose_from_yaml(
            require(entry, "T_base_gripper", entry_where),
            where,
            f"samples[{index}].T_base_gripper.",
        )
        if ("image" in entry) == ("corners" in entry or "ids" in entry):
            raise ConfigError(f"{entry_where}: expected either image or corners and ids")
        if "image" in entry:
            samples.append(
                HandEyeSample(pose, image=_read_image(path, entry["image"], entry_where))
            )
        else:
            samples.append(HandEyeSample(pose, detection=_detection(entry, board, entry_where)))
    return SampleSet(
        board=board,
        samples=samples,
        camera_serial=_check_text(values, "camera_serial", where),
        mode=_mode(values, where),
    )


def _mode(values: dict, where: str) -> str:
    mode = _check_text(values, "mode", where)
    if mode and mode not in MODES:
        raise ConfigError(f"{where}: mode: expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _read_image(samples_file: Path, name: object, where: str) -> np.ndarray:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: image: expected a file name, got {name!r}")
    image_path = samples_file.parent / name
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ConfigError(f"{where}: image: cannot read {image_path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _detection(entry: dict, board: CharucoBoardSpec, where: str) -> CharucoDetection:
    ids = require(entry, "ids", where)
    corners = require(entry, "corners", where)
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < corner_count(board) for i in ids
    ):
        raise ConfigError(
            f"{where}: ids: expected a list of corner ids 0..{corner_count(board) - 1}"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: ids: a corner id appears twice")
    if not isinstance(corners, list) or len(corners) != len(ids):
        raise ConfigError(f"{where}: corners: expected {len(ids)} [u, v] pairs, one per id")
    points = np.array(
        [number_list(c, 2, f"{where}.corners[{i}]") for i, c in enumerate(corners)]
    ).reshape(-1, 2)
    return CharucoDetection(points, np.array(ids, dtype=np.int32))


def _load_samples_npz(path: Path) -> SampleSet:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise ConfigError(f"{where}: not a readable .npz file ({error})") from None
    check_keys(arrays, {"T_base_gripper", "images", "board", "camera_serial", "mode"}, where)
    poses = require(arrays, "T_base_gripper", where)
    images = require(arrays, "images", where)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.all(np.isfinite(poses)):
        raise ConfigError(f"{where}: T_base_gripper: expected (N, 4, 4) finite, got {poses.shape}")
    if (
        images.dtype != np.uint8
        or images.shape[:1] != poses.shape[:1]
        or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3))
    ):
        raise ConfigError(
            f"{where}: images: expected (N, H, W, 3) or (N, H, W) uint8 with N = {len(poses)}, "
            f"got {images.shape} {images.dtype}"
        )
    for index, pose in enumerate(poses):
        _check_rigid(pose, f"{where}: T_base_gripper[{index}]")
    try:
        board_values = json.loads(str(require(arrays, "board", where)))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: board: not a JSON mapping ({error})") from None
    text = {key: str(arrays[key]) for key in ("camera_serial", "mode") if key in arrays}
    return SampleSet(
        board=board_from_dict(board_values, f"{where}: board"),
        samples=[
            HandEyeSample(pose.astype(np.float64), image=image)
            for pose, image in zip(poses, images, strict=True)
        ],
        camera_serial=text.get("camera_serial", ""),
        mode=_mode(text, where),
    )


def save_samples(directory: Path, sample_set: SampleSet, overwrite: bool = False) -> None:
    """The samples as DIRECTORY/samples.yaml with PNG images beside it, whole or not at all."""
    check_output_path(directory, overwrite=overwrite, directory=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        entries = []
        for index, sample in enumerate(sample_set.samples):
            entry: dict = {"T_base_gripper": pose_to_yaml(sample.T_base_gripper)}
            if sample.image is not None:
                name = f"images/{index:03d}.png"
                (staging / "images").mkdir(exist_ok=True)
                image = sample.image
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
                if not cv2.imwrite(str(staging / name), bgr):
                    raise OSError(f"{directory / name}: could not write the image")
                entry["image"] = name
            else:
                detection = sample.detection
                assert detection is not None, "a sample has an image or a detection"
                entry["corners"] = detection.corners.tolist()
                entry["ids"] = detection.ids.tolist()
            entries.append(entry)
        write_yaml_atomic(
            staging / SAMPLES_FILE,
            {
                "camera_serial": sample_set.camera_serial,
                "mode": sample_set.mode,
                "board": sample_set.board.to_dict(),
                "samples": entries,
            },
            "Hand-eye samples: the measured gripper pose T_base_gripper (m, quaternion w x y z)\n"
            "and the image taken there. Solve with `onedp calibrate handeye`.",
        )
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True, eq=False)
class MeasuredSamples:
    """The samples that gave a board pose, paired, and why the others did not."""

    names: list[str]
    T_base_gripper: list[np.ndarray]
    T_camera_board: list[np.ndarray]
    skipped: list[str] = field(default_factory=list)


def measure_board_poses(sample_set: SampleSet, camera: CameraInfo) -> MeasuredSamples:
    """Detect the board in each sample (or take its detection) and estimate T_camera_board."""
    measured = MeasuredSamples([], [], [])
    for index, sample in enumerate(sample_set.samples):
        name = f"sample {index}"
        detection = sample.detection
        if sample.image is not None:
            if sample.image.shape[:2] != (camera.height, camera.width):
                raise ConfigError(
                    f"{name}: the image is {sample.image.shape[1]}x{sample.image.shape[0]}, the "
                    f"camera info is for {camera.width}x{camera.height}"
                )
            detection = detect_charuco(sample.image, sample_set.board)
        assert detection is not None, "a sample has an image or a detection"
        pose = estimate_board_pose(
            detection, sample_set.board, camera.camera_matrix, camera.distortion_coefficients
        )
        if pose is None:
            problem = usable_for_pose(detection, sample_set.board) or "PnP found no pose"
            measured.skipped.append(f"{name}: {problem}")
            continue
        measured.names.append(name)
        measured.T_base_gripper.append(sample.T_base_gripper)
        measured.T_camera_board.append(pose.T_camera_board)
    return measured


# ----------------------------------------------------------------------------- guided capture
class FrameSource(Protocol):
    """What guided capture needs of the cameras: `RealSenseCameras` has it."""

    def wait_frames(self, timeout_s: float) -> dict[str, CameraFrame]: ...


# Tilt axes in the gripper frame, in visiting order: consecutive ones differ, and together they
# span all three directions.
TILT_AXES = np.array(
    [
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (-1, 0, 0),
        (0, -1, 0),
        (1, 1, 0),
        (0, 0, -1),
        (-1, 1, 0),
        (1, 0, 1),
        (0, 1, -1),
        (-1, -1, 0),
        (1, -1, 0),
    ],
    dtype=np.float64,
)
TILT_AXES /= np.linalg.norm(TILT_AXES, axis=1, keepdims=True)


def calibration_poses(
    centre: np.ndarray,
    count: int = 13,
    tilt_deg: tuple[float, float] = (15.0, 25.0),
    pivot_distance_m: float = 0.0,
) -> list[np.ndarray]:
    """`count` T_base_gripper targets: the centre pose, then the gripper tilted about TILT_AXES
    by angles spread over `tilt_deg`, each about a pivot `pivot_distance_m` ahead of the gripper
    along its z axis.

    The pivot keeps the board in view: for eye-in-hand put it at the board (the camera's
    distance to it), so that the camera looks at the same spot from around it; for eye-to-hand
    leave it at 0, so that the board on the hand turns in place.
    """
    low, high = tilt_deg
    if count < 4:
        raise ConfigError(f"poses: need at least 4 for a hand-eye calibration, got {count}")
    if not 0 < low <= high <= 45:
        raise ConfigError(f"tilt: need 0 < low <= high <= 45 degrees, got {low}, {high}")
    centre_rotation, centre_position = centre[:3, :3], centre[:3, 3]
    ahead = np.array([0.0, 0.0, pivot_distance_m])
    pivot = centre_position + centre_rotation @ ahead
    poses = [centre.copy()]
    for index, angle in enumerate(np.linspace(low, high, count - 1)):
        axis = TILT_AXES[index % len(TILT_AXES)]
        rotation = centre_rotation @ matrix_from_rotvec(np.radians(angle) * axis)
        poses.append(make_transform(rotation, pivot - rotation @ ahead))
    return poses


@dataclass(frozen=True)
class ReachTolerance:
    """How near the measured pose must come to a target to count as there."""

    position_m: float = 0.002
    rotation_deg: float = 0.5


def _distance(state: RobotState, target: np.ndarray) -> tuple[float, float]:
    return (
        float(np.linalg.norm(state.ee_pos - target[:3, 3])),
        rotation_angle_deg(state.ee_rot.T @ target[:3, :3]),
    )


def move_to_pose(
    robot: Robot,
    target: np.ndarray,
    gripper_width: float,
    *,
    tolerance: ReachTolerance = ReachTolerance(),
    timeout_s: float = 20.0,
    poll_s: float = 0.02,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RobotState:
    """Send the T_base_gripper target and wait until the measured pose is within `tolerance`.

    A RobotError when the robot reports an error or is not there after `timeout_s`. `sleep` and
    `clock` are the waiting and the time it is measured with: a simulated robot advances its
    world in `sleep`.
    """
    robot.send_target(target[:3, 3], target[:3, :3], gripper_width)
    deadline = clock() + timeout_s
    while True:
        state = robot.get_state()
        if state.error is not None:
            raise RobotError(f"the robot reports an error on the way to a pose: {state.error}")
        position_error, rotation_error = _distance(state, target)
        if position_error <= tolerance.position_m and rotation_error <= tolerance.rotation_deg:
            return state
        if clock() >= deadline:
            raise RobotError(
                f"the robot did not reach the pose within {timeout_s} s: still "
                f"{1000 * position_error:.1f} mm and {rotation_error:.2f} deg away"
            )
        sleep(poll_s)


FRAME_TIMEOUT_S = 2.0


def guided_capture(
    robot: Robot,
    cameras: FrameSource,
    poses: Sequence[np.ndarray],
    camera: str,
    *,
    tolerance: ReachTolerance = ReachTolerance(),
    timeout_s: float = 20.0,
    settle_s: float = 0.5,
    poll_s: float = 0.02,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_sample: Callable[[int, HandEyeSample], None] | None = None,
) -> list[HandEyeSample]:
    """Move through the T_base_gripper `poses` and take one (measured pose, image) pair at each.

    At each pose the arm first settles for `settle_s`, so that neither the arm nor the camera
    still swings, and the pose recorded is the one measured after the image arrived. The
    gripper keeps its width. `on_sample(index, sample)` sees each pair as it comes (to report
    progress). The robot stays at the last pose.
    """
    gripper_width = robot.get_state().gripper_width
    samples = []
    for index, target in enumerate(poses):
        move_to_pose(
            robot,
            target,
            gripper_width,
            tolerance=tolerance,
            timeout_s=timeout_s,
            poll_s=poll_s,
            sleep=sleep,
            clock=clock,
        )
        sleep(settle_s)
        # The newest frame was exposed within a frame period, i.e. after the arm settled.
        frame = cameras.wait_frames(FRAME_TIMEOUT_S)[camera]
        sample = HandEyeSample(pose_from_state(robot.get_state()), image=frame.rgb)
        samples.append(sample)
        if on_sample is not None:
            on_sample(index, sample)
    return samples
