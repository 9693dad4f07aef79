"""Camera calibration on synthetic data with known answers.

Images are rendered, not drawn from a recording: a generated ChArUco board is mapped through a
known pose, camera matrix and distortion into each pixel (`SyntheticCamera`), so detection,
pose estimation and calibration run on real pixels. Pose-only tests project the board corners
with cv2.projectPoints and add pixel noise. Hand-eye ground truths are the simulated cell's
cameras: the wrist camera on the hand and the front camera in the base frame of the MuJoCo world.

Tolerances: intrinsics fx, fy within 1 %, cx, cy within 4 px (0.3 % distortion-free views would
do better; these have RealSense-like distortion and sensor noise). Hand-eye, from 13 poses with
0.1 px corner noise and 0.2 mm / 0.02 deg robot pose noise: rotation within 0.5 deg, a point on
the board (where the camera looks) within 2 mm, and the camera's origin within 2 mm on the hand
(eye-in-hand) and 3 mm in the base frame (eye-to-hand: the front camera stands 0.7 m from the
board, so 0.2 deg of rotation error moves its origin by 2.5 mm).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pyrealsense2 as rs
import pytest
import yaml

from onedp_control.calibration import cli as calibrate_cli
from onedp_control.calibration.charuco import (
    CharucoBoardSpec,
    CharucoDetection,
    board_image,
    board_points,
    corner_count,
    detect_charuco,
    estimate_board_pose,
)
from onedp_control.calibration.cli import add_calibrate_parser
from onedp_control.calibration.handeye import (
    EYE_IN_HAND,
    EYE_TO_HAND,
    HAND_EYE_METHODS,
    MODES,
    CalibrationRefusedError,
    HandEyeSample,
    ReachTolerance,
    SampleSet,
    calibration_poses,
    check_pose_diversity,
    guided_capture,
    handeye_to_yaml,
    invert_transform,
    load_handeye,
    load_samples,
    make_transform,
    measure_board_poses,
    rotation_angle_deg,
    save_handeye,
    save_samples,
    solve_hand_eye,
)
from onedp_control.calibration.intrinsics import (
    CameraInfo,
    calibrate_intrinsics,
    camera_info_to_yaml,
    load_camera_info,
    read_device_intrinsics,
    save_camera_info,
)
from onedp_control.cameras.realsense import CameraFrame
from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_rotvec
from onedp_control.robots.base import Robot, RobotError, RobotState
from onedp_control.robots.sim_robot import SimRobot
from onedp_control.sim.scene import FRONT_CAMERA, WRIST_CAMERA
from onedp_control.sim.world import PnpMilkWorld

ROOT = Path(__file__).resolve().parents[1]
BOARD = CharucoBoardSpec(squares_x=7, squares_y=5, square_length_m=0.04, marker_length_m=0.03)
BOARD_CENTRE = np.array([BOARD.squares_x, BOARD.squares_y, 0.0]) * BOARD.square_length_m / 2
SIZE = (640, 480)  # width, height
# About a D435's colour camera at 640x480.
CAMERA_MATRIX = np.array([[615.0, 0.0, 322.0], [0.0, 612.0, 238.0], [0.0, 0.0, 1.0]])
DISTORTION = np.array([0.08, -0.15, 0.001, -0.0005, 0.0])
NO_DISTORTION = np.zeros(5)
# OpenCV's optical frame from MuJoCo's camera frame (which looks along -z with y up).
OPTICAL_FROM_MUJOCO = np.diag([1.0, -1.0, -1.0])


def translation_mm(a: np.ndarray, b: np.ndarray) -> float:
    return float(1000 * np.linalg.norm(a[:3, 3] - b[:3, 3]))


def rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    return rotation_angle_deg(a[:3, :3].T @ b[:3, :3])


@pytest.fixture(autouse=True, scope="module")
def one_opencv_thread():
    """On 640x480 images OpenCV's thread pool gains little, and on a busy machine its threads
    wait for cores: one thread keeps this file at a few seconds."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(threads)


class SyntheticCamera:
    """Renders the board as the camera sees it: each pixel's ray (undistorted once) meets the
    board plane at a point, which is looked up in a generated board image."""

    def __init__(self, camera_matrix: np.ndarray, distortion: np.ndarray) -> None:
        width, height = SIZE
        pixels = np.stack(np.meshgrid(np.arange(width), np.arange(height)), -1).astype(np.float32)
        normalised = cv2.undistortPoints(pixels.reshape(-1, 1, 2), camera_matrix, distortion)
        self.rays = np.concatenate(
            [normalised.reshape(-1, 2), np.ones((width * height, 1))], axis=1
        )
        self.pixels_per_metre = 4000.0
        self.margin_px = 80  # a white border around the board, as printed
        # Blurred to about a camera pixel, so that the lookup does not alias.
        self.board = cv2.GaussianBlur(
            board_image(BOARD, self.pixels_per_metre, self.margin_px), (0, 0), 2.0
        )

    def render(self, camera_board: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rotation, origin = camera_board[:3, :3], camera_board[:3, 3]
        normal = rotation[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = (normal @ origin) / (self.rays @ normal)
        points = (depth[:, None] * self.rays - origin) @ rotation  # in the board frame
        lookup = points[:, :2] * self.pixels_per_metre + self.margin_px - 0.5
        lookup[~(depth > 0)] = -1e4
        width, height = SIZE
        grey = cv2.remap(
            self.board,
            lookup[:, 0].reshape(height, width).astype(np.float32),
            lookup[:, 1].reshape(height, width).astype(np.float32),
            cv2.INTER_LINEAR,
            borderValue=90,
        ).astype(np.float64)
        grey += rng.normal(0.0, 2.0, grey.shape)
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def distorted_camera() -> SyntheticCamera:
    return SyntheticCamera(CAMERA_MATRIX, DISTORTION)


def facing_pose(distance_m: float, tilt: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """T_camera_board with the board's centre `distance_m` ahead (plus `offset`), tilted."""
    rotation = matrix_from_rotvec(tilt)
    return make_transform(rotation, np.array([*offset, distance_m]) - rotation @ BOARD_CENTRE)


def projected_detection(
    camera_board: np.ndarray, rng: np.random.Generator, noise_px: float = 0.1
) -> CharucoDetection:
    """The corners the camera sees, projected with pixel noise instead of rendered."""
    ids = np.arange(corner_count(BOARD), dtype=np.int32)
    rvec = cv2.Rodrigues(camera_board[:3, :3])[0]
    projected, _ = cv2.projectPoints(
        board_points(BOARD, ids), rvec, camera_board[:3, 3], CAMERA_MATRIX, NO_DISTORTION
    )
    corners = projected.reshape(-1, 2) + rng.normal(0.0, noise_px, (len(ids), 2))
    inside = np.all((corners >= 0) & (corners < SIZE), axis=1)
    return CharucoDetection(corners[inside], ids[inside])


def perturbed(pose: np.ndarray, rng: np.random.Generator, metres: float, deg: float):
    noise = make_transform(
        matrix_from_rotvec(rng.normal(0.0, np.radians(deg), 3)), rng.normal(0.0, metres, 3)
    )
    return pose @ noise


# ----------------------------------------------------------------------------- intrinsics
def software_camera(
    serial: str, model: rs.distortion = rs.distortion.inverse_brown_conrady
) -> rs.software_device:
    """A RealSense device made in the SDK with a colour profile and its intrinsics."""
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, serial)
    device.register_info(rs.camera_info.name, "Intel RealSense D435")
    sensor = device.add_sensor("RGB Camera")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = SIZE
    intrinsics.fx, intrinsics.fy = 615.25, 612.5
    intrinsics.ppx, intrinsics.ppy = 322.1, 238.3
    intrinsics.model = model
    intrinsics.coeffs = [0.08, -0.15, 0.001, -0.0005, 0.02]
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height = SIZE
    stream.fps, stream.bpp, stream.fmt = 30, 3, rs.format.rgb8
    stream.intrinsics = intrinsics
    sensor.add_video_stream(stream, True)
    return device


def test_device_intrinsics_through_the_sdk_round_trip_a_file(tmp_path):
    info = read_device_intrinsics(software_camera("000000000435"), 640, 480, 30)
    assert (info.serial, info.camera_name, info.width, info.height) == (
        "000000000435",
        "realsense_000000000435",
        640,
        480,
    )
    # The SDK keeps float32; the file gets their shortest decimal form.
    np.testing.assert_array_equal(
        info.camera_matrix, [[615.25, 0, 322.1], [0, 612.5, 238.3], [0, 0, 1]]
    )
    assert info.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(info.distortion_coefficients, [0.08, -0.15, 0.001, -0.0005, 0.02])
    assert "Intel RealSense D435" in info.source and "inverse_brown_conrady" in info.source

    path = tmp_path / "000000000435.yaml"
    save_camera_info(info, path)
    loaded = load_camera_info(path)
    np.testing.assert_array_equal(loaded.camera_matrix, info.camera_matrix)
    np.testing.assert_array_equal(loaded.distortion_coefficients, info.distortion_coefficients)
    assert (loaded.serial, loaded.source) == (info.serial, info.source)
    # ROS camera_calibration_parsers' keys are all there.
    values = yaml.safe_load(path.read_text())
    assert values["projection_matrix"]["data"][:3] == [615.25, 0.0, 322.1]


def test_device_intrinsics_errors_name_what_is_missing():
    with pytest.raises(
        ConfigError, match=r"no colour profile 1280x720 at 30 fps \(offered: 640x48"
    ):
        read_device_intrinsics(software_camera("1"), 1280, 720, 30)
    with pytest.raises(ConfigError, match="kannala_brandt4"):
        read_device_intrinsics(software_camera("1", rs.distortion.kannala_brandt4))
    with pytest.raises(ConfigError, match="no RealSense camera with serial not-a-serial"):
        read_device_intrinsics("not-a-serial")


def test_charuco_fit_recovers_the_intrinsics(tmp_path, distorted_camera):
    rng = np.random.default_rng(1)
    images = {}
    for index in range(12):
        tilt = np.radians(rng.uniform(15, 35)) * np.array([np.cos(index), np.sin(index), 0.0])
        offset = rng.uniform(-0.05, 0.05, 2)
        pose = facing_pose(
            rng.uniform(0.32, 0.45), tilt + np.array([0, 0, rng.uniform(-0.3, 0.3)]), offset
        )
        images[f"view{index:02d}.png"] = distorted_camera.render(pose, rng)
        cv2.imwrite(str(tmp_path / f"view{index:02d}.png"), images[f"view{index:02d}.png"])
    out = tmp_path / "000000000435.yaml"
    assert (
        run_cli(
            [
                "calibrate",
                "intrinsics",
                "--serial",
                "000000000435",
                "--images",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    info = load_camera_info(out)
    fitted = info.camera_matrix
    assert fitted[0, 0] == pytest.approx(CAMERA_MATRIX[0, 0], rel=0.01)
    assert fitted[1, 1] == pytest.approx(CAMERA_MATRIX[1, 1], rel=0.01)
    assert (
        abs(fitted[0, 2] - CAMERA_MATRIX[0, 2]) < 4 and abs(fitted[1, 2] - CAMERA_MATRIX[1, 2]) < 4
    )
    assert info.distortion_coefficients[0] == pytest.approx(DISTORTION[0], abs=0.03)
    assert info.reprojection_rms_px < 0.5 and info.source == "ChArUco fit, 12 views"

    with pytest.raises(ConfigError, match="5 usable board views, 8 needed"):
        calibrate_intrinsics(dict(list(images.items())[:5]), BOARD, camera_name="t", serial="1")


def test_board_pose_from_a_rendered_image(distorted_camera):
    rng = np.random.default_rng(2)
    truth = facing_pose(0.4, np.radians([20.0, -10.0, 30.0]), np.array([0.02, -0.01]))
    detection = detect_charuco(distorted_camera.render(truth, rng), BOARD)
    assert len(detection.ids) == corner_count(BOARD)
    pose = estimate_board_pose(detection, BOARD, CAMERA_MATRIX, DISTORTION)
    assert pose is not None and pose.reprojection_rms_px < 0.3
    assert translation_mm(pose.T_camera_board, truth) < 1.0
    assert rotation_deg(pose.T_camera_board, truth) < 0.3
    # A view with too few corners gives no pose rather than a bad one.
    few = CharucoDetection(detection.corners[:4], detection.ids[:4])
    assert estimate_board_pose(few, BOARD, CAMERA_MATRIX, DISTORTION) is None


# ----------------------------------------------------------------------------- hand-eye
@pytest.fixture(scope="module")
def sim_cameras() -> dict[str, np.ndarray]:
    """The simulated cell's ground truth: T_tcp_camera (wrist) and T_base_camera (front)."""
    world = PnpMilkWorld("pnp_milk", render=False)
    world.reset(0)
    tcp = make_transform(*reversed(world.tcp_pose()))
    poses = {}
    for name in (WRIST_CAMERA, FRONT_CAMERA):
        camera = world.model.camera(name).id
        rotation = world.data.cam_xmat[camera].reshape(3, 3) @ OPTICAL_FROM_MUJOCO
        poses[name] = make_transform(rotation, world.data.cam_xpos[camera])
    return {"wrist": invert_transform(tcp) @ poses[WRIST_CAMERA], "front": poses[FRONT_CAMERA]}


CENTRE = make_transform(np.diag([1.0, -1.0, -1.0]), [0.45, 0.0, 0.3])  # pointing down


def board_on_table(centre_xy: np.ndarray) -> np.ndarray:
    """T_base_board of a board lying printed side up, its centre at `centre_xy`."""
    rotation = np.diag([1.0, -1.0, -1.0])  # z into the table
    return make_transform(rotation, np.array([*centre_xy, 0.0]) - rotation @ BOARD_CENTRE)


def board_facing(base_camera: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """T_base_board of a board centred at `centre`, square on to the camera."""
    z_axis = centre - base_camera[:3, 3]
    z_axis /= np.linalg.norm(z_axis)
    x_axis = base_camera[:3, 0] - (base_camera[:3, 0] @ z_axis) * z_axis
    x_axis /= np.linalg.norm(x_axis)
    rotation = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis], axis=1)
    return make_transform(rotation, centre - rotation @ BOARD_CENTRE)


def synthetic_samples(
    mode: str, truth: np.ndarray, robot_noise_m: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Measured T_base_gripper and estimated T_camera_board over the default pose set."""
    rng = np.random.default_rng(seed)
    if mode == EYE_IN_HAND:
        base_board = board_on_table((CENTRE @ truth)[:2, 3])
        poses = calibration_poses(CENTRE, 13, pivot_distance_m=0.3)
    else:
        gripper_board = invert_transform(CENTRE) @ board_facing(
            truth, CENTRE[:3, 3] + [0.08, 0.0, -0.05]
        )
        poses = calibration_poses(CENTRE, 13)
    gripper_poses, board_poses = [], []
    for pose in poses:
        if mode == EYE_IN_HAND:
            camera_board = invert_transform(pose @ truth) @ base_board
        else:
            camera_board = invert_transform(truth) @ pose @ gripper_board
        estimate = estimate_board_pose(
            projected_detection(camera_board, rng), BOARD, CAMERA_MATRIX, NO_DISTORTION
        )
        assert estimate is not None
        gripper_poses.append(perturbed(pose, rng, robot_noise_m, 0.02))
        board_poses.append(estimate.T_camera_board)
    return gripper_poses, board_poses


@pytest.mark.parametrize(
    ("mode", "camera", "origin_mm"), [(EYE_IN_HAND, "wrist", 2.0), (EYE_TO_HAND, "front", 4.0)]
)
def test_hand_eye_recovers_the_camera_pose(mode, camera, origin_mm, sim_cameras):
    truth = sim_cameras[camera]
    gripper_poses, board_poses = synthetic_samples(mode, truth, 0.0002, seed=3)
    result = solve_hand_eye(mode, gripper_poses, board_poses, camera_serial="1")
    assert rotation_deg(result.transform, truth) < 0.5
    board_centre = board_poses[0] @ [*BOARD_CENTRE, 1.0]  # in the camera frame
    assert 1000 * np.linalg.norm((result.transform - truth) @ board_centre) < 2.0
    assert translation_mm(result.transform, truth) < origin_mm
    assert result.residuals.samples == 13
    assert result.residuals.translation_rms_mm < 2.0 and result.residuals.rotation_rms_deg < 0.5


def test_hand_eye_refuses_a_noisy_solution(sim_cameras):
    gripper_poses, board_poses = synthetic_samples(EYE_IN_HAND, sim_cameras["wrist"], 0.008, 4)
    with pytest.raises(
        CalibrationRefusedError, match=r"refused: .* RMS across 13 samples .* worst"
    ):
        solve_hand_eye(EYE_IN_HAND, gripper_poses, board_poses)
    # The same samples pass limits wide enough for them.
    solve_hand_eye(EYE_IN_HAND, gripper_poses, board_poses, max_translation_mm=50)


def about_gripper_axis(axis: tuple[float, float, float], angles_deg: list[float]):
    return [
        CENTRE @ make_transform(matrix_from_rotvec(np.radians(a) * np.array(axis)), np.zeros(3))
        for a in angles_deg
    ]


@pytest.mark.parametrize(
    ("poses", "message"),
    [
        (about_gripper_axis((1, 0, 0), [0, 20]), "2 usable samples; .* at least 3"),
        (about_gripper_axis((0, 0, 1), [-25, -10, 0, 12, 25]), "all about one axis"),
        (about_gripper_axis((1, 1, 0), [0, 20, -20, 5]), "all about one axis"),
        (
            [
                CENTRE
                @ make_transform(
                    matrix_from_rotvec(np.radians(2) * np.eye(3)[i % 3]), [0.05 * i, 0, 0]
                )
                for i in range(6)
            ],
            "turns at most .* needs 10 deg",
        ),
    ],
)
def test_degenerate_pose_sets_are_refused_before_solving(poses, message):
    with pytest.raises(ConfigError, match=message):
        check_pose_diversity(poses)
    with pytest.raises(ConfigError, match=message):
        solve_hand_eye(EYE_IN_HAND, poses, [np.eye(4)] * len(poses))


def test_default_pose_set_is_well_conditioned():
    poses = calibration_poses(CENTRE, 13, tilt_deg=(15, 25), pivot_distance_m=0.3)
    assert len(poses) == 13 and np.array_equal(poses[0], CENTRE)
    pivot = CENTRE[:3, 3] + CENTRE[:3, 2] * 0.3
    for pose in poses[1:]:
        assert 15 - 1e-9 <= rotation_deg(pose, CENTRE) <= 25 + 1e-9
        np.testing.assert_allclose(pose[:3, 3] + pose[:3, 2] * 0.3, pivot, atol=1e-12)
    check_pose_diversity(poses)
    with pytest.raises(ConfigError, match="tilt"):
        calibration_poses(CENTRE, 13, tilt_deg=(0, 25))


# ----------------------------------------------------------------------------- guided capture
class BoardViewCamera:
    """The sim's wrist camera looking at a board on the table: each frame is rendered from the
    camera's pose in the MuJoCo world at that moment."""

    def __init__(self, world: PnpMilkWorld, renderer: SyntheticCamera, base_board: np.ndarray):
        self.world, self.renderer, self.base_board = world, renderer, base_board
        self.rng = np.random.default_rng(5)
        self.frames = 0

    def wait_frames(self, timeout_s: float) -> dict[str, CameraFrame]:
        camera = self.world.model.camera(WRIST_CAMERA).id
        rotation = self.world.data.cam_xmat[camera].reshape(3, 3) @ OPTICAL_FROM_MUJOCO
        base_camera = make_transform(rotation, self.world.data.cam_xpos[camera])
        rgb = self.renderer.render(invert_transform(base_camera) @ self.base_board, self.rng)
        self.frames += 1
        return {"wrist": CameraFrame("wrist", rgb, self.world.time, self.frames)}


def test_cli_choices_match_the_library():
    assert calibrate_cli.MODES == MODES
    assert ("auto", *HAND_EYE_METHODS) == calibrate_cli.METHODS


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onedp")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_guided_capture_on_the_sim_robot_then_the_cli_solves_it(tmp_path, sim_cameras):
    world = PnpMilkWorld("pnp_milk", render=False)
    robot = SimRobot(world)
    robot.reset(0, wall_time=0.0)
    renderer = SyntheticCamera(CAMERA_MATRIX, NO_DISTORTION)
    base_board = board_on_table((CENTRE @ sim_cameras["wrist"])[:2, 3])

    def advance(seconds: float) -> None:
        for _ in range(max(1, round(seconds / world.task.control_period_s))):
            robot.advance()

    samples = guided_capture(
        robot,
        BoardViewCamera(world, renderer, base_board),
        calibration_poses(CENTRE, 13, pivot_distance_m=0.3),
        "wrist",
        tolerance=ReachTolerance(position_m=0.001, rotation_deg=0.2),
        timeout_s=5.0,
        settle_s=0.1,
        poll_s=0.05,
        sleep=advance,
        clock=lambda: world.time,
    )
    assert len(samples) == 13 and world.time < 30.0
    for sample, target in zip(
        samples, calibration_poses(CENTRE, 13, pivot_distance_m=0.3), strict=True
    ):
        assert translation_mm(sample.T_base_gripper, target) < 1.0

    samples_dir = tmp_path / "wrist_samples"
    save_samples(samples_dir, SampleSet(BOARD, samples, camera_serial="435", mode=EYE_IN_HAND))
    camera_info = tmp_path / "435.yaml"
    save_camera_info(
        CameraInfo("realsense_435", "435", *SIZE, CAMERA_MATRIX, "plumb_bob", NO_DISTORTION),
        camera_info,
    )
    out = tmp_path / "handeye_435.yaml"
    common = ["--samples", str(samples_dir), "--camera-info", str(camera_info), "--out", str(out)]
    assert run_cli(["calibrate", "handeye", "--mode", EYE_IN_HAND, *common]) == 0
    result = load_handeye(out)
    assert translation_mm(result.transform, sim_cameras["wrist"]) < 2.0
    assert rotation_deg(result.transform, sim_cameras["wrist"]) < 0.5
    assert translation_mm(result.board_pose, base_board) < 2.0

    with pytest.raises(ConfigError, match="already exists"):
        run_cli(["calibrate", "handeye", "--mode", EYE_IN_HAND, *common])
    with pytest.raises(ConfigError, match="recorded for eye-in-hand, but --mode is eye-to-hand"):
        run_cli(["calibrate", "handeye", "--mode", EYE_TO_HAND, *common, "--overwrite"])
    with pytest.raises(ConfigError, match=rf"{samples_dir}: eye-in-hand solution refused"):
        run_cli(
            [
                "calibrate",
                "handeye",
                "--mode",
                EYE_IN_HAND,
                *common,
                "--overwrite",
                "--max-translation-mm",
                "0.001",
            ]
        )


def test_capture_looks_for_the_camera_before_the_robot(tmp_path, capsys):
    status = run_cli(
        [
            "calibrate",
            "capture",
            "--robot-host",
            "192.0.2.1",
            "--serial",
            "not-a-serial",
            "--mode",
            EYE_IN_HAND,
            "--out",
            str(tmp_path / "samples"),
            "--yes",
        ]
    )
    assert status == 1
    assert "no RealSense device with serial not-a-serial" in capsys.readouterr().err
    assert not (tmp_path / "samples").exists()


class StuckRobot(Robot):
    """A robot that accepts targets and never moves."""

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def get_state(self) -> RobotState:
        return RobotState(0.0, CENTRE[:3, 3], CENTRE[:3, :3], 0.08, np.zeros(7))

    def send_target(self, position, rotation, gripper_width) -> None: ...

    def hold(self) -> None: ...

    def recover(self) -> None: ...


def test_guided_capture_gives_up_on_a_pose_it_cannot_reach():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    far = [CENTRE @ make_transform(np.eye(3), [0.0, 0.0, 0.1])]
    with pytest.raises(RobotError, match=r"did not reach the pose within 1.0 s: still 100.0 mm"):
        guided_capture(
            StuckRobot(), None, far, "wrist", timeout_s=1.0, sleep=sleep, clock=lambda: now[0]
        )


# ----------------------------------------------------------------------------- files
def valid_camera_info() -> dict:
    return camera_info_to_yaml(
        CameraInfo("realsense_1", "1", *SIZE, CAMERA_MATRIX, "plumb_bob", DISTORTION)
    )


def broken(change) -> dict:
    values = valid_camera_info()
    change(values)
    return values


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image_width: [640\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
        (broken(lambda v: v.pop("camera_matrix")), "missing required key 'camera_matrix'"),
        (broken(lambda v: v["camera_matrix"]["data"].pop()), r"camera_matrix.data: expected 9"),
        (broken(lambda v: v["camera_matrix"].update(rows=2)), "camera_matrix: expected rows 3"),
        (broken(lambda v: v["camera_matrix"]["data"].__setitem__(0, "x")), r"data\[0\]: expected"),
        (broken(lambda v: v["camera_matrix"]["data"].__setitem__(2, 700.0)), "inside the 640x480"),
        (broken(lambda v: v.update(distortion_model="fisheye")), "distortion_model: expected one"),
        (
            broken(lambda v: v["distortion_coefficients"].update(cols=4)),
            "distortion_coefficients: expected rows 1 and cols 5",
        ),
        (broken(lambda v: v.update(serial=123)), r"serial: expected a non-empty string \(quote it"),
        (broken(lambda v: v.update(fx=1.0)), "unknown key 'fx'"),
        (broken(lambda v: v.update(image_width=0)), "image_width: expected a positive integer"),
    ],
)
def test_malformed_camera_info_names_file_and_field(tmp_path, content, message):
    path = tmp_path / "camera.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=rf"^{path}: .*{message}"):
        load_camera_info(path)


def test_handeye_file_round_trip_and_malformed_fields(tmp_path, sim_cameras):
    gripper_poses, board_poses = synthetic_samples(EYE_TO_HAND, sim_cameras["front"], 0.0002, 6)
    result = solve_hand_eye(EYE_TO_HAND, gripper_poses, board_poses, camera_serial="415")
    path = tmp_path / "handeye.yaml"
    save_handeye(result, path)
    loaded = load_handeye(path)
    assert translation_mm(loaded.transform, result.transform) < 1e-3
    assert rotation_deg(loaded.transform, result.transform) < 1e-5
    assert loaded.residuals.samples == 13 and loaded.camera_serial == "415"
    assert loaded.residuals.translation_rms_mm == pytest.approx(
        result.residuals.translation_rms_mm, abs=1e-3
    )

    def check(change, message: str) -> None:
        values = handeye_to_yaml(result)
        change(values)
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ConfigError, match=rf"^{path}: .*{message}"):
            load_handeye(path)

    check(lambda v: v.update(quaternion_wxyz=[1.0, 0.0, 0.0]), "quaternion_wxyz: expected 4")
    check(lambda v: v.update(quaternion_wxyz=[1.0, 0.5, 0.0, 0.0]), "unit quaternion")
    check(lambda v: v.update(parent_frame="gripper"), "parent_frame must be 'base'")
    check(lambda v: v.pop("residuals"), "missing required key 'residuals'")
    check(lambda v: v.update(mode="eye-on-hand"), "mode: expected one of")
    check(lambda v: v["board_pose"].update(frame="base"), "board_pose: expected a mapping with")


def test_samples_files_yaml_with_detections_and_npz(tmp_path, sim_cameras):
    rng = np.random.default_rng(7)
    gripper_poses, board_poses = synthetic_samples(EYE_TO_HAND, sim_cameras["front"], 0.0, 8)
    detections = [projected_detection(pose, rng) for pose in board_poses]
    sample_set = SampleSet(
        BOARD,
        [HandEyeSample(g, detection=d) for g, d in zip(gripper_poses, detections, strict=True)],
    )
    save_samples(tmp_path / "detections", sample_set)
    loaded = load_samples(tmp_path / "detections" / "samples.yaml")
    camera = CameraInfo("c", "1", *SIZE, CAMERA_MATRIX, "plumb_bob", NO_DISTORTION)
    measured = measure_board_poses(loaded, camera)
    assert len(measured.names) == 13 and not measured.skipped
    np.testing.assert_allclose(measured.T_base_gripper[3], gripper_poses[3], atol=1e-6)

    npz = tmp_path / "samples.npz"
    images = np.zeros((3, 48, 64, 3), np.uint8)
    np.savez(
        npz,
        T_base_gripper=np.stack(gripper_poses[:3]),
        images=images,
        board=json.dumps(BOARD.to_dict()),
        mode=EYE_TO_HAND,
    )
    from_npz = load_samples(npz)
    assert from_npz.mode == EYE_TO_HAND and len(from_npz.samples) == 3
    with pytest.raises(ConfigError, match="the image is 64x48, the camera info is for 640x480"):
        measure_board_poses(from_npz, camera)

    np.savez(npz, T_base_gripper=np.zeros((3, 3, 3)), images=images, board="{}")
    with pytest.raises(ConfigError, match=r"T_base_gripper: expected \(N, 4, 4\)"):
        load_samples(npz)

    path = tmp_path / "bad.yaml"
    entry = {"T_base_gripper": {"translation": [0, 0, 0], "quaternion_wxyz": [1, 0, 0, 0]}}
    for bad, message in [
        ({**entry, "image": "a.png", "ids": [0]}, "either image or corners and ids"),
        ({**entry, "corners": [[1.0, 2.0]], "ids": [99]}, r"ids: expected a list of corner ids"),
        ({**entry, "image": "missing.png"}, "image: cannot read"),
        ({"corners": [], "ids": []}, "missing required key 'T_base_gripper'"),
    ]:
        path.write_text(yaml.safe_dump({"board": BOARD.to_dict(), "samples": [bad]}))
        with pytest.raises(ConfigError, match=rf"^{path}: samples\[0\].*{message}"):
            load_samples(path)
    path.write_text(
        yaml.safe_dump({"board": {**BOARD.to_dict(), "marker_length_m": 0.05}, "samples": []})
    )
    with pytest.raises(ConfigError, match=rf"^{path}: board: need 0 < marker_length_m"):
        load_samples(path)


@pytest.mark.parametrize("name", ["front_d415.example.yaml", "wrist_d435.example.yaml"])
def test_example_camera_info_files_load(name):
    assert load_camera_info(ROOT / "calibration" / name).width == 640


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("handeye_front_d415.example.yaml", EYE_TO_HAND),
        ("handeye_wrist_d435.example.yaml", EYE_IN_HAND),
    ],
)
def test_example_handeye_files_load(name, mode):
    assert load_handeye(ROOT / "calibration" / name).mode == mode


# ----------------------------------------------------------------------------- over ROS 2
class BoardCell:
    """The test in the cell's place for the calibration node: publishes the wrist camera's
    rendered board view, its CameraInfo and the measured gripper pose, and calls the node's
    services."""

    def __init__(self) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo as CameraInfoMessage
        from sensor_msgs.msg import Image

        from onedp_control.ros.common import SENSOR_QOS
        from onedp_control.runtime.graph import CAMERA_INFO_TOPIC, EE_POSE_TOPIC, IMAGE_TOPIC

        self.node = rclpy.create_node("board_cell")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        topic = {"camera": "wrist"}
        self.image = self.node.create_publisher(Image, IMAGE_TOPIC.format(**topic), SENSOR_QOS)
        self.info = self.node.create_publisher(
            CameraInfoMessage, CAMERA_INFO_TOPIC.format(**topic), SENSOR_QOS
        )
        self.pose = self.node.create_publisher(PoseStamped, EE_POSE_TOPIC, SENSOR_QOS)

    def wait_for_the_node(self, timeout: float = 60.0) -> None:
        """Until the node listens to all three topics: a view published before is lost."""
        import time

        deadline = time.time() + timeout
        publishers = (self.image, self.info, self.pose)
        while not all(p.get_subscription_count() > 0 for p in publishers):
            assert time.time() < deadline, "the calibration node never subscribed"
            self.executor.spin_once(timeout_sec=0.1)

    def show(self, rgb: np.ndarray, gripper: np.ndarray, stamp: float) -> None:
        """Publishes the view and the pose a few times (best-effort QoS), then lets them land."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo as CameraInfoMessage

        from onedp_control.geometry import quat_from_matrix
        from onedp_control.ros.common import image_message, to_stamp

        info = CameraInfoMessage(width=SIZE[0], height=SIZE[1], distortion_model="plumb_bob")
        info.header.stamp, info.header.frame_id = to_stamp(stamp), "wrist_camera"
        info.k, info.d = CAMERA_MATRIX.ravel().tolist(), DISTORTION.tolist()
        pose = PoseStamped()
        pose.header.stamp = to_stamp(stamp)
        p, o = pose.pose.position, pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in gripper[:3, 3])
        o.w, o.x, o.y, o.z = (float(v) for v in quat_from_matrix(gripper[:3, :3]))
        for _ in range(3):
            self.image.publish(image_message(rgb, stamp, "wrist_camera"))
            self.info.publish(info)
            self.pose.publish(pose)
            self.executor.spin_once(timeout_sec=0.05)

    def capture(self, rgb: np.ndarray, gripper: np.ndarray, stamp: float):
        """Shows the view until the node's capture answers for this very image (frames are
        best effort: the first may not have landed when the request is served)."""
        from onedp_control.runtime.graph import CALIBRATION_CAPTURE_SERVICE

        for _ in range(50):
            self.show(rgb, gripper, stamp)
            answer = self.call(CALIBRATION_CAPTURE_SERVICE)
            if answer.message.startswith(f"image {stamp:.3f}:"):
                return answer
        raise AssertionError(f"the node never used the image of {stamp}: {answer.message}")

    def call(self, service: str, timeout: float = 60.0):
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"{service} never appeared"
            future = client.call_async(Trigger.Request())
            self.executor.spin_until_future_complete(future, timeout_sec=timeout)
            assert future.done(), f"{service} did not answer in {timeout} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.mark.slow
def test_the_calibration_node_keeps_board_views_and_solves_over_ros(
    tmp_path, monkeypatch, sim_cameras, distorted_camera
):
    rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (./setup.sh)")
    import os

    from onedp_control.ros.runner import GraphRunner
    from onedp_control.runtime.graph import (
        CALIBRATION_SOLVE_SERVICE,
        LaunchArguments,
        node_spec,
    )

    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    config = ROOT / "config" / "pnp_milk.yaml"
    out, samples = tmp_path / "handeye_wrist.yaml", tmp_path / "samples_wrist"
    runner = GraphRunner(config, LaunchArguments(config=str(config), sim=True), {})
    runner.nodes = [
        node_spec(
            "calibration",
            False,
            {"camera": "wrist", "out": str(out), "samples_dir": str(samples), "camera_serial": "7"},
        )
    ]
    truth = sim_cameras["wrist"]
    base_board = board_on_table((CENTRE @ truth)[:2, 3])
    rng = np.random.default_rng(11)
    rclpy.init()
    cell = BoardCell()
    runner.start(tmp_path / "logs")
    try:
        cell.wait_for_the_node()
        refused = cell.capture(np.full((*SIZE[::-1], 3), 90, np.uint8), CENTRE, 1000.0)
        assert not refused.success and "0 board corners found" in refused.message
        refused = cell.call(CALIBRATION_SOLVE_SERVICE)
        assert not refused.success and not out.exists(), refused.message
        for index, pose in enumerate(calibration_poses(CENTRE, 13, pivot_distance_m=0.3)):
            view = distorted_camera.render(invert_transform(pose @ truth) @ base_board, rng)
            kept = cell.capture(view, pose, 1001.0 + index)
            assert kept.success and f": sample {index + 1}:" in kept.message, kept.message
        solved = cell.call(CALIBRATION_SOLVE_SERVICE)
        assert solved.success, solved.message
        assert not runner.dead(), runner.last_words(runner.dead()[0])
    finally:
        runner.stop()
        cell.close()
        rclpy.shutdown()
    result = yaml.safe_load(out.read_text())
    assert result["camera_serial"] == "7" and result["mode"] == EYE_IN_HAND
    transform = load_handeye(out).transform
    assert rotation_deg(transform, truth) < 0.5 and translation_mm(transform, truth) < 3.0
    assert len(load_samples(samples).samples) == 13


def test_calibration_session_pairs_by_stamp_and_refuses_what_would_spoil_the_solve(
    sim_cameras, distorted_camera
):
    from onedp_control.calibration.session import CalibrationParams, CalibrationSession

    session = CalibrationSession(CalibrationParams(camera="wrist", max_pose_skew_ms=20.0))
    truth = sim_cameras["wrist"]
    view = distorted_camera.render(
        invert_transform(CENTRE @ truth) @ board_on_table((CENTRE @ truth)[:2, 3]),
        np.random.default_rng(2),
    )
    elsewhere = make_transform(np.eye(3), [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="no robot pose"):
        session.add(view, 5.0, [])
    with pytest.raises(ConfigError, match="50 ms from the image"):
        session.add(view, 5.0, [(5.05, CENTRE)])
    assert session.add(view, 5.0, [(4.0, elsewhere), (5.01, CENTRE), (6.0, elsewhere)]).startswith(
        "sample 1:"
    )
    np.testing.assert_array_equal(session.samples[0].T_base_gripper, CENTRE)  # the nearest
    with pytest.raises(ConfigError, match="a sample already"):
        session.add(view, 5.0, [(5.0, CENTRE)])
    with pytest.raises(ConfigError, match="0 board corners"):
        session.add(np.full_like(view, 90), 6.0, [(6.0, CENTRE)])
    assert session.reset() == 1 and not session.samples
    with pytest.raises(ConfigError, match="camera must be one of"):
        CalibrationSession(CalibrationParams(camera="side"))
