"""A trained model as a Policy, behind any inference engine: preprocessing, feature caching,
noise, and the chunk's time origin.

Each observation frame is encoded once: its features are cached by timestamp, so at the next
control step only the new frame goes through the vision encoders (with obs horizon 2, half the
encoder work). The chunk returned starts at the newest observation's step (index To-1 of the
network's chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from onedp_control.engines import load_engine
from onedp_control.engines.base import Engine, EngineSpec
from onedp_control.learning.data import crop_frames, low_dim_state, resize_frames, to_image_tensor
from onedp_control.policies.diffusion import Sampler
from onedp_control.sim.world import Observation


def preprocess_frame(
    observation: Observation, spec: EngineSpec
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Camera frames resized and centre-cropped as in training, as float32 (1, 3, H, W) in
    [0, 1]; the raw low-dim state (1, D)."""
    images = {
        camera: to_image_tensor(
            crop_frames(
                resize_frames(getattr(observation, f"{camera}_rgb")[None], spec.resize),
                spec.image_size,
                None,
            )
        ).numpy()
        for camera in spec.cameras
    }
    state = low_dim_state(observation.ee_pos, observation.ee_rot6d, [observation.gripper_width])
    return images, state[None]


class LearnedPolicy:
    def __init__(self, engine: Engine, seed: int = 0, name: str = "learned") -> None:
        self.engine = engine
        spec = engine.spec
        self.sampler = Sampler.parse(spec.sampler)
        self.backend = engine.backend
        self.seed = seed
        self.name = name
        self.obs_horizon = spec.obs_horizon
        self.action_steps = spec.action_steps
        self._cache: dict[tuple[float, float, float], np.ndarray] = {}
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self._cache.clear()
        self._generator.manual_seed(self.seed)

    def _frame_features(self, observation: Observation) -> np.ndarray:
        # A frame is its cameras' and its state's stamps (they differ on a real robot).
        key = (observation.front_stamp, observation.wrist_stamp, observation.state_stamp)
        if key not in self._cache:
            newest = max(key)
            self._cache = {k: f for k, f in self._cache.items() if max(k) > newest - 1.0}
            self._cache[key] = self.engine.encode_frame(
                *preprocess_frame(observation, self.engine.spec)
            )
        return self._cache[key]

    def predict_chunk(self, history: Sequence[Observation]) -> np.ndarray:
        spec = self.engine.spec
        features = np.concatenate(
            [self._frame_features(o) for o in history[-self.obs_horizon :]], axis=-1
        )
        shape = spec.noise_shape()
        noise = torch.randn(shape, generator=self._generator) if spec.stochastic else None
        noise = np.zeros(shape, np.float32) if noise is None else noise.numpy()
        chunk = self.engine.generate(features, noise, self._generator)[0]
        return chunk[self.obs_horizon - 1 :].astype(np.float64)


def load_policy(
    path: Path,
    sampler: str | None = None,
    seed: int = 0,
    backend: str | None = None,
    threads: int | None = None,
) -> LearnedPolicy:
    engine = load_engine(path, backend, sampler, threads=threads)
    return LearnedPolicy(engine, seed, name=f"{path}:{engine.spec.sampler}")
