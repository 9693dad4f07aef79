"""Training windows from a demonstration dataset, held in memory.

Sample i of an episode pairs the observations at steps i-To+1 .. i (To = obs_horizon) with the
actions at steps i-To+1 .. i-To+H (H = horizon): the chunk starts at the oldest observation, as
in Diffusion Policy, and the policy executes it from index To-1 (the newest observation's step).
Indices before an episode's start or past its end repeat the first or last step. Several
datasets are one pool of episodes (windows drawn uniformly over all their steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from onedp_control.dataset import Dataset
from onedp_control.errors import ConfigError
from onedp_control.policies.diffusion import ModelConfig, Normalizer


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w, 3) uint8, area-averaged."""
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def crop_frames(frames: np.ndarray, size: tuple[int, int], rng: np.random.Generator | None):
    """(..., H, W, 3) -> (..., h, w, 3): a random window with `rng`, the centre without."""
    height, width = frames.shape[-3:-1]
    h, w = size
    if rng is None:
        top, left = (height - h) // 2, (width - w) // 2
    else:
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return frames[..., top : top + h, left : left + w, :]


def to_image_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).float() / 255.0


def low_dim_state(ee_pos, ee_rot6d, gripper_width) -> np.ndarray:
    return np.concatenate([ee_pos, ee_rot6d, gripper_width], axis=-1).astype(np.float32)


def dataset_paths(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """A config's `dataset:`, one path or a list of paths, as a list."""
    return (spec,) if isinstance(spec, str) else spec


def open_datasets(spec: str | tuple[str, ...], where: str) -> list[Dataset]:
    paths = dataset_paths(spec)
    if not paths:
        raise ConfigError(f"{where}: dataset: the list is empty")
    return [Dataset(path) for path in paths]


def dataset_label(spec: str | tuple[str, ...]) -> str:
    """How a lineage entry names the data a phase trained on."""
    return ", ".join(dataset_paths(spec))


class TrainingWindows:
    def __init__(self, datasets: Sequence[Dataset], config: ModelConfig) -> None:
        self.config = config
        expected = set(config.cameras)
        images: dict[str, list[np.ndarray]] = {camera: [] for camera in config.cameras}
        low_dim, action, ends = [], [], []
        steps_before = 0
        for dataset in datasets:
            data = dataset.data
            available = {
                key.removesuffix("_rgb") for key in data.array_keys() if key.endswith("_rgb")
            }
            if not expected <= available:
                raise ConfigError(
                    f"{dataset.path}: model cameras {sorted(expected)} not all in the dataset "
                    f"({sorted(available)})"
                )
            for camera in config.cameras:
                frames = np.asarray(data[f"{camera}_rgb"][:])
                images[camera].append(resize_frames(frames, config.resize))
            low_dim.append(
                low_dim_state(data["ee_pos"][:], data["ee_rot6d"][:], data["gripper_width"][:])
            )
            action.append(np.asarray(data["action"][:], dtype=np.float32))
            ends.append(dataset.episode_ends + steps_before)
            steps_before += len(action[-1])
        self.images = {camera: np.concatenate(frames) for camera, frames in images.items()}
        self.low_dim = np.concatenate(low_dim)
        self.action = np.concatenate(action)
        self.ends = np.concatenate(ends)
        self.starts = np.concatenate([[0], self.ends[:-1]])
        # The episode of every step.
        self.index = np.repeat(np.arange(len(self.ends)), self.ends - self.starts)

    def __len__(self) -> int:
        return len(self.action)

    def fit_normalizer(self, normalizer: Normalizer) -> None:
        normalizer.fit("action", torch.from_numpy(self.action))
        normalizer.fit("low_dim", torch.from_numpy(self.low_dim))

    def batch(
        self, steps: np.ndarray, normalizer: Normalizer, rng: np.random.Generator | None
    ) -> dict:
        """Training batch for global step indices `steps`; random crops when `rng` is given."""
        cfg = self.config
        episode = self.index[steps]
        first, last = self.starts[episode][:, None], self.ends[episode][:, None] - 1
        origin = steps[:, None] - (cfg.obs_horizon - 1)
        obs_idx = np.clip(origin + np.arange(cfg.obs_horizon), first, last)
        act_idx = np.clip(origin + np.arange(cfg.horizon), first, last)
        images = {}
        for camera, frames in self.images.items():
            crops = [crop_frames(frames[row], cfg.image_size, rng) for row in obs_idx]
            images[camera] = to_image_tensor(np.stack(crops))
        return {
            "images": images,
            "low_dim": normalizer.normalize("low_dim", torch.from_numpy(self.low_dim[obs_idx])),
            "action": normalizer.normalize("action", torch.from_numpy(self.action[act_idx])),
        }
