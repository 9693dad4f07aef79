"""Hand-eye calibration from a running cell: the calibration node's hardware-free core.

`onedp calibrate capture` moves the robot itself; this is the other way, for a cell already up
under ROS 2: the operator brings the robot into a pose (by teleop, or by hand in the robot's
guiding mode) with the board in view and asks for a sample; the session pairs the camera's
newest image with the robot pose measured closest to it in time, keeps it only when the board
gives a pose, and, when asked, solves and writes the samples directory (`onedp calibrate
handeye --samples` reads it again) and the hand-eye YAML -- or refuses, naming why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onedp_control.calibration.charuco import (
    CharucoBoardSpec,
    InvalidBoardError,
    detect_charuco,
    usable_for_pose,
)
from onedp_control.calibration.handeye import (
    EYE_IN_HAND,
    EYE_TO_HAND,
    HandEyeCalibration,
    HandEyeSample,
    SampleSet,
    measure_board_poses,
    save_handeye,
    save_samples,
    solve_hand_eye,
)
from onedp_control.calibration.intrinsics import CameraInfo
from onedp_control.errors import ConfigError

CAMERA_MODES = {"wrist": EYE_IN_HAND, "front": EYE_TO_HAND}


@dataclass(frozen=True)
class CalibrationParams:
    """The calibration node's parameters (ROS parameters of the node `calibration`)."""

    camera: str = "wrist"  # whose topics: wrist (eye-in-hand) or front (eye-to-hand)
    samples_dir: str = ""  # empty: calibration/samples_<camera>
    out: str = ""  # the hand-eye YAML; empty: calibration/handeye_<camera>.yaml
    # The robot pose paired with an image must be measured this close to the image's stamp;
    # hold the robot still while sampling.
    max_pose_skew_ms: float = 20.0
    max_translation_mm: float = 5.0  # refuse a solution with larger RMS board residuals
    max_rotation_deg: float = 1.0
    squares_x: int = 7  # the printed ChArUco board
    squares_y: int = 5
    square_length_m: float = 0.04
    marker_length_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    @property
    def mode(self) -> str:
        return CAMERA_MODES[self.camera]

    def board(self, where: str) -> CharucoBoardSpec:
        try:
            return CharucoBoardSpec(
                self.squares_x,
                self.squares_y,
                self.square_length_m,
                self.marker_length_m,
                self.dictionary,
            )
        except InvalidBoardError as error:
            raise ConfigError(f"{where}: {error}") from None

    def validate(self, where: str) -> None:
        if self.camera not in CAMERA_MODES:
            raise ConfigError(f"{where}: camera must be one of {', '.join(CAMERA_MODES)}")
        if not self.max_pose_skew_ms > 0:
            raise ConfigError(f"{where}: max_pose_skew_ms must be > 0")
        if not (self.max_translation_mm > 0 and self.max_rotation_deg > 0):
            raise ConfigError(f"{where}: max_translation_mm and max_rotation_deg must be > 0")
        self.board(where)

    def paths(self) -> tuple[Path, Path]:
        samples = Path(self.samples_dir or f"calibration/samples_{self.camera}")
        out = Path(self.out or f"calibration/handeye_{self.camera}.yaml")
        return samples, out


class CalibrationSession:
    def __init__(self, params: CalibrationParams, camera_serial: str = "") -> None:
        params.validate("calibration")
        self.params = params
        self.board = params.board("calibration")
        self.camera_serial = camera_serial
        self.samples: list[HandEyeSample] = []
        self._image_stamps: set[float] = set()

    def reset(self) -> int:
        """Drops the samples; returns how many there were."""
        count = len(self.samples)
        self.samples.clear()
        self._image_stamps.clear()
        return count

    def add(
        self,
        image: np.ndarray,
        image_stamp: float,
        poses: list[tuple[float, np.ndarray]],
    ) -> str:
        """Pairs `image` with the pose of `poses` ((stamp, T_base_gripper), any order) nearest
        its stamp; returns what was kept. ConfigError when the sample is unusable."""
        if image_stamp in self._image_stamps:
            # A second request before a new frame came (a double press): one view, one sample.
            raise ConfigError("this image is a sample already: wait for a new frame")
        if not poses:
            raise ConfigError("no robot pose received yet (/robot/ee_pose)")
        stamp, pose = min(poses, key=lambda entry: abs(entry[0] - image_stamp))
        skew_ms = abs(stamp - image_stamp) * 1e3
        if skew_ms > self.params.max_pose_skew_ms:
            raise ConfigError(
                f"the nearest robot pose is {skew_ms:.0f} ms from the image "
                f"(max_pose_skew_ms {self.params.max_pose_skew_ms:g}): is the robot state flowing?"
            )
        detection = detect_charuco(image, self.board)
        problem = usable_for_pose(detection, self.board)
        if problem is not None:
            raise ConfigError(f"sample not kept: {problem}")
        self.samples.append(HandEyeSample(np.asarray(pose, float), image=image.copy()))
        self._image_stamps.add(image_stamp)
        return f"sample {len(self.samples)}: {len(detection.ids)} board corners"

    def solve(self, camera: CameraInfo) -> tuple[HandEyeCalibration, Path, Path]:
        """Solves, then writes the samples directory and the hand-eye YAML (replacing earlier
        ones). CalibrationRefusedError / ConfigError when the samples do not make a solution;
        nothing is written then."""
        sample_set = SampleSet(
            board=self.board,
            samples=list(self.samples),
            camera_serial=self.camera_serial,
            mode=self.params.mode,
        )
        measured = measure_board_poses(sample_set, camera)
        result = solve_hand_eye(
            self.params.mode,
            measured.T_base_gripper,
            measured.T_camera_board,
            camera_serial=self.camera_serial,
            max_translation_mm=self.params.max_translation_mm,
            max_rotation_deg=self.params.max_rotation_deg,
            sample_names=measured.names,
        )
        samples_dir, out = self.params.paths()
        save_samples(samples_dir, sample_set, overwrite=True)
        save_handeye(result, out)
        return result, samples_dir, out
