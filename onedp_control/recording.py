"""Demonstrations recorded while a person teleoperates: the recorder node's hardware-free core.

The recorder hears what the controller hears (both cameras, the measured end-effector pose and
joint states) and what the teleoperation device commands (a target pose and a gripper width),
and at every tick of the control rate takes the newest synchronized observation and the newest
command as one step: the same (observation, action) pairs `onedp collect` writes, in the same
dataset format (dataset.py), so `onedp train` reads a recording unchanged.

Messages are read by field name, so rclpy's messages (the node) and rosbags' deserialized ones
(`onedp import rosbag`, which replays a bag through the same StepSampler) both work.

Crash safety: an episode reaches the dataset only when it is saved, and each save is atomic and
flushed to the disk before it returns. The saved dataset is hard-linked into a staging folder
beside it (no data is copied), the episode is appended there, and the staging folder is
exchanged with the dataset in one rename (renameat2 RENAME_EXCHANGE): a reader, or a crash at
any moment, sees the dataset before the save or after it, never between. The links are safe
because zarr 3's LocalStore writes every chunk and metadata file to a temporary file that it
renames into place, so appending in the staging folder replaces its links and never writes
into the saved dataset's files (tests/test_recording.py checks this, byte for byte).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import threading
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zarr

from onedp_control.dataset import Dataset, DatasetError, DatasetWriter, EpisodeBuffer
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path
from onedp_control.geometry import matrix_from_quat, rot6d_from_matrix
from onedp_control.runtime.observations import RobotSample
from onedp_control.runtime.ring_buffer import StampedRing
from onedp_control.sim.world import Observation

IMAGE_SIZE = (120, 160)  # (height, width): what `onedp collect` writes
NO_SEED = -1  # meta/episode_seed of an episode that no world seed made (teleop, imports)
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")  # their sum: the gripper width
IMAGE_ENCODINGS = ("rgb8", "bgr8")


@dataclass(frozen=True)
class RecorderParams:
    """The recorder node's own parameters (ROS parameters of the node `recorder`; without a
    `recorder` section in the params file or `-p` overrides, these defaults apply). The rate is
    the shared `control_period_s`."""

    dataset: str = "data/teleop.zarr"  # created at start-up when missing, else appended to
    task: str = "pnp_milk"  # the dataset's attrs.task; an existing dataset must have the same
    image_height: int = IMAGE_SIZE[0]  # frames of another size are resized to this
    image_width: int = IMAGE_SIZE[1]
    sync_window_ms: float = 30.0  # front and wrist frames closer than this form one observation
    max_frame_age_ms: float = 150.0  # a tick whose newest front frame is older records nothing

    def validate(self, where: str) -> None:
        if not self.dataset:
            raise ConfigError(f"{where}: dataset must name the dataset directory")
        if self.image_height < 1 or self.image_width < 1:
            raise ConfigError(f"{where}: image_height and image_width must be >= 1")
        if not self.sync_window_ms > 0 or not self.max_frame_age_ms > 0:
            raise ConfigError(f"{where}: sync_window_ms and max_frame_age_ms must be > 0")


class RecordingError(Exception):
    """An operator's request that cannot be done now (stop while not recording, ...)."""


# ---------------------------------------------------------------------------- messages


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def rgb_from_image(message) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 RGB; ValueError for anything else."""
    if message.encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"image encoding '{message.encoding}', expected one of {', '.join(IMAGE_ENCODINGS)}"
        )
    height, width, step = message.height, message.width, message.step
    data = np.frombuffer(message.data, dtype=np.uint8)
    if step < width * 3 or data.size < height * step:
        raise ValueError(f"image of {data.size} bytes does not hold {height} rows of {step}")
    rgb = data[: height * step].reshape(height, step)[:, : width * 3].reshape(height, width, 3)
    return np.ascontiguousarray(rgb[..., ::-1] if message.encoding == "bgr8" else rgb)


def pose_arrays(pose) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Pose -> (position (3,), 6-D rotation (6,))."""
    p, q = pose.position, pose.orientation
    rotation = matrix_from_quat(np.array([q.w, q.x, q.y, q.z]))
    return np.array([p.x, p.y, p.z]), rot6d_from_matrix(rotation)


def finger_width(message) -> float | None:
    """sensor_msgs/JointState -> gripper width (the two finger joints added), or None when the
    message does not carry both fingers (an arm-only joint state)."""
    positions = dict(zip(message.name, message.position, strict=False))
    if not all(finger in positions for finger in FINGER_JOINTS):
        return None
    return float(sum(positions[finger] for finger in FINGER_JOINTS))


def fit_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> (height, width, 3): area-averaged when shrinking (as the camera node does),
    bilinear when enlarging."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = rgb.shape[0] >= height and rgb.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


# ---------------------------------------------------------------------------- sampling


class StepSampler:
    """Messages in, one (observation, action) step per tick out.

    The observation is the newest front frame that can be synchronized, by the policy node's
    rule (runtime/observations.py): with the wrist frame within the sync window of it and the
    robot state nearest to it within a control period. Not only the newest front frame, since
    the wrist frame and the state of the same instant often arrive a few ms after it. The action
    is the newest target pose and gripper width commanded. Thread-safe for one thread of
    callbacks and one of ticks.
    """

    CANDIDATES = 8  # front frames tried, newest first

    def __init__(
        self,
        period_s: float,
        sync_window_s: float,
        max_frame_age_s: float,
        image_size: tuple[int, int] = IMAGE_SIZE,
    ) -> None:
        self.period_s = period_s
        self.sync_window_s = sync_window_s
        self.max_frame_age_s = max_frame_age_s
        self.image_size = image_size
        self.front: StampedRing[np.ndarray] = StampedRing(self.CANDIDATES)
        self.wrist: StampedRing[np.ndarray] = StampedRing(4 * self.CANDIDATES)
        self.state: StampedRing[RobotSample] = StampedRing(4 * self.CANDIDATES)
        self._lock = threading.Lock()
        # (stamp, arrival) of the front frames: a frame's age is judged by its arrival on the
        # ticks' clock, so that cameras stamping with another clock still record.
        self._front_arrivals: deque[tuple[float, float]] = deque(maxlen=self.CANDIDATES)
        self._measured_width: float | None = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._target_width: float | None = None

    def on_image(self, camera: str, message, received: float) -> None:
        """`received`: when it arrived, on the clock the ticks run on."""
        stamp = stamp_seconds(message.header.stamp)
        rgb = rgb_from_image(message)
        if camera != "front":
            self.wrist.push(stamp, rgb)
            return
        with self._lock:
            if self.front.push(stamp, rgb):
                self._front_arrivals.append((stamp, received))

    def on_joint_states(self, message) -> None:
        width = finger_width(message)
        if width is not None:
            self._measured_width = width

    def on_ee_pose(self, message) -> None:
        if self._measured_width is None:
            return
        position, rot6d = pose_arrays(message.pose)
        sample = RobotSample(ee_pos=position, ee_rot6d=rot6d, gripper_width=self._measured_width)
        self.state.push(stamp_seconds(message.header.stamp), sample)

    def on_target_pose(self, message) -> None:
        self._target = pose_arrays(message.pose)

    def on_gripper_width(self, message) -> None:
        self._target_width = float(message.data)

    def _observation(self, stamp: float) -> Observation | None:
        front = self.front.nearest(stamp, 0.0)
        wrist = self.wrist.nearest(stamp, self.sync_window_s)
        state = self.state.nearest(stamp, self.period_s)
        if front is None or wrist is None or state is None:
            return None
        return Observation(
            front_rgb=fit_image(front[1], self.image_size),
            wrist_rgb=fit_image(wrist[1], self.image_size),
            ee_pos=state[1].ee_pos,
            ee_rot6d=state[1].ee_rot6d,
            gripper_width=state[1].gripper_width,
            front_stamp=front[0],
            wrist_stamp=wrist[0],
            state_stamp=state[0],
        )

    def sample(self, now: float) -> tuple[Observation, np.ndarray] | str:
        """The step at `now`, or why there is none."""
        with self._lock:
            arrivals = list(self._front_arrivals)
        fresh = [stamp for stamp, received in arrivals if now - received <= self.max_frame_age_s]
        if not fresh:
            return "no recent front frame"
        observation = next(
            (obs for obs in map(self._observation, reversed(fresh)) if obs is not None), None
        )
        if observation is None:
            return "no synchronized observation"
        target, width = self._target, self._target_width
        if target is None or width is None:
            return "no command yet"
        return observation, np.concatenate([target[0], target[1], [width]])


# ---------------------------------------------------------------------------- the dataset

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> None:
    """Swaps two directory entries in one step (Linux renameat2); OSError where the C library or
    the file system cannot (ENOSYS, EINVAL)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    status = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if status != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def _flush_to_disk(path: Path) -> None:
    """Everything written on the file system that holds `path`, on the disk (Linux syncfs: one
    call, where an fsync of every file and folder of a dataset costs one journal commit each):
    a saved episode survives a power cut too, not only a crash of the recorder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()  # no syncfs (not Linux): every file system
    finally:
        os.close(fd)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links (FAT, some network shares)
        shutil.copy2(source, target)


class EpisodeStore:
    """A dataset that grows by whole episodes, one atomic and durable save each.

    Opening creates the (empty) dataset when it is missing, or checks that an existing one has
    the same task, control rate and image size; it takes a lock beside the dataset (one writer at
    a time) and removes what an interrupted save left behind.
    """

    def __init__(self, path: Path, attrs: dict, image_size: tuple[int, int]) -> None:
        self.path = Path(path).resolve()
        check_output_path(self.path, overwrite=True, directory=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = self.path.with_name(f".{self.path.name}.saving")
        # Where the old dataset waits while a file system without RENAME_EXCHANGE swaps in two.
        self._previous = self.path.with_name(f".{self.path.name}.previous")
        self._removal: threading.Thread | None = None  # of the dataset before the last save
        self._lock = self.path.with_name(f".{self.path.name}.lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise DatasetError(f"{self.path}: another recorder is writing to it") from None
        try:
            self._recover()
            if not self.path.exists():
                DatasetWriter(self.path, attrs, image_size, overwrite=False).commit()
                _flush_to_disk(self.path)
            self.episodes = self._check(attrs, image_size)
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Undo an interrupted save: the dataset is the one before it."""
        if not self.path.exists() and self._previous.exists():
            os.rename(self._previous, self.path)
        for leftover in (self._staging, self._previous):
            shutil.rmtree(leftover, ignore_errors=True)

    def _check(self, attrs: dict, image_size: tuple[int, int]) -> int:
        dataset = Dataset(self.path)
        expected = {**attrs, "image_shape": list(image_size)}
        for key in ("task", "control_rate_hz", "image_shape"):
            if dataset.attrs.get(key) != expected[key]:
                raise DatasetError(
                    f"{self.path}: attrs.{key} is {dataset.attrs.get(key)!r}, this recorder "
                    f"writes {expected[key]!r}; record into another dataset"
                )
        return dataset.n_episodes

    def append(self, episode: EpisodeBuffer) -> int:
        """Saves `episode` as the dataset's last; returns its index once it is on the disk."""
        if len(episode) == 0:
            raise DatasetError(f"{self.path}: refusing to save an empty episode")
        self._wait_for_removal()
        shutil.rmtree(self._staging, ignore_errors=True)
        try:
            shutil.copytree(self.path, self._staging, copy_function=_link_or_copy)
            root = zarr.open_group(str(self._staging), mode="r+")
            data, meta = root["data"], root["meta"]
            for key, values in episode.steps.items():
                data[key].append(np.asarray(values, dtype=data[key].dtype), axis=0)
            ends = np.append(meta["episode_ends"][:], data["action"].shape[0]).astype(np.int64)
            seeds = np.append(meta["episode_seed"][:], NO_SEED).astype(np.int64)
            meta.create_array("episode_ends", data=ends, overwrite=True)
            meta.create_array("episode_seed", data=seeds, overwrite=True)
            _flush_to_disk(self._staging)
            old = self._swap()
        except BaseException:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        _flush_to_disk(self.path.parent)
        # Removing the old dataset's folders can take seconds (ext4 mounted with `discard`: ms
        # per folder); the save does not wait for it, the next one (or close) does.
        self._removal = threading.Thread(target=shutil.rmtree, args=(old, True), daemon=True)
        self._removal.start()
        self.episodes = len(ends)
        return self.episodes - 1

    def _wait_for_removal(self) -> None:
        if self._removal is not None:
            self._removal.join()
            self._removal = None

    def _swap(self) -> Path:
        """Makes the staging folder the dataset; returns where the old dataset now is."""
        try:
            _exchange(self._staging, self.path)
            return self._staging
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise
        # Two renames: a crash between them leaves no dataset, which _recover() restores.
        os.rename(self.path, self._previous)
        try:
            os.rename(self._staging, self.path)
        except OSError:
            os.rename(self._previous, self.path)
            raise
        return self._previous

    def close(self) -> None:
        self._wait_for_removal()
        with contextlib.suppress(ValueError):  # closed already
            self._lock.close()


# ---------------------------------------------------------------------------- the recorder


class TeleopRecorder:
    """One episode at a time: start, then a step per tick, then stop (save) or discard.

    Thread-safe: ticks come from the node's deadline loop, requests from its service thread.
    """

    def __init__(self, sampler: StepSampler, store: EpisodeStore) -> None:
        self.sampler = sampler
        self.store = store
        self._lock = threading.Lock()
        self._episode: EpisodeBuffer | None = None
        self._skipped: Counter[str] = Counter()

    def start(self) -> str:
        with self._lock:
            if self._episode is not None:
                raise RecordingError(
                    f"already recording episode {self.store.episodes} "
                    f"({len(self._episode)} steps): stop or discard it first"
                )
            self._episode, self._skipped = EpisodeBuffer(), Counter()
        return f"recording episode {self.store.episodes} into {self.store.path}"

    def tick(self, now: float) -> None:
        with self._lock:
            if self._episode is None:
                return
            step = self.sampler.sample(now)
            if isinstance(step, str):
                self._skipped[step] += 1
            else:
                self._episode.add(*step)

    def _close_episode(self) -> tuple[EpisodeBuffer, str]:
        with self._lock:
            episode, self._episode = self._episode, None
            skipped = self._skipped
        if episode is None:
            raise RecordingError("not recording: start an episode first")
        note = ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common())
        return episode, f"{len(episode)} steps" + (f"; ticks skipped ({note})" if note else "")

    def stop(self) -> str:
        """Saves the episode; returns once it is on the disk."""
        episode, summary = self._close_episode()
        if len(episode) == 0:
            raise RecordingError(f"nothing recorded ({summary}); the episode is dropped")
        index = self.store.append(episode)
        return f"saved episode {index} to {self.store.path}: {summary}"

    def discard(self) -> str:
        _, summary = self._close_episode()
        return f"discarded the episode: {summary}"

    def close(self) -> int:
        """Drops an open episode (it was never saved); returns its steps."""
        with self._lock:
            open_steps = len(self._episode) if self._episode is not None else 0
            self._episode = None
        self.store.close()
        return open_steps
