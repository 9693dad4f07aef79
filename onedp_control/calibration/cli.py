"""`onedp calibrate`: intrinsics, guided hand-eye capture and the hand-eye solution.

`add_calibrate_parser(subparsers)` adds the command to `onedp`'s parser; each step's handler
returns the exit status. A bad argument or file is a ConfigError (the command line prints it and
exits 2); a robot or camera failure during capture is printed here and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from onedp_control.argtypes import non_negative_float, positive_float, positive_int
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path

if TYPE_CHECKING:
    import numpy as np

    from onedp_control.calibration.charuco import CharucoBoardSpec
    from onedp_control.calibration.handeye import HandEyeCalibration
    from onedp_control.calibration.intrinsics import CameraInfo

# handeye.MODES and HAND_EYE_METHODS, spelled out so that building `onedp`'s parser does not
# import OpenCV and the RealSense SDK (a quarter of a second); the tests check they agree.
MODES = ("eye-in-hand", "eye-to-hand")
METHODS = ("auto", "tsai", "park", "horaud", "andreff", "daniilidis")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Eye-in-hand capture pivots about the board: this is a wrist camera's usual distance to it.
DEFAULT_EYE_IN_HAND_PIVOT_M = 0.4


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=positive_int, default=640, help="colour profile width")
    parser.add_argument("--height", type=positive_int, default=480, help="... height")
    parser.add_argument("--fps", type=positive_int, default=30, help="... frame rate")


def _add_board_options(parser: argparse.ArgumentParser) -> None:
    board = parser.add_argument_group("ChArUco board (measure the print: printers scale)")
    board.add_argument("--squares-x", type=positive_int, default=7, help="squares across")
    board.add_argument("--squares-y", type=positive_int, default=5, help="squares down")
    board.add_argument("--square-mm", type=positive_float, default=40.0, help="square side")
    board.add_argument("--marker-mm", type=positive_float, default=30.0, help="marker side")
    board.add_argument(
        "--dictionary", default="DICT_5X5_100", help="ArUco dictionary (default DICT_5X5_100)"
    )
    board.add_argument(
        "--legacy-pattern",
        action="store_true",
        help="a board made before OpenCV 4.6 with an even --squares-y",
    )


def _board(args: argparse.Namespace) -> CharucoBoardSpec:
    from onedp_control.calibration.charuco import CharucoBoardSpec, InvalidBoardError

    try:
        return CharucoBoardSpec(
            squares_x=args.squares_x,
            squares_y=args.squares_y,
            square_length_m=args.square_mm / 1000,
            marker_length_m=args.marker_mm / 1000,
            dictionary=args.dictionary,
            legacy_pattern=args.legacy_pattern,
        )
    except InvalidBoardError as error:
        raise ConfigError(f"board options: {error}") from None


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    calibrate = subparsers.add_parser(
        "calibrate",
        help="camera intrinsics and hand-eye transforms for the real cell",
        description="Calibrate the RealSense cameras: intrinsics per camera, then the wrist "
        "camera's pose on the hand (eye-in-hand) and the front camera's pose in the robot base "
        "frame (eye-to-hand). See calibration/README.md.",
    )
    steps = calibrate.add_subparsers(dest="calibrate", required=True, metavar="STEP")

    intrinsics = steps.add_parser(
        "intrinsics",
        help="a camera's colour intrinsics: its factory calibration, or a ChArUco fit",
        description="Write the colour intrinsics of a RealSense camera as CameraInfo YAML: read "
        "from the connected camera, or (with --images) fitted to ChArUco board views.",
    )
    intrinsics.add_argument("--serial", required=True, help="the camera's serial number")
    intrinsics.add_argument("--out", type=Path, help="default: calibration/<serial>.yaml")
    _add_stream_options(intrinsics)
    intrinsics.add_argument(
        "--images",
        type=Path,
        help="fit to the board views in this directory instead (no camera needed; the image "
        "size replaces --width/--height)",
    )
    intrinsics.add_argument(
        "--max-rms-px",
        type=positive_float,
        default=1.0,
        help="refuse a fit with a larger reprojection RMS",
    )
    _add_board_options(intrinsics)
    intrinsics.add_argument("--overwrite", action="store_true", help="replace an existing file")
    intrinsics.set_defaults(func=cmd_calibrate_intrinsics)

    handeye = steps.add_parser(
        "handeye",
        help="solve a hand-eye transform from recorded samples",
        description="Solve eye-in-hand (T_gripper_camera) or eye-to-hand (T_base_camera) from "
        "robot poses paired with board images or detections; refuse a solution whose board "
        "pose residuals exceed the limits.",
    )
    handeye.add_argument("--mode", required=True, choices=MODES)
    handeye.add_argument(
        "--samples",
        type=Path,
        required=True,
        help="a capture directory, or a samples .yaml / .npz file (calibration/README.md)",
    )
    handeye.add_argument(
        "--camera-info", type=Path, required=True, help="the camera's intrinsics YAML"
    )
    handeye.add_argument("--out", type=Path, required=True, help="hand-eye YAML to write")
    handeye.add_argument(
        "--max-translation-mm",
        type=positive_float,
        default=5.0,
        help="refuse above this RMS board position residual (default 5)",
    )
    handeye.add_argument(
        "--max-rotation-deg",
        type=positive_float,
        default=1.0,
        help="refuse above this RMS board rotation residual (default 1)",
    )
    handeye.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="OpenCV's hand-eye method; auto: each, keeping the best-agreeing solution",
    )
    handeye.add_argument("--overwrite", action="store_true", help="replace an existing file")
    handeye.set_defaults(func=cmd_calibrate_handeye)

    capture = steps.add_parser(
        "capture",
        help="move the robot through tilted poses and record hand-eye samples",
        description="Starting from the robot's current pose (the board in view), tilt the "
        "gripper 15-25 deg about several axes, and record the measured pose and a colour image "
        "at each pose into a samples directory for `onedp calibrate handeye`.",
    )
    capture.add_argument("--robot-host", required=True, help="robot address")
    capture.add_argument("--serial", required=True, help="serial of the camera to calibrate")
    capture.add_argument("--mode", required=True, choices=MODES)
    capture.add_argument("--out", type=Path, required=True, help="samples directory to create")
    capture.add_argument("--poses", type=positive_int, default=13, help="poses, the start one too")
    capture.add_argument(
        "--tilt-deg",
        type=positive_float,
        nargs=2,
        default=(15.0, 25.0),
        metavar=("LOW", "HIGH"),
        help="tilt angles, spread over the poses",
    )
    capture.add_argument(
        "--pivot-m",
        type=non_negative_float,
        help="tilt about a point this far ahead of the gripper along its z axis (default: "
        f"{DEFAULT_EYE_IN_HAND_PIVOT_M} for eye-in-hand, set it to the camera-to-board distance; "
        "0 for eye-to-hand)",
    )
    _add_stream_options(capture)
    _add_board_options(capture)
    capture.add_argument(
        "--dynamics-factor",
        type=positive_float,
        default=0.1,
        help="fraction of the robot's velocity, acceleration and jerk limits (default 0.1)",
    )
    capture.add_argument(
        "--settle-s",
        type=non_negative_float,
        default=0.5,
        help="wait this long at each pose before taking the image (default 0.5)",
    )
    capture.add_argument("--timeout-s", type=positive_float, default=30.0, help="per pose")
    capture.add_argument("--yes", action="store_true", help="start without asking")
    capture.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    capture.set_defaults(func=cmd_calibrate_capture)


# ----------------------------------------------------------------------------- intrinsics
def _read_images(directory: Path) -> dict[str, np.ndarray]:
    import cv2

    if not directory.is_dir():
        raise ConfigError(f"--images: {directory}: no such directory")
    images = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ConfigError(f"--images: cannot read {path}")
        images[path.name] = image
    if not images:
        raise ConfigError(f"--images: {directory}: no {'/'.join(IMAGE_SUFFIXES)} images")
    return images


def _describe_camera_info(info: CameraInfo) -> str:
    matrix = info.camera_matrix
    coefficients = ", ".join(f"{c:.5f}" for c in info.distortion_coefficients)
    lines = [
        f"camera {info.serial} {info.width}x{info.height}: {info.source}",
        f"  fx {matrix[0, 0]:.2f}  fy {matrix[1, 1]:.2f}  cx {matrix[0, 2]:.2f}  "
        f"cy {matrix[1, 2]:.2f}",
        f"  {info.distortion_model}: {coefficients}",
    ]
    if info.reprojection_rms_px is not None:
        lines.append(f"  reprojection RMS {info.reprojection_rms_px:.3f} px")
    return "\n".join(lines)


def cmd_calibrate_intrinsics(args: argparse.Namespace) -> int:
    from onedp_control.calibration.intrinsics import (
        calibrate_intrinsics,
        default_camera_name,
        read_device_intrinsics,
        save_camera_info,
    )

    out = args.out or Path("calibration") / f"{args.serial}.yaml"
    check_output_path(out, overwrite=args.overwrite, directory=False)
    if args.images is None:
        try:
            info = read_device_intrinsics(args.serial, args.width, args.height, args.fps)
        except RuntimeError as error:  # the SDK's errors (a camera that went away, USB, ...)
            raise ConfigError(f"camera {args.serial}: {error}") from None
    else:
        info = calibrate_intrinsics(
            _read_images(args.images),
            _board(args),
            camera_name=default_camera_name(args.serial),
            serial=args.serial,
            max_rms_px=args.max_rms_px,
        )
    print(_describe_camera_info(info))
    save_camera_info(info, out)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- hand-eye
def _describe_handeye(result: HandEyeCalibration, names: list[str]) -> str:
    from onedp_control.calibration.handeye import pose_to_yaml

    pose = pose_to_yaml(result.transform)
    residuals = result.residuals
    lines = [
        f"{result.mode}: T_{result.parent_frame}_camera",
        f"  translation (m)      {pose['translation']}",
        f"  quaternion (w x y z) {pose['quaternion_wxyz']}",
        f"  residuals over {residuals.samples} samples: "
        f"{residuals.translation_rms_mm:.2f} mm RMS ({residuals.translation_max_mm:.2f} max), "
        f"{residuals.rotation_rms_deg:.3f} deg RMS ({residuals.rotation_max_deg:.3f} max)",
    ]
    lines += [
        f"    {name}: {mm:.2f} mm, {deg:.3f} deg"
        for name, (mm, deg) in zip(names, residuals.per_sample, strict=True)
    ]
    return "\n".join(lines)


def cmd_calibrate_handeye(args: argparse.Namespace) -> int:
    from onedp_control.calibration.handeye import (
        load_samples,
        measure_board_poses,
        save_handeye,
        solve_hand_eye,
    )
    from onedp_control.calibration.intrinsics import load_camera_info

    check_output_path(args.out, overwrite=args.overwrite, directory=False)
    camera = load_camera_info(args.camera_info)
    sample_set = load_samples(args.samples)
    if sample_set.mode and sample_set.mode != args.mode:
        raise ConfigError(
            f"{args.samples}: recorded for {sample_set.mode}, but --mode is {args.mode}"
        )
    if sample_set.camera_serial and sample_set.camera_serial != camera.serial:
        raise ConfigError(
            f"{args.samples}: recorded with camera {sample_set.camera_serial}, but "
            f"{args.camera_info} is for camera {camera.serial}"
        )
    try:
        measured = measure_board_poses(sample_set, camera)
        for reason in measured.skipped:
            print(f"left out {reason}")
        result = solve_hand_eye(
            args.mode,
            measured.T_base_gripper,
            measured.T_camera_board,
            camera_serial=camera.serial,
            max_translation_mm=args.max_translation_mm,
            max_rotation_deg=args.max_rotation_deg,
            method=args.method,
            sample_names=measured.names,
        )
    except ConfigError as error:
        raise ConfigError(f"{args.samples}: {error}") from None
    print(_describe_handeye(result, measured.names))
    save_handeye(result, args.out)
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- capture
def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal to answer from
        return False


def cmd_calibrate_capture(args: argparse.Namespace) -> int:
    import numpy as np

    from onedp_control.calibration.charuco import detect_charuco, usable_for_pose
    from onedp_control.calibration.handeye import (
        EYE_IN_HAND,
        HandEyeSample,
        SampleSet,
        calibration_poses,
        guided_capture,
        move_to_pose,
        pose_from_state,
        save_samples,
    )
    from onedp_control.cameras.realsense import CameraConfig, CameraError, RealSenseCameras
    from onedp_control.robots.base import RobotError
    from onedp_control.robots.franky_robot import FrankyRobot

    check_output_path(args.out, overwrite=args.overwrite, directory=True)
    board = _board(args)
    pivot_m = args.pivot_m
    if pivot_m is None:
        pivot_m = DEFAULT_EYE_IN_HAND_PIVOT_M if args.mode == EYE_IN_HAND else 0.0
    camera = CameraConfig(
        name="calibration",
        serial=args.serial,
        width=args.width,
        height=args.height,
        fps=args.fps,
        output_size=(args.height, args.width),
    )

    try:
        cameras = RealSenseCameras([camera])  # finds the camera before anything moves
        robot = FrankyRobot(args.robot_host, dynamics_factor=args.dynamics_factor)
        robot.connect()
        try:
            start = robot.get_state()
            centre = pose_from_state(start)
            poses = calibration_poses(centre, args.poses, tuple(args.tilt_deg), pivot_m)
            reach_m = max(np.linalg.norm(pose[:3, 3] - centre[:3, 3]) for pose in poses)
            print(
                f"{len(poses)} poses around the current one: tilts of {args.tilt_deg[0]:g}-"
                f"{args.tilt_deg[1]:g} deg about a point {pivot_m:g} m ahead of the gripper; "
                f"the gripper moves up to {100 * reach_m:.0f} cm from where it is"
            )
            if not (args.yes or _confirm("Clear the workspace; start? [y/N] ")):
                print("nothing moved, nothing written")
                return 1

            def report(index: int, sample: HandEyeSample) -> None:
                assert sample.image is not None, "guided capture takes images"
                detection = detect_charuco(sample.image, board)
                problem = usable_for_pose(detection, board)
                found = f"{len(detection.ids)} board corners" + (f" ({problem})" if problem else "")
                print(f"pose {index + 1}/{len(poses)}: {found}")

            with cameras:
                samples = guided_capture(
                    robot,
                    cameras,
                    poses,
                    camera.name,
                    timeout_s=args.timeout_s,
                    settle_s=args.settle_s,
                    on_sample=report,
                )
            move_to_pose(robot, centre, start.gripper_width, timeout_s=args.timeout_s)
        finally:
            robot.disconnect()
    except (RobotError, CameraError) as error:
        print(f"onedp calibrate capture: error: {error}", file=sys.stderr)
        return 1
    save_samples(
        args.out,
        SampleSet(board=board, samples=samples, camera_serial=args.serial, mode=args.mode),
        overwrite=args.overwrite,
    )
    print(
        f"wrote {len(samples)} samples to {args.out}; solve with\n  onedp calibrate handeye "
        f"--mode {args.mode} --samples {args.out} --camera-info calibration/{args.serial}.yaml "
        f"--out calibration/handeye_{args.serial}.yaml"
    )
    return 0
