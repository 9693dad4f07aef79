"""ChArUco boards: the board's definition, its corners in an image, its pose in a camera.

Board frame (OpenCV's): origin at the outer corner of the first square, the top-left one in
`board_image`; x along the `squares_x` squares and y along the `squares_y` squares, both in the
printed plane; z into the board, away from the printed side. Corner ids number the inner
chessboard corners row by row from the origin. Metres.

Camera frame: the colour camera's optical frame (OpenCV's, and ROS's `*_optical_frame`): x right
and y down in the image, z forward along the optical axis. Pixel coordinates put pixel centres
at integers.

`T_camera_board` is the board's pose in the camera frame: p_camera = T_camera_board @ p_board.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from onedp_control.config import from_dict
from onedp_control.errors import ConfigError

ARUCO_DICTIONARIES = {
    name: getattr(cv2.aruco, name) for name in dir(cv2.aruco) if name.startswith("DICT_")
}
# A pose from a handful of corners in one corner of the board is poorly constrained (its tilt
# especially); a view with fewer corners gives no pose.
MIN_POSE_CORNERS = 6


class InvalidBoardError(ConfigError):
    """A board definition that cannot describe a ChArUco board."""


@dataclass(frozen=True)
class CharucoBoardSpec:
    squares_x: int
    squares_y: int
    square_length_m: float  # measure it on the print: printers scale
    marker_length_m: float
    dictionary: str = "DICT_5X5_100"
    # OpenCV 4.6 changed where the markers go on boards with an even squares_y; a board made by
    # an older OpenCV (or a tool following it) needs the old layout to be detected.
    legacy_pattern: bool = False

    def __post_init__(self) -> None:
        if self.squares_x < 2 or self.squares_y < 2:
            raise InvalidBoardError(
                f"squares_x and squares_y must be at least 2, got {self.squares_x}, "
                f"{self.squares_y}"
            )
        if not 0 < self.marker_length_m < self.square_length_m:
            raise InvalidBoardError(
                f"need 0 < marker_length_m < square_length_m, got {self.marker_length_m} and "
                f"{self.square_length_m}"
            )
        if self.dictionary not in ARUCO_DICTIONARIES:
            raise InvalidBoardError(
                f"dictionary: unknown ArUco dictionary {self.dictionary!r} "
                f"(known: {', '.join(sorted(ARUCO_DICTIONARIES))})"
            )
        markers = self.squares_x * self.squares_y // 2
        available = cv2.aruco.getPredefinedDictionary(
            ARUCO_DICTIONARIES[self.dictionary]
        ).bytesList.shape[0]
        if markers > available:
            raise InvalidBoardError(
                f"a {self.squares_x}x{self.squares_y} board needs {markers} markers, "
                f"{self.dictionary} has {available}"
            )

    def to_dict(self) -> dict:
        return {
            "squares_x": self.squares_x,
            "squares_y": self.squares_y,
            "square_length_m": self.square_length_m,
            "marker_length_m": self.marker_length_m,
            "dictionary": self.dictionary,
            "legacy_pattern": self.legacy_pattern,
        }


def board_from_dict(values: object, where: str) -> CharucoBoardSpec:
    """The board of a YAML mapping; `where` (file and key) prefixes every error."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    try:
        return from_dict(CharucoBoardSpec, values, where)
    except InvalidBoardError as error:
        raise ConfigError(f"{where}: {error}") from None


@functools.lru_cache(maxsize=8)
def make_board(spec: CharucoBoardSpec) -> cv2.aruco.CharucoBoard:
    board = cv2.aruco.CharucoBoard(
        (spec.squares_x, spec.squares_y),
        spec.square_length_m,
        spec.marker_length_m,
        cv2.aruco.getPredefinedDictionary(ARUCO_DICTIONARIES[spec.dictionary]),
    )
    board.setLegacyPattern(spec.legacy_pattern)
    return board


@functools.lru_cache(maxsize=8)
def _detector(spec: CharucoBoardSpec) -> cv2.aruco.CharucoDetector:
    return cv2.aruco.CharucoDetector(make_board(spec))


def board_image(spec: CharucoBoardSpec, pixels_per_metre: float, margin_px: int = 0) -> np.ndarray:
    """The board as a grey uint8 image at `pixels_per_metre` (to print it, or to render it):
    the board's origin is the image's top-left corner plus the margin."""
    width = round(spec.squares_x * spec.square_length_m * pixels_per_metre) + 2 * margin_px
    height = round(spec.squares_y * spec.square_length_m * pixels_per_metre) + 2 * margin_px
    return make_board(spec).generateImage((width, height), marginSize=margin_px)


@dataclass(frozen=True, eq=False)
class CharucoDetection:
    corners: np.ndarray  # (n, 2) float64 pixel coordinates of the inner chessboard corners
    ids: np.ndarray  # (n,) int32 corner ids

    def __post_init__(self) -> None:
        if self.corners.shape != (len(self.ids), 2):
            raise ValueError(f"corners {self.corners.shape} do not match ids ({len(self.ids)},)")


def detect_charuco(image: np.ndarray, spec: CharucoBoardSpec) -> CharucoDetection:
    """The board's chessboard corners found in an RGB or grey uint8 image (none: empty arrays)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    corners, ids, _, _ = _detector(spec).detectBoard(grey)
    if ids is None:
        return CharucoDetection(np.zeros((0, 2)), np.zeros(0, dtype=np.int32))
    return CharucoDetection(
        corners.reshape(-1, 2).astype(np.float64), ids.reshape(-1).astype(np.int32)
    )


def corner_count(spec: CharucoBoardSpec) -> int:
    """How many chessboard corners the board has: ids run from 0 to this minus one."""
    return (spec.squares_x - 1) * (spec.squares_y - 1)


def board_points(spec: CharucoBoardSpec, ids: np.ndarray) -> np.ndarray:
    """(n, 3) positions of the given corner ids in the board frame, metres."""
    return make_board(spec).getChessboardCorners()[np.asarray(ids)].astype(np.float64)


@dataclass(frozen=True, eq=False)
class BoardPose:
    T_camera_board: np.ndarray  # (4, 4)
    reprojection_rms_px: float


def usable_for_pose(detection: CharucoDetection, spec: CharucoBoardSpec) -> str | None:
    """Why the detection gives no board pose, or None when it does."""
    count = len(detection.ids)
    if count < MIN_POSE_CORNERS:
        return f"{count} board corners found, {MIN_POSE_CORNERS} needed"
    if make_board(spec).checkCharucoCornersCollinear(detection.ids.reshape(-1, 1)):
        return "the board corners found lie on one line"
    return None


def estimate_board_pose(
    detection: CharucoDetection,
    spec: CharucoBoardSpec,
    camera_matrix: np.ndarray,
    distortion: np.ndarray,
) -> BoardPose | None:
    """T_camera_board from the detected corners (None where `usable_for_pose` says why not).

    IPPE gives the pose of a plane without an initial guess; Levenberg-Marquardt then refines it
    on the reprojection error, with the camera's distortion.
    """
    if usable_for_pose(detection, spec) is not None:
        return None
    object_points = board_points(spec, detection.ids)
    image_points = detection.corners
    found, rvec, tvec = cv2.solvePnP(
        object_points, image_points, camera_matrix, distortion, flags=cv2.SOLVEPNP_IPPE
    )
    if not found:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(
        object_points, image_points, camera_matrix, distortion, rvec, tvec
    )
    projected, _ = cv2.projectPoints(object_points, rvec, tvec, camera_matrix, distortion)
    errors = np.linalg.norm(projected.reshape(-1, 2) - image_points, axis=1)
    transform = np.eye(4)
    transform[:3, :3] = cv2.Rodrigues(rvec)[0]
    transform[:3, 3] = tvec.ravel()
    return BoardPose(
        T_camera_board=transform,
        reprojection_rms_px=float(np.sqrt(np.mean(errors**2))),
    )
