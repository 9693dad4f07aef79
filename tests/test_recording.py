"""Demonstration recording and import: a teleoperated sim run recorded by the recorder node
becomes a dataset that trains; a crash mid-episode keeps the saved episodes; discard drops the
open one; saves are atomic even when they fail; robomimic HDF5 files and rosbag2 recordings
import into the same format, and broken ones are refused naming the file and what is wrong."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from onedp_control import recording
from onedp_control.dataset import Dataset, DatasetError, EpisodeBuffer
from onedp_control.geometry import matrix_from_rot6d, quat_from_matrix, rot6d_from_matrix
from onedp_control.importers import DataImportError, add_import_parser, import_rosbags
from onedp_control.recording import EpisodeStore, StepSampler, fit_image
from onedp_control.sim.world import Observation

CONFIG = Path(__file__).resolve().parents[1] / "config" / "pnp_milk.yaml"
ATTRS = {"task": "pnp_milk", "control_rate_hz": 20.0, "source": "test"}
DOWN = np.diag([1.0, -1.0, -1.0])  # a top-down gripper
FRONT_COLOUR, WRIST_COLOUR = (200, 30, 10), (10, 30, 200)
SYNTHETIC_START = np.concatenate([[0.4, 0.0, 0.3], rot6d_from_matrix(DOWN)])
LEAD = np.array([0.01, 0.0, 0.0])  # robomimic test actions: 1 cm ahead of the measured pose


# ---------------------------------------------------------------------------- helpers


def stamp(seconds: float) -> SimpleNamespace:
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return SimpleNamespace(sec=sec, nanosec=nanosec)


def image(colour, seconds: float, size=(240, 320), encoding="rgb8") -> SimpleNamespace:
    rgb = np.empty((*size, 3), np.uint8)
    rgb[:] = colour[::-1] if encoding == "bgr8" else colour
    return SimpleNamespace(
        header=SimpleNamespace(stamp=stamp(seconds)),
        height=size[0],
        width=size[1],
        step=size[1] * 3,
        encoding=encoding,
        data=rgb.tobytes(),
    )


def pose(seconds: float, position, rotation=DOWN) -> SimpleNamespace:
    w, x, y, z = quat_from_matrix(rotation)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=stamp(seconds)),
        pose=SimpleNamespace(
            position=SimpleNamespace(x=position[0], y=position[1], z=position[2]),
            orientation=SimpleNamespace(w=w, x=x, y=y, z=z),
        ),
    )


def joints(finger: float) -> SimpleNamespace:
    names = [*(f"panda_joint{i}" for i in range(1, 8)), *recording.FINGER_JOINTS]
    return SimpleNamespace(name=names, position=[0.0] * 7 + [finger, finger])


def episode_of(steps: int, first_x: float = 0.4) -> EpisodeBuffer:
    episode = EpisodeBuffer()
    rng = np.random.default_rng(steps)
    for step in range(steps):
        observation = Observation(
            front_rgb=rng.integers(0, 255, (120, 160, 3), dtype=np.uint8),
            wrist_rgb=rng.integers(0, 255, (120, 160, 3), dtype=np.uint8),
            ee_pos=np.array([first_x + 0.01 * step, 0.0, 0.3]),
            ee_rot6d=rot6d_from_matrix(DOWN),
            gripper_width=0.08,
            front_stamp=step * 0.05,
            wrist_stamp=step * 0.05,
            state_stamp=step * 0.05,
        )
        episode.add(observation, np.concatenate([observation.ee_pos, observation.ee_rot6d, [0.08]]))
    return episode


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_onedp_format(dataset: Dataset, episodes: int) -> None:
    """What `onedp collect` writes: keys, dtypes, shapes, 120x160 frames."""
    assert dataset.n_episodes == episodes
    steps = dataset.n_steps
    expected = {
        "front_rgb": ((steps, 120, 160, 3), np.uint8),
        "wrist_rgb": ((steps, 120, 160, 3), np.uint8),
        "ee_pos": ((steps, 3), np.float32),
        "ee_rot6d": ((steps, 6), np.float32),
        "gripper_width": ((steps, 1), np.float32),
        "action": ((steps, 10), np.float32),
        "timestamp": ((steps,), np.float64),
    }
    assert sorted(dataset.data.array_keys()) == sorted(expected)
    for key, (shape, dtype) in expected.items():
        assert dataset.data[key].shape == shape and dataset.data[key].dtype == dtype, key
    assert dataset.attrs["image_shape"] == [120, 160]
    np.testing.assert_array_equal(dataset.episode_seeds, [recording.NO_SEED] * episodes)


def assert_trains(path: Path) -> None:
    """TrainingWindows builds a normalised batch from the dataset (what `onedp train` does)."""
    from onedp_control.learning.data import TrainingWindows
    from onedp_control.policies.diffusion import Normalizer
    from tests.conftest import TINY_MODEL

    config = TINY_MODEL
    windows = TrainingWindows([Dataset(path)], config)
    normalizer = Normalizer(10, 10)
    windows.fit_normalizer(normalizer)
    steps = np.array([0, len(windows) // 2, len(windows) - 1])
    batch = windows.batch(steps, normalizer, np.random.default_rng(0))
    assert batch["images"]["front"].shape == (3, 2, 3, 32, 44)
    assert batch["low_dim"].shape == (3, 2, 10)
    assert batch["action"].shape == (3, 16, 10)
    assert float(batch["action"].abs().max()) <= 1.0 + 1e-5


# ---------------------------------------------------------------------------- the core


def test_sampler_pairs_the_newest_synchronized_observation_with_the_newest_command():
    sampler = StepSampler(0.05, sync_window_s=0.03, max_frame_age_s=0.15)
    sampler.on_joint_states(joints(0.02))
    sampler.on_ee_pose(pose(10.0, [0.4, 0.1, 0.3]))
    sampler.on_image("front", image(FRONT_COLOUR, 10.0), received=100.0)
    assert sampler.sample(100.01) == "no synchronized observation"  # no wrist frame yet
    sampler.on_image("wrist", image(WRIST_COLOUR, 10.01, encoding="bgr8"), received=100.01)
    assert sampler.sample(100.02) == "no command yet"
    sampler.on_target_pose(pose(10.0, [0.45, 0.1, 0.25]))
    sampler.on_gripper_width(SimpleNamespace(data=0.03))
    observation, action = sampler.sample(100.02)
    assert observation.front_rgb.shape == observation.wrist_rgb.shape == (120, 160, 3)
    assert tuple(observation.front_rgb[60, 80]) == FRONT_COLOUR
    assert tuple(observation.wrist_rgb[60, 80]) == WRIST_COLOUR  # bgr8 turned into RGB
    np.testing.assert_allclose(observation.ee_pos, [0.4, 0.1, 0.3])
    assert observation.gripper_width == pytest.approx(0.04)  # the two fingers added
    assert observation.state_stamp == pytest.approx(10.0)
    np.testing.assert_allclose(action[:3], [0.45, 0.1, 0.25])
    np.testing.assert_allclose(matrix_from_rot6d(action[3:9]), DOWN, atol=1e-9)
    assert action[9] == pytest.approx(0.03)
    # The newest front frame has no wrist frame yet: the one before it is the observation.
    sampler.on_image("front", image(FRONT_COLOUR, 10.05), received=100.05)
    assert sampler.sample(100.06)[0].front_stamp == pytest.approx(10.0)
    # A front camera that stopped 150 ms ago records nothing (judged by arrival time).
    assert sampler.sample(100.25) == "no recent front frame"
    with pytest.raises(ValueError, match="encoding 'mono8'"):
        sampler.on_image("front", image(FRONT_COLOUR, 10.1, encoding="mono8"), received=100.1)
    assert fit_image(np.zeros((60, 80, 3), np.uint8), (120, 160)).shape == (120, 160, 3)


def test_store_saves_whole_episodes_and_refuses_what_it_cannot_append_to(tmp_path):
    path = tmp_path / "teleop.zarr"
    store = EpisodeStore(path, ATTRS, (120, 160))
    assert Dataset(path).n_episodes == 0  # created at once: a bad path fails at start-up
    assert store.append(episode_of(5)) == 0
    assert store.append(episode_of(3, first_x=0.5)) == 1
    dataset = Dataset(path)
    assert_onedp_format(dataset, 2)
    np.testing.assert_array_equal(dataset.episode_ends, [5, 8])
    assert dataset.episode(1)["ee_pos"][0, 0] == pytest.approx(0.5)
    with pytest.raises(DatasetError, match="another recorder is writing to it"):
        EpisodeStore(path, ATTRS, (120, 160))
    with pytest.raises(DatasetError, match="empty episode"):
        store.append(EpisodeBuffer())
    store.close()
    with pytest.raises(DatasetError, match=re.escape("attrs.image_shape is [120, 160]")):
        EpisodeStore(path, ATTRS, (96, 128))
    with pytest.raises(DatasetError, match=r"attrs\.task"):
        EpisodeStore(path, {**ATTRS, "task": "other"}, (120, 160))
    (tmp_path / "notes").mkdir()
    with pytest.raises(DatasetError, match="notes: not a zarr dataset"):
        EpisodeStore(tmp_path / "notes", ATTRS, (120, 160))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".notes.lock",
        ".teleop.zarr.lock",
        "notes",
        "teleop.zarr",
    ]


def test_a_failed_save_leaves_the_saved_episodes_untouched(tmp_path, monkeypatch):
    path = tmp_path / "teleop.zarr"
    store = EpisodeStore(path, ATTRS, (120, 160))
    store.append(episode_of(70))  # more than one image chunk (64 steps): the last is partial
    before = file_digests(path)

    def power_cut(root):
        raise OSError(5, "I/O error", str(root))

    # Fails after the episode was appended in the staging copy, which shares the saved files.
    monkeypatch.setattr(recording, "_flush_to_disk", power_cut)
    with pytest.raises(OSError, match="I/O error"):
        store.append(episode_of(10))
    assert file_digests(path) == before
    assert Dataset(path).n_episodes == 1
    assert not (tmp_path / ".teleop.zarr.saving").exists()
    monkeypatch.undo()
    assert store.append(episode_of(10)) == 1
    store.close()


def test_without_rename_exchange_an_interrupted_swap_is_undone(tmp_path, monkeypatch):
    path = tmp_path / "teleop.zarr"

    def unsupported(first, second):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(recording, "_exchange", unsupported)
    store = EpisodeStore(path, ATTRS, (120, 160))
    store.append(episode_of(4))
    assert store.append(episode_of(6)) == 1
    store.close()
    assert Dataset(path).n_episodes == 2
    # A crash between the two renames: the dataset moved aside, the new one half made.
    os.rename(path, tmp_path / ".teleop.zarr.previous")
    (tmp_path / ".teleop.zarr.saving").mkdir()
    store = EpisodeStore(path, ATTRS, (120, 160))
    assert store.episodes == 2
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".teleop.zarr.lock", "teleop.zarr"]


def test_recorder_loop_survives_concurrent_requests(tmp_path):
    """Ticks from one thread, start/stop from another: every saved step is whole."""
    store = EpisodeStore(tmp_path / "t.zarr", ATTRS, (120, 160))
    sampler = StepSampler(0.05, 0.03, 10.0)
    sampler.on_joint_states(joints(0.02))
    sampler.on_target_pose(pose(0.0, [0.4, 0.0, 0.3]))
    sampler.on_gripper_width(SimpleNamespace(data=0.05))
    recorder = recording.TeleopRecorder(sampler, store)
    stop = threading.Event()

    def feed_and_tick() -> None:
        t = 0.0
        while not stop.is_set():
            t += 0.05
            sampler.on_ee_pose(pose(t, [0.4, 0.0, 0.3]))
            sampler.on_image("front", image(FRONT_COLOUR, t, (120, 160)), received=t)
            sampler.on_image("wrist", image(WRIST_COLOUR, t, (120, 160)), received=t)
            recorder.tick(t)
            time.sleep(0.005)

    thread = threading.Thread(target=feed_and_tick)
    thread.start()
    try:
        for _ in range(3):
            recorder.start()
            time.sleep(0.05)
            recorder.stop()
        with pytest.raises(recording.RecordingError, match="not recording"):
            recorder.discard()
    finally:
        stop.set()
        thread.join()
    assert recorder.close() == 0
    assert_onedp_format(Dataset(tmp_path / "t.zarr"), 3)


# ---------------------------------------------------------------------------- the node


@pytest.fixture
def ros_context(monkeypatch):
    rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (./setup.sh)")
    # A domain of its own: another checkout's graph tests on this machine use the same topics.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    rclpy.init()
    yield
    rclpy.shutdown()


class Teleop:
    """A test node in the operator's place: publishes teleop commands (and, for the synthetic
    cell, the cameras and the robot state; in the sim, the teleop node makes the robot follow
    the commands) and calls the recorder's services."""

    def __init__(self, in_sim: bool) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64

        from onedp_control.ros.common import SENSOR_QOS
        from onedp_control.runtime import graph

        self.node = rclpy.create_node("teleop_test")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.in_sim = in_sim
        self.target = self.node.create_publisher(PoseStamped, graph.TELEOP_TARGET_TOPIC, 10)
        self.width = self.node.create_publisher(Float64, graph.TELEOP_GRIPPER_TOPIC, 10)
        self.images = {
            c: self.node.create_publisher(Image, graph.IMAGE_TOPIC.format(camera=c), SENSOR_QOS)
            for c in graph.CAMERAS
        }
        self.pose = self.node.create_publisher(PoseStamped, graph.EE_POSE_TOPIC, SENSOR_QOS)
        self.joints = self.node.create_publisher(JointState, graph.JOINT_STATES_TOPIC, SENSOR_QOS)
        self.measured: np.ndarray | None = None  # the sim's first end-effector pose
        self.node.create_subscription(
            PoseStamped, graph.EE_POSE_TOPIC, self._on_measured, SENSOR_QOS
        )
        self.commanded: list[tuple[float, np.ndarray]] = []  # (time, 10-D command)
        self.started = math.inf  # when the move starts; until then, the start pose
        self._last_publish = 0.0

    def _on_measured(self, message) -> None:
        if self.measured is None and self.in_sim:
            position, rot6d = recording.pose_arrays(message.pose)
            self.measured = np.concatenate([position, rot6d])

    def command_at(self, now: float) -> np.ndarray:
        """A slow move from the start pose (the sim's, or the synthetic cell's): 5 cm forward
        and down over 2 s, closing the gripper from 8 to 4 cm."""
        start = self.measured if self.in_sim else SYNTHETIC_START
        progress = float(np.clip((now - self.started) / 2.0, 0.0, 1.0))
        position = start[:3] + progress * np.array([0.05, 0.0, -0.05])
        return np.concatenate([position, start[3:9], [0.08 - 0.04 * progress]])

    def publish(self, now: float) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64

        from onedp_control.ros.common import image_message, pose_message, to_stamp

        if self.in_sim and self.measured is None:
            return  # the teleop starts from where the robot is
        command = self.command_at(now)
        self.commanded.append((now, command))
        target = pose_message(command[:3], matrix_from_rot6d(command[3:9]), now)
        self.target.publish(target)
        self.width.publish(Float64(data=float(command[9])))
        if self.in_sim:
            return
        for camera, colour in (("front", FRONT_COLOUR), ("wrist", WRIST_COLOUR)):
            # Smaller than the recorder's 120x160, so it resizes them; and one UDP datagram each
            # (the tests' DDS runs over UDP, conftest.py): a best-effort frame split in several
            # is lost whole when one piece is, as happened to every front frame for a second.
            rgb = np.empty((96, 128, 3), np.uint8)
            rgb[:] = colour
            self.images[camera].publish(image_message(rgb, now, f"{camera}_camera"))
        measured = PoseStamped()
        measured.header = target.header
        measured.pose = target.pose
        self.pose.publish(measured)
        state = JointState(name=joints(0.0).name, position=[0.0] * 7 + [0.02, 0.02])
        state.header.stamp = to_stamp(now)
        self.joints.publish(state)

    def spin(self, seconds: float, until=None) -> bool:
        """Spins, publishing at 20 Hz, for `seconds` or until `until()`."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            now = time.time()
            if now - self._last_publish >= 0.05:
                self._last_publish = now
                self.publish(now)
            self.executor.spin_once(timeout_sec=0.01)
            if until is not None and until():
                return True
        return until is None

    def call(self, service: str, timeout: float = 30.0):
        """Calls a recorder service while publishing; returns its Trigger response."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if not self.spin(0.5, client.service_is_ready):
                    continue
                future = client.call_async(Trigger.Request())
                if self.spin(5.0, future.done):
                    return future.result()
                # Sent to the server of a process just killed (discovery still lists it), or
                # before a restarted one matched this client: the request is lost, send again.
                client.remove_pending_request(future)
            pytest.fail(f"{service} did not answer in {timeout} s")
        finally:
            self.node.destroy_client(client)

    def until_the_recorder_hears_everything(self, timeout: float = 30.0) -> None:
        """Trial episodes, discarded, until one records (nearly) every tick of 0.5 s: freshly
        started processes discover each other topic by topic, over a second or more on a busy
        machine."""
        from onedp_control.runtime.graph import RECORDER_DISCARD_SERVICE, RECORDER_START_SERVICE

        deadline = time.time() + timeout
        message = ""
        while time.time() < deadline:
            assert self.call(RECORDER_START_SERVICE).success
            self.spin(0.5)
            message = self.call(RECORDER_DISCARD_SERVICE).message
            if int(re.search(r"(\d+) steps", message).group(1)) >= 8:
                return
        pytest.fail(f"the recorder never heard the whole cell: {message}")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def recorder_graph(dataset: Path, sim: bool):
    """The recording graph (`onedp record --sim`: teleop, watchdog, recorder, sim), or the
    recorder alone for the synthetic cell the test publishes itself."""
    from onedp_control.ros.runner import GraphRunner
    from onedp_control.runtime.graph import LaunchArguments

    arguments = LaunchArguments(config=str(CONFIG), sim=True, record=True, dataset=str(dataset))
    runner = GraphRunner(CONFIG, arguments, {"sim": {"episodes": 1, "time_limit_s": 120.0}})
    if not sim:
        runner.nodes = [spec for spec in runner.nodes if spec.name == "recorder"]
    return runner


@pytest.mark.slow
def test_a_recorded_teleoperated_sim_run_is_a_dataset_that_trains(ros_context, tmp_path):
    from onedp_control.runtime.graph import RECORDER_START_SERVICE, RECORDER_STOP_SERVICE

    path = tmp_path / "teleop.zarr"
    runner = recorder_graph(path, sim=True)
    teleop = Teleop(in_sim=True)
    runner.start(tmp_path / "logs")
    try:
        runner.bring_up(teleop.node, teleop.executor)
        assert teleop.spin(60.0, lambda: teleop.measured is not None), "the sim never published"
        teleop.until_the_recorder_hears_everything()
        for seconds in (1.5, 1.0):
            started = teleop.call(RECORDER_START_SERVICE)
            assert started.success, started.message
            teleop.started = min(teleop.started, time.time())  # move from the first episode on
            teleop.spin(seconds)
            saved = teleop.call(RECORDER_STOP_SERVICE)
            assert saved.success and saved.message.startswith("saved episode"), saved.message
        assert not runner.dead(), runner.last_words(runner.dead()[0])
    finally:
        runner.stop()
        teleop.close()
    dataset = Dataset(path)
    assert_onedp_format(dataset, 2)
    assert dataset.attrs["task"] == "pnp_milk" and dataset.attrs["control_rate_hz"] == 20.0
    lengths = np.diff(np.concatenate([[0], dataset.episode_ends]))
    assert lengths[0] >= 20 and lengths[1] >= 12, f"at 20 Hz: {lengths}"
    stamps = np.asarray(dataset.data["timestamp"][: lengths[0]])
    assert np.median(np.diff(stamps)) == pytest.approx(0.05, abs=0.01)
    # Actions are the commands: on the commanded path, and the robot followed them.
    commands = np.array([command for _, command in teleop.commanded])
    actions = np.asarray(dataset.data["action"][:])
    # (Pose and width are two topics: a tick between their messages pairs a pose with the
    # width before, so each part is compared on its own.)
    for part in (slice(0, 9), slice(9, 10)):
        gaps = np.abs(actions[:, None, part] - commands[None, :, part]).max(axis=2).min(axis=1)
        assert gaps.max() < 1e-5
    first, last = dataset.episode(0), dataset.episode(1)
    assert np.linalg.norm(first["ee_pos"][-1] - first["ee_pos"][0]) > 0.02, "the robot moved"
    assert np.linalg.norm(last["ee_pos"][-1] - last["action"][-1, :3]) < 0.02
    assert last["gripper_width"][-1, 0] < 0.06 < first["gripper_width"][0, 0]
    assert np.ptp(last["front_rgb"].astype(float)) > 0  # rendered frames, not blanks
    assert_trains(path)


@pytest.mark.slow
def test_a_crash_mid_episode_keeps_the_saved_episodes_and_discard_drops(ros_context, tmp_path):
    from onedp_control.runtime.graph import (
        RECORDER_DISCARD_SERVICE,
        RECORDER_START_SERVICE,
        RECORDER_STOP_SERVICE,
    )

    path = tmp_path / "teleop.zarr"
    runner = recorder_graph(path, sim=False)
    teleop = Teleop(in_sim=False)
    teleop.started = time.time()
    runner.start(tmp_path / "logs")
    try:
        refused = teleop.call(RECORDER_STOP_SERVICE)
        assert not refused.success and "not recording" in refused.message
        teleop.until_the_recorder_hears_everything()
        messages = []
        for service, seconds in (
            (RECORDER_START_SERVICE, 1.0),
            (RECORDER_STOP_SERVICE, 0.0),
            (RECORDER_START_SERVICE, 0.5),
            (RECORDER_DISCARD_SERVICE, 0.0),
            (RECORDER_START_SERVICE, 0.5),
        ):
            response = teleop.call(service)
            assert response.success, f"{service}: {response.message}"
            messages.append(response.message)
            teleop.spin(seconds)
        assert messages[1].startswith("saved episode 0") and messages[3].startswith("discarded")
        assert messages[4].startswith("recording episode 1")
        saved = Dataset(path).n_steps
        runner.processes["recorder"].kill()  # SIGKILL, mid-episode
        runner.processes["recorder"].wait()
        dataset = Dataset(path)
        assert_onedp_format(dataset, 1)
        assert dataset.n_steps == saved >= 15
        episode = dataset.episode(0)
        assert (episode["front_rgb"] == FRONT_COLOUR).all()  # 96x128 frames resized
        assert (episode["wrist_rgb"] == WRIST_COLOUR).all()
        np.testing.assert_allclose(episode["gripper_width"], 0.04, atol=1e-6)
        np.testing.assert_allclose(episode["ee_pos"], episode["action"][:, :3], atol=0.011)
        # A new recorder appends to the dataset the killed one left.
        runner.spawn("recorder", None)
        teleop.until_the_recorder_hears_everything()
        for service, seconds in ((RECORDER_START_SERVICE, 0.5), (RECORDER_STOP_SERVICE, 0.0)):
            response = teleop.call(service)
            assert response.success, f"{service}: {response.message}"
            teleop.spin(seconds)
        assert response.message.startswith("saved episode 1")
    finally:
        runner.stop()
        teleop.close()
    assert Dataset(path).n_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".teleop.zarr.lock", "logs", path.name]


# ---------------------------------------------------------------------------- robomimic


def write_robomimic(path: Path, demos: int = 2, steps: int = 12, delta=False, action_dim=7):
    """A robomimic-layout HDF5 file: absolute actions that lead the measured pose by 1 cm."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        data.attrs["env_args"] = '{"env_name": "Lift", "env_kwargs": {"control_freq": 20}}'
        for index in range(demos):
            obs = data.create_group(f"demo_{index}/obs")
            eef = np.array([-0.1, 0.0, 1.0]) + np.linspace(0, 0.1, steps)[:, None] * [1, 0, -1]
            obs["robot0_eef_pos"] = eef
            obs["robot0_eef_quat"] = np.tile([1.0, 0.0, 0.0, 0.0], (steps, 1))  # x, y, z, w
            obs["robot0_gripper_qpos"] = np.tile([0.03, -0.03], (steps, 1))
            for key in ("agentview_image", "robot0_eye_in_hand_image", "sideview_image"):
                obs[key] = rng.integers(0, 255, (steps, 84, 84, 3), dtype=np.uint8)
            actions = np.zeros((steps, action_dim))
            actions[:, :3] = rng.uniform(-1, 1, (steps, 3)) if delta else eef + LEAD
            actions[:, 3:6] = [np.pi, 0.0, 0.0]  # axis-angle: top-down, as the quaternion
            actions[:, 6] = np.where(np.arange(steps) < steps // 2, -1.0, 1.0)
            data[f"demo_{index}/actions"] = actions


def run_import(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="onedp")
    add_import_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["import", *argv, "--quiet"])
    return args.func(args)


def test_robomimic_absolute_poses_import_with_the_camera_keys_given(tmp_path, capsys):
    source, out = tmp_path / "lift_abs.hdf5", tmp_path / "lift.zarr"
    write_robomimic(source, demos=11)  # demo_10 sorts after demo_9
    keys = "front=sideview_image,wrist=robot0_eye_in_hand_image"
    assert run_import("robomimic", str(source), "--out", str(out), "--camera-keys", keys) == 0
    assert "wrote 11 episodes (132 steps)" in capsys.readouterr().out
    dataset = Dataset(out)
    assert_onedp_format(dataset, 11)
    assert dataset.attrs["task"] == "Lift" and dataset.attrs["control_rate_hz"] == 20.0
    episode = dataset.episode(10)
    import h5py

    with h5py.File(source) as handle:
        side = handle["data/demo_10/obs/sideview_image"][3]
        eef = handle["data/demo_10/obs/robot0_eef_pos"][:]
    np.testing.assert_array_equal(episode["front_rgb"][3], fit_image(side, (120, 160)))
    np.testing.assert_allclose(episode["ee_pos"], eef, atol=1e-6)
    np.testing.assert_allclose(episode["action"][:, :3], eef + LEAD, atol=1e-6)
    # Quaternion (1, 0, 0, 0) in x, y, z, w and axis-angle (pi, 0, 0): both top-down.
    np.testing.assert_allclose(episode["ee_rot6d"], np.tile(rot6d_from_matrix(DOWN), (12, 1)))
    np.testing.assert_allclose(episode["action"][:, 3:9], episode["ee_rot6d"], atol=1e-6)
    np.testing.assert_allclose(episode["gripper_width"], 0.06, atol=1e-6)
    np.testing.assert_allclose(episode["action"][[0, -1], 9], [0.08, 0.0])  # open, closed
    np.testing.assert_allclose(np.diff(episode["timestamp"]), 0.05)
    assert_trains(out)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("delta", "data/demo_0/actions are not absolute poses: their positions are a median"),
        ("dual-arm", "data/demo_0/actions has shape \\(12, 14\\); only single-arm"),
        ("no-quat", "missing data/demo_1/obs/robot0_eef_quat"),
        ("no-camera", "missing data/demo_0/obs/agentview_image"),
        ("no-demos", "data/ holds no demo_<N> groups"),
        ("not-hdf5", "not a readable HDF5 file"),
        ("truncated", "not a readable HDF5 file"),
    ],
)
def test_robomimic_files_that_cannot_import_are_refused_by_name(tmp_path, damage, message):
    import h5py

    source, out = tmp_path / "demo.hdf5", tmp_path / "out.zarr"
    write_robomimic(source, delta=damage == "delta", action_dim=14 if damage == "dual-arm" else 7)
    if damage in ("no-quat", "no-camera", "no-demos"):
        with h5py.File(source, "a") as handle:
            for key in {
                "no-quat": ["data/demo_1/obs/robot0_eef_quat"],
                "no-camera": ["data/demo_0/obs/agentview_image"],
                "no-demos": ["data/demo_0", "data/demo_1"],
            }[damage]:
                del handle[key]
    elif damage == "not-hdf5":
        source.write_text("demo,actions\n1,2\n")
    elif damage == "truncated":
        source.write_bytes(source.read_bytes()[:4096])
    with pytest.raises(DataImportError, match=message) as error:
        run_import("robomimic", str(source), "--out", str(out))
    assert str(error.value).startswith(str(source))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["demo.hdf5"]


# ---------------------------------------------------------------------------- rosbag2


def write_bag(path: Path, storage: str, topics=None, seconds: float = 1.5) -> None:
    """The recorder's topics as a real session publishes them: cameras at 30 Hz, the robot at
    100 Hz, teleop targets at 20 Hz from 0.3 s on, the gripper command twice (on change)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from onedp_control.importers import ROSBAG_TOPICS

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    time_type, header_type = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]
    start = 1_700_000_000.0
    w, x, y, z = quat_from_matrix(DOWN)

    def header(t: float):
        sec, nanosec = divmod(round((start + t) * 1e9), 1_000_000_000)
        return header_type(stamp=time_type(sec=sec, nanosec=nanosec), frame_id="base")

    def pose_message(t: float, position):
        point = types["geometry_msgs/msg/Point"](*position)
        orientation = types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)
        body = types["geometry_msgs/msg/Pose"](position=point, orientation=orientation)
        return types["geometry_msgs/msg/PoseStamped"](header=header(t), pose=body)

    def camera(colour):
        def make(t: float):
            rgb = np.empty((96, 128, 3), np.uint8)
            rgb[:] = colour
            return types["sensor_msgs/msg/Image"](
                header(t), 96, 128, "rgb8", 0, 128 * 3, rgb.reshape(-1)
            )

        return make

    def target_x(t: float) -> float:
        return 0.4 + 0.1 * t

    streams = {
        "/camera/front/color/image_raw": (1 / 30, camera(FRONT_COLOUR)),
        "/camera/wrist/color/image_raw": (1 / 30, camera(WRIST_COLOUR)),
        "/robot/ee_pose": (0.01, lambda t: pose_message(t, (target_x(t - 0.1), 0.0, 0.3))),
        "/robot/joint_states": (
            0.01,
            lambda t: types["sensor_msgs/msg/JointState"](
                header(t),
                joints(0.0).name,
                np.array([0.0] * 7 + [0.03, 0.03]),
                np.zeros(0),
                np.zeros(0),
            ),
        ),
        "/teleop/target_pose": (0.05, lambda t: pose_message(t, (target_x(t), 0.0, 0.3))),
    }
    events = [
        (t, topic, make(t))
        for topic, (dt, make) in streams.items()
        for t in np.arange(0.3 if topic.startswith("/teleop") else 0.0, seconds, dt)
    ]
    width = types["std_msgs/msg/Float64"]
    events += [
        (0.3, "/teleop/gripper_width", width(0.08)),
        (1.0, "/teleop/gripper_width", width(0.02)),
    ]
    topics = ROSBAG_TOPICS if topics is None else topics
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {t: writer.add_connection(t, m, typestore=store) for t, m in topics.items()}
        for t, topic, message in sorted(events, key=lambda event: event[0]):
            if topic in connections:
                raw = store.serialize_cdr(message, connections[topic].msgtype)
                writer.write(connections[topic], round((start + t) * 1e9), raw)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag_recordings_import_as_the_recorder_would_record_them(tmp_path, storage, capsys):
    first, second, out = tmp_path / "session1", tmp_path / "session2", tmp_path / "bags.zarr"
    write_bag(first, storage)
    write_bag(second, storage, seconds=1.0)
    storage_file = next(second.glob(f"*.{'mcap' if storage == 'mcap' else 'db3'}"))
    assert run_import("rosbag", str(first), str(storage_file), "--out", str(out)) == 0
    assert "wrote 2 episodes" in capsys.readouterr().out
    dataset = Dataset(out)
    assert_onedp_format(dataset, 2)
    episode = dataset.episode(0)
    # Ticks every 50 ms from the first command (0.3 s) to the end (1.5 s).
    assert 22 <= len(episode["action"]) <= 25
    np.testing.assert_allclose(np.diff(episode["timestamp"]), 0.05, atol=0.011)
    assert (episode["front_rgb"] == FRONT_COLOUR).all()
    assert (episode["wrist_rgb"] == WRIST_COLOUR).all()
    np.testing.assert_allclose(episode["gripper_width"], 0.06, atol=1e-6)
    # The newest command at each tick: the target leads the measured pose by 0.1 s (1 cm).
    np.testing.assert_allclose(episode["action"][:, 0] - episode["ee_pos"][:, 0], 0.01, atol=6e-3)
    widths = episode["action"][:, 9]
    assert widths[0] == pytest.approx(0.08) and widths[-1] == pytest.approx(0.02)
    assert_trains(out)


def test_rosbags_that_cannot_import_are_refused_by_name(tmp_path):
    from onedp_control.importers import ROSBAG_TOPICS

    out = tmp_path / "out.zarr"
    without_gripper = {k: v for k, v in ROSBAG_TOPICS.items() if k != "/teleop/gripper_width"}
    write_bag(tmp_path / "no_gripper", "mcap", topics=without_gripper)
    with pytest.raises(DataImportError, match="no_gripper: no messages on /teleop/gripper_width"):
        import_rosbags([tmp_path / "no_gripper"], out)
    wrong = {**ROSBAG_TOPICS, "/teleop/gripper_width": "std_msgs/msg/Float32"}
    write_bag(tmp_path / "wrong", "sqlite3", topics=wrong)
    with pytest.raises(DataImportError, match="wrong: /teleop/gripper_width is std_msgs/msg/Flo"):
        import_rosbags([tmp_path / "wrong"], out)
    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(b"\x89MCAP0\r\n" + os.urandom(2048))
    with pytest.raises(DataImportError, match=r"corrupt\.mcap: cannot read it as a rosbag2"):
        import_rosbags([corrupt], out)
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(next((tmp_path / "no_gripper").glob("*.mcap")).read_bytes()[:50_000])
    with pytest.raises(DataImportError, match=r"truncated\.mcap: cannot read it"):
        import_rosbags([truncated], out)
    with pytest.raises(DataImportError, match=r"missing\.db3: no such file"):
        import_rosbags([tmp_path / "missing.db3"], out)
    assert not out.exists()
