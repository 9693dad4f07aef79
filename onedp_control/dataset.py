"""Demonstration datasets on disk: a zarr group laid out like diffusion_policy's replay buffer.

    <dataset>.zarr/
      data/front_rgb      (N, H, W, 3) uint8   front camera, one frame per control step
      data/wrist_rgb      (N, H, W, 3) uint8   wrist camera
      data/ee_pos         (N, 3)  float32      measured end-effector position, base frame (m)
      data/ee_rot6d       (N, 6)  float32      measured end-effector 6-D rotation
      data/gripper_width  (N, 1)  float32      measured gripper width (m)
      data/action         (N, 10) float32      commanded target: position, 6-D rotation, width
      data/timestamp      (N,)    float64      world time of the observation (s)
      meta/episode_ends   (E,)    int64        one past the last step of each episode
      meta/episode_seed   (E,)    int64        the world seed each episode was reset with
    attrs: format, task, control_rate_hz, image_shape, source

Steps of all episodes are concatenated along the first axis; episode i spans
[episode_ends[i-1], episode_ends[i]). A dataset is written into a temporary folder beside its
destination and renamed into place when complete, so an interrupted write leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr

from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path
from onedp_control.sim.world import ACTION_DIM, Observation

FORMAT = "onedp-replay-v1"
LOW_DIM_KEYS = {"ee_pos": 3, "ee_rot6d": 6, "gripper_width": 1, "action": ACTION_DIM}
IMAGE_KEYS = ("front_rgb", "wrist_rgb")
IMAGE_CHUNK_STEPS = 64


class DatasetError(ConfigError):
    """A dataset that cannot be written or read; the message names the path and field."""


class EpisodeBuffer:
    """Collects one episode's steps in memory."""

    def __init__(self) -> None:
        self.steps: dict[str, list] = {key: [] for key in (*IMAGE_KEYS, *LOW_DIM_KEYS, "timestamp")}

    def __len__(self) -> int:
        return len(self.steps["action"])

    def add(self, observation: Observation, action: np.ndarray) -> None:
        self.steps["front_rgb"].append(observation.front_rgb)
        self.steps["wrist_rgb"].append(observation.wrist_rgb)
        self.steps["ee_pos"].append(observation.ee_pos)
        self.steps["ee_rot6d"].append(observation.ee_rot6d)
        self.steps["gripper_width"].append([observation.gripper_width])
        self.steps["action"].append(action)
        self.steps["timestamp"].append(observation.state_stamp)


class DatasetWriter:
    """Writes episodes into `<path>` atomically: `commit()` publishes, `abort()` discards."""

    def __init__(self, path: Path, attrs: dict, image_shape: tuple[int, int], overwrite: bool):
        check_output_path(path, overwrite, directory=True)
        self.path = path
        self.overwrite = overwrite
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        root = zarr.open_group(str(self._tmp), mode="w")
        root.attrs.update({"format": FORMAT, "image_shape": list(image_shape), **attrs})
        data = root.create_group("data")
        height, width = image_shape
        for key in IMAGE_KEYS:
            data.create_array(
                key,
                shape=(0, height, width, 3),
                chunks=(IMAGE_CHUNK_STEPS, height, width, 3),
                dtype="uint8",
            )
        for key, dim in LOW_DIM_KEYS.items():
            data.create_array(key, shape=(0, dim), chunks=(4096, dim), dtype="float32")
        data.create_array("timestamp", shape=(0,), chunks=(4096,), dtype="float64")
        self._root = root
        self._ends: list[int] = []
        self._seeds: list[int] = []

    @property
    def episodes(self) -> int:
        return len(self._ends)

    def add_episode(self, episode: EpisodeBuffer, seed: int) -> None:
        if len(episode) == 0:
            raise DatasetError(f"{self.path}: refusing to write an empty episode (seed {seed})")
        data = self._root["data"]
        for key, values in episode.steps.items():
            data[key].append(np.asarray(values, dtype=data[key].dtype), axis=0)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(episode))
        self._seeds.append(int(seed))

    def commit(self) -> Path:
        meta = self._root.create_group("meta")
        meta.create_array("episode_ends", data=np.asarray(self._ends, dtype=np.int64))
        meta.create_array("episode_seed", data=np.asarray(self._seeds, dtype=np.int64))
        if self.path.exists():  # only reachable with overwrite=True
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


class Dataset:
    """Read access to a dataset written by DatasetWriter (or `onedp collect`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such dataset directory")
        try:
            root = zarr.open_group(str(self.path), mode="r")
        except Exception as error:  # zarr raises several types for a non-group folder
            raise DatasetError(f"{self.path}: not a zarr dataset ({error})") from None
        if root.attrs.get("format") != FORMAT:
            raise DatasetError(
                f"{self.path}: attrs.format is {root.attrs.get('format')!r}, expected {FORMAT!r}"
            )
        self.attrs = dict(root.attrs)
        for group, keys in (
            ("data", (*IMAGE_KEYS, *LOW_DIM_KEYS, "timestamp")),
            ("meta", ("episode_ends", "episode_seed")),
        ):
            for key in keys:
                if f"{group}/{key}" not in root:
                    raise DatasetError(f"{self.path}: missing array {group}/{key}")
        self.data = root["data"]
        self.episode_ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
        self.episode_seeds = np.asarray(root["meta/episode_seed"][:], dtype=np.int64)
        steps = self.data["action"].shape[0]
        if self.episode_ends.size and (
            np.any(np.diff(self.episode_ends) <= 0) or self.episode_ends[-1] != steps
        ):
            raise DatasetError(
                f"{self.path}: meta/episode_ends {self.episode_ends.tolist()} does not partition "
                f"the {steps} steps in data/"
            )
        for key in self.data.array_keys():
            if self.data[key].shape[0] != steps:
                raise DatasetError(
                    f"{self.path}: data/{key} has {self.data[key].shape[0]} steps, "
                    f"data/action has {steps}"
                )

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.size)

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if self.n_episodes else 0

    def episode_slice(self, index: int) -> slice:
        if not 0 <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range (dataset has {self.n_episodes})")
        start = int(self.episode_ends[index - 1]) if index > 0 else 0
        return slice(start, int(self.episode_ends[index]))

    def episode(self, index: int) -> dict[str, np.ndarray]:
        span = self.episode_slice(index)
        return {key: np.asarray(self.data[key][span]) for key in self.data.array_keys()}
