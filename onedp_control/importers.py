"""`onedp import`: demonstrations recorded elsewhere into a dataset that `onedp train` reads.

The dataset is the one `onedp collect` writes (dataset.py): both cameras resized to 120x160,
the measured end-effector pose and gripper width, and the 10-D action: target position (3),
6-D rotation (6, the first two columns of the rotation matrix) and gripper width in metres (1).
Like `onedp collect`, an import writes the whole dataset or nothing.

robomimic (HDF5: data/demo_<N>/obs/<key>, data/demo_<N>/actions)
    Only absolute-pose actions import: 7 numbers per step, the target position, the target
    orientation as an axis-angle vector and the gripper command (robosuite's -1 open .. +1
    closed). They map to position, 6-D rotation and width = 0.08 m * (1 - command) / 2. Of
    robomimic's datasets that is the `actions_abs` that robomimic's
    scripts/conversion/robosuite_add_absolute_actions.py adds (read in preference to `actions`),
    or `actions` converted to absolute poses (diffusion_policy's *_abs.hdf5). Delta actions (the
    default OSC_POSE controller: a scaled displacement per step) are refused: the data say
    which, since absolute target positions stay within centimetres of the measured end effector
    and deltas do not. Dual-arm (14-D) actions are refused too. The state comes from
    obs/robot0_eef_pos, obs/robot0_eef_quat (x, y, z, w) and obs/robot0_gripper_qpos (width: the
    two finger joints' magnitudes added); the cameras from the keys given (`front=...,wrist=...`).
    Poses stay in robosuite's world frame and images as stored: such a dataset trains a policy
    for the robomimic task, not for this cell.

rosbag2 (a bag folder, or its .mcap or .db3 file)
    A recording of the recorder node's topics (both cameras, /robot/ee_pose, /robot/joint_states,
    /teleop/target_pose, /teleop/gripper_width), one episode per bag. The bag is replayed
    through the recorder's StepSampler at the control rate on the bag's receive clock, so an
    import gives the steps the recorder node would have recorded live; ticks before the first
    command (or without a synchronized observation) record nothing.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onedp_control.errors import ConfigError
from onedp_control.runtime.graph import (
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
    JOINT_STATES_TOPIC,
    TELEOP_GRIPPER_TOPIC,
    TELEOP_TARGET_TOPIC,
)

if TYPE_CHECKING:
    import numpy as np

    from onedp_control.dataset import EpisodeBuffer

# Heavy modules (zarr, OpenCV, MuJoCo, h5py, rosbags) are imported where they are used: `onedp`
# builds its parser from add_import_parser, and every other command would pay for them.
DEFAULT_CAMERA_KEYS = {"front": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
ROBOMIMIC_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
ROBOMIMIC_RATE_HZ = 20.0  # robosuite's default control_freq, when env_args does not say
# Absolute targets lead the measured end effector by a control step's motion (a few mm to cm);
# robosuite's delta actions are scaled displacements in [-1, 1], far from any eef position.
ABSOLUTE_TOLERANCE_M = 0.05
ROSBAG_TOPICS = {
    IMAGE_TOPIC.format(camera="front"): "sensor_msgs/msg/Image",
    IMAGE_TOPIC.format(camera="wrist"): "sensor_msgs/msg/Image",
    EE_POSE_TOPIC: "geometry_msgs/msg/PoseStamped",
    JOINT_STATES_TOPIC: "sensor_msgs/msg/JointState",
    TELEOP_TARGET_TOPIC: "geometry_msgs/msg/PoseStamped",
    TELEOP_GRIPPER_TOPIC: "std_msgs/msg/Float64",
}


class DataImportError(ConfigError):
    """A source file that cannot be imported; the message names the file and the key or topic."""


@dataclass
class ImportReport:
    path: Path
    episodes: int
    steps: int


def _write(
    out: Path, attrs: dict, overwrite: bool, episodes: Iterator[EpisodeBuffer]
) -> ImportReport:
    from onedp_control.dataset import DatasetWriter
    from onedp_control.recording import IMAGE_SIZE, NO_SEED

    writer = DatasetWriter(out, attrs, IMAGE_SIZE, overwrite)
    steps = 0
    try:
        for episode in episodes:
            writer.add_episode(episode, NO_SEED)
            steps += len(episode)
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ImportReport(path, writer.episodes, steps)


# ---------------------------------------------------------------------------- robomimic


def _read(file: Path, group, key: str):
    """An array of an HDF5 group, or an error naming the file and the key."""
    import numpy as np

    where = f"{group.name.lstrip('/')}/{key}"
    if key not in group:
        raise DataImportError(f"{file}: missing {where}")
    try:
        return np.asarray(group[key][()])
    except (OSError, TypeError) as error:  # a damaged dataset, or a group where data should be
        raise DataImportError(f"{file}: cannot read {where} ({error})") from None


def _env_args(file: Path, data) -> dict:
    text = data.attrs.get("env_args")
    if text is None:
        return {}
    try:
        env_args = json.loads(text)
    except (TypeError, ValueError) as error:
        raise DataImportError(f"{file}: data.attrs['env_args'] is not JSON ({error})") from None
    return env_args if isinstance(env_args, dict) else {}


def _gripper_width(command: np.ndarray) -> np.ndarray:
    """robosuite's gripper command (-1 open .. +1 closed) -> target width (m)."""
    import numpy as np

    from onedp_control.sim.world import OPEN_WIDTH

    return np.clip(OPEN_WIDTH * (1.0 - command) / 2.0, 0.0, OPEN_WIDTH)


def _robomimic_episode(
    file: Path, demo, camera_keys: dict[str, str], rate_hz: float
) -> EpisodeBuffer:
    import numpy as np

    from onedp_control.dataset import EpisodeBuffer
    from onedp_control.geometry import matrix_from_quat, matrix_from_rotvec, rot6d_from_matrix
    from onedp_control.recording import IMAGE_SIZE, fit_image
    from onedp_control.sim.world import Observation

    key = "actions_abs" if "actions_abs" in demo else "actions"
    where = f"{demo.name.lstrip('/')}/{key}"
    actions = _read(file, demo, key).astype(np.float64)
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise DataImportError(
            f"{file}: {where} has shape {actions.shape}; only single-arm actions of 7 numbers "
            "(position, axis-angle, gripper) import"
        )
    if "obs" not in demo:
        raise DataImportError(f"{file}: missing {demo.name.lstrip('/')}/obs")
    obs = demo["obs"]
    eef_pos, eef_quat, finger_qpos = (_read(file, obs, k) for k in ROBOMIMIC_STATE_KEYS)
    frames = {camera: _read(file, obs, k) for camera, k in camera_keys.items()}
    steps = len(actions)
    for name, array in zip(ROBOMIMIC_STATE_KEYS, (eef_pos, eef_quat, finger_qpos), strict=True):
        if len(array) != steps:
            raise DataImportError(f"{file}: obs/{name} has {len(array)} steps, {where} {steps}")
    for camera, array in frames.items():
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise DataImportError(
                f"{file}: obs/{camera_keys[camera]} is {array.dtype} {array.shape}, expected "
                "(steps, height, width, 3) uint8 images"
            )
        if len(array) != steps:
            raise DataImportError(
                f"{file}: obs/{camera_keys[camera]} has {len(array)} steps, {where} {steps}"
            )
    distance = float(np.median(np.linalg.norm(actions[:, :3] - eef_pos, axis=1)))
    if distance > ABSOLUTE_TOLERANCE_M:
        raise DataImportError(
            f"{file}: {where} are not absolute poses: their positions are a median "
            f"{distance:.2f} m from the measured end effector (obs/robot0_eef_pos), as delta "
            "actions are; only absolute-pose actions import (robomimic's scripts/conversion/"
            "robosuite_add_absolute_actions.py adds them as actions_abs)"
        )
    ee_rot6d = rot6d_from_matrix(matrix_from_quat(eef_quat[:, [3, 0, 1, 2]]))
    measured_width = np.abs(finger_qpos).sum(axis=1)
    target_width = _gripper_width(actions[:, 6])
    episode = EpisodeBuffer()
    for step in range(steps):
        stamp = step / rate_hz
        observation = Observation(
            front_rgb=fit_image(frames["front"][step], IMAGE_SIZE),
            wrist_rgb=fit_image(frames["wrist"][step], IMAGE_SIZE),
            ee_pos=eef_pos[step],
            ee_rot6d=ee_rot6d[step],
            gripper_width=float(measured_width[step]),
            front_stamp=stamp,
            wrist_stamp=stamp,
            state_stamp=stamp,
        )
        rotation = rot6d_from_matrix(matrix_from_rotvec(actions[step, 3:6]))
        episode.add(
            observation, np.concatenate([actions[step, :3], rotation, [target_width[step]]])
        )
    return episode


def import_robomimic(
    file: Path,
    out: Path,
    camera_keys: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ImportReport:
    """Every data/demo_<N> of a robomimic HDF5 file, in order of N, as one episode each."""
    import h5py
    from tqdm import tqdm

    from onedp_control.files import check_output_path

    camera_keys = camera_keys or DEFAULT_CAMERA_KEYS
    check_output_path(out, overwrite, directory=True)  # before reading, not after
    if not file.is_file():
        raise DataImportError(f"{file}: no such file")
    try:
        handle = h5py.File(file, "r")
    except OSError as error:
        raise DataImportError(f"{file}: not a readable HDF5 file ({error})") from None
    with handle:
        data = handle.get("data")
        if not isinstance(data, h5py.Group):
            raise DataImportError(f"{file}: no group data/ (not a robomimic dataset)")
        demos = sorted(
            (name for name in data if re.fullmatch(r"demo_\d+", name)),
            key=lambda name: int(name.removeprefix("demo_")),
        )
        if not demos:
            raise DataImportError(f"{file}: data/ holds no demo_<N> groups")
        env_args = _env_args(file, data)
        env_kwargs = env_args.get("env_kwargs") or {}
        rate_hz = float(env_kwargs.get("control_freq", ROBOMIMIC_RATE_HZ))
        attrs = {
            "task": str(env_args.get("env_name", file.stem)),
            "control_rate_hz": rate_hz,
            "source": f"onedp import robomimic {file.name}",
        }
        episodes = (
            _robomimic_episode(file, data[name], camera_keys, rate_hz)
            for name in tqdm(demos, desc=f"import {file.name}", unit="demo", disable=not progress)
        )
        return _write(out, attrs, overwrite, episodes)


# ---------------------------------------------------------------------------- rosbag2


def _bag_messages(bag: Path) -> Iterator[tuple[str, float, object]]:
    """(topic, receive time in s, message) of the recorder's topics, in receive order."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    try:
        # The default types, for bags that carry no message definitions: this ROS 2 release's.
        with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
            topics = reader.topics
            for topic, msgtype in ROSBAG_TOPICS.items():
                if topic not in topics or topics[topic].msgcount == 0:
                    raise DataImportError(
                        f"{bag}: no messages on {topic} (the bag has: "
                        f"{', '.join(sorted(topics)) or 'no topics'})"
                    )
                if topics[topic].msgtype != msgtype:
                    raise DataImportError(
                        f"{bag}: {topic} is {topics[topic].msgtype}, expected {msgtype}"
                    )
            connections = [c for c in reader.connections if c.topic in ROSBAG_TOPICS]
            for connection, timestamp, raw in reader.messages(connections=connections):
                message = reader.deserialize(raw, connection.msgtype)
                yield connection.topic, timestamp * 1e-9, message
    except DataImportError:
        raise
    except Exception as error:  # rosbags and its codecs raise many types for a damaged bag
        raise DataImportError(
            f"{bag}: cannot read it as a rosbag2 recording (MCAP or sqlite3): "
            f"{type(error).__name__}: {error}"
        ) from None


def _bag_episode(bag: Path, period_s: float) -> EpisodeBuffer:
    from onedp_control.dataset import EpisodeBuffer
    from onedp_control.recording import RecorderParams, StepSampler

    params = RecorderParams()  # the recorder node's defaults: what it would record
    sampler = StepSampler(period_s, params.sync_window_ms / 1e3, params.max_frame_age_ms / 1e3)
    handlers = {
        IMAGE_TOPIC.format(camera="front"): lambda m, t: sampler.on_image("front", m, t),
        IMAGE_TOPIC.format(camera="wrist"): lambda m, t: sampler.on_image("wrist", m, t),
        EE_POSE_TOPIC: lambda m, t: sampler.on_ee_pose(m),
        JOINT_STATES_TOPIC: lambda m, t: sampler.on_joint_states(m),
        TELEOP_TARGET_TOPIC: lambda m, t: sampler.on_target_pose(m),
        TELEOP_GRIPPER_TOPIC: lambda m, t: sampler.on_gripper_width(m),
    }
    episode = EpisodeBuffer()
    skipped: Counter[str] = Counter()

    def tick(now: float) -> None:
        step = sampler.sample(now)
        if isinstance(step, str):
            skipped[step] += 1
        else:
            episode.add(*step)

    next_tick = None
    for topic, received, message in _bag_messages(bag):
        # A tick takes what had arrived by its time, as the live recorder's loop does.
        next_tick = received if next_tick is None else next_tick
        while next_tick < received:
            tick(next_tick)
            next_tick += period_s
        try:
            handlers[topic](message, received)
        except ValueError as error:  # an image the recorder cannot read (its encoding)
            raise DataImportError(f"{bag}: {topic}: {error}") from None
    if next_tick is not None:
        tick(next_tick)
    if len(episode) == 0:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common())
        raise DataImportError(f"{bag}: no step could be recorded from it ({reasons})")
    return episode


def import_rosbags(
    bags: list[Path],
    out: Path,
    task: str | None = None,
    rate_hz: float | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ImportReport:
    """One episode per rosbag2 recording, in the order given. `task`: the dataset's attrs.task
    (None: the recorder's default); `rate_hz`: the control rate (None: the controller's)."""
    from tqdm import tqdm

    from onedp_control.files import check_output_path
    from onedp_control.recording import RecorderParams
    from onedp_control.runtime.config import SharedParams

    task = RecorderParams.task if task is None else task
    rate_hz = 1.0 / SharedParams.control_period_s if rate_hz is None else rate_hz
    if not rate_hz > 0:
        raise DataImportError(f"--rate-hz must be > 0, got {rate_hz}")
    check_output_path(out, overwrite, directory=True)
    for bag in bags:
        if not bag.exists():
            raise DataImportError(f"{bag}: no such file or directory")
    attrs = {"task": task, "control_rate_hz": rate_hz, "source": "onedp import rosbag"}
    episodes = (
        _bag_episode(bag, 1.0 / rate_hz)
        for bag in tqdm(bags, desc="import rosbag", unit="bag", disable=not progress)
    )
    return _write(out, attrs, overwrite, episodes)


# ---------------------------------------------------------------------------- command line


def camera_keys_argument(text: str) -> dict[str, str]:
    """`front=agentview_image,wrist=robot0_eye_in_hand_image` -> {camera: obs key}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    keys = {camera.strip(): key.strip() for camera, key in (p for p in pairs if len(p) == 2)}
    if len(pairs) != len(keys) or set(keys) != set(DEFAULT_CAMERA_KEYS) or not all(keys.values()):
        raise argparse.ArgumentTypeError(
            f"'{text}': expected front=<obs key>,wrist=<obs key> (each camera once)"
        )
    return keys


def _report(report: ImportReport) -> int:
    print(f"wrote {report.episodes} episodes ({report.steps} steps) to {report.path}")
    return 0


def cmd_import_robomimic(args: argparse.Namespace) -> int:
    return _report(
        import_robomimic(
            args.file,
            args.out,
            camera_keys=args.camera_keys,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    )


def cmd_import_rosbag(args: argparse.Namespace) -> int:
    return _report(
        import_rosbags(
            args.bags,
            args.out,
            task=args.task,
            rate_hz=args.rate_hz,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    )


def add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    """`onedp import robomimic|rosbag ...`; each handler returns the exit status."""
    parser = subparsers.add_parser(
        "import",
        help="demonstrations recorded elsewhere (robomimic HDF5, rosbag2) into a dataset",
        description="Convert demonstrations into the dataset format `onedp train` reads (the "
        "one `onedp collect` writes). See onedp_control/importers.py for the mappings.",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    robomimic = sources.add_parser(
        "robomimic",
        help="a robomimic HDF5 file with absolute-pose actions",
        description="Import data/demo_<N> of a robomimic HDF5 file, one episode each. Only "
        "absolute-pose actions (7-D: position, axis-angle, gripper; `actions_abs` when present) "
        "import; delta actions are refused.",
    )
    robomimic.add_argument("file", type=Path, help="robomimic .hdf5 file")
    robomimic.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    robomimic.add_argument(
        "--camera-keys",
        type=camera_keys_argument,
        default=dict(DEFAULT_CAMERA_KEYS),
        help="obs image keys of the two cameras (default: "
        + ",".join(f"{c}={k}" for c, k in DEFAULT_CAMERA_KEYS.items())
        + ")",
    )
    robomimic.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    robomimic.add_argument("--quiet", action="store_true", help="no progress bar")
    robomimic.set_defaults(func=cmd_import_robomimic)

    rosbag = sources.add_parser(
        "rosbag",
        help="rosbag2 recordings of the recorder's topics, one episode per bag",
        description="Replay rosbag2 recordings (MCAP or sqlite3) of the cameras, the robot state "
        "and the teleop commands through the recorder at the control rate, one episode per bag.",
    )
    rosbag.add_argument(
        "bags", type=Path, nargs="+", metavar="FILE_OR_DIR", help="bag folder, .mcap or .db3"
    )
    rosbag.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    rosbag.add_argument("--task", help="the dataset's attrs.task (default: the recorder's)")
    rosbag.add_argument("--rate-hz", type=float, help="control rate (default: the controller's)")
    rosbag.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    rosbag.add_argument("--quiet", action="store_true", help="no progress bar")
    rosbag.set_defaults(func=cmd_import_rosbag)
