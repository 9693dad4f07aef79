"""A trained checkpoint as a Policy: preprocessing, feature caching, sampling, de-normalising.

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

from onedp_control.config import from_dict
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import load_model
from onedp_control.learning.data import crop_frames, low_dim_state, resize_frames, to_image_tensor
from onedp_control.policies.diffusion import DiffusionPolicy, Sampler
from onedp_control.policies.onedp import OneDPConfig, generate, generator_noise
from onedp_control.sim.world import Observation

DEFAULT_SAMPLER = {"diffusion": "ddpm", "onedp-s": "onestep", "onedp-d": "onestep"}


class LearnedPolicy:
    def __init__(
        self,
        model: DiffusionPolicy,
        method: str,
        sampler: Sampler,
        onedp: OneDPConfig | None = None,
        seed: int = 0,
        name: str = "learned",
    ) -> None:
        one_step = method != "diffusion"
        if one_step != (sampler.name == "onestep"):
            raise ConfigError(
                f"--sampler: '{sampler.name}' does not apply to a {method} checkpoint "
                f"(use {DEFAULT_SAMPLER[method]})"
            )
        self.model = model.eval()
        self.method = method
        self.sampler = sampler
        self.onedp = onedp
        self.seed = seed
        self.name = name
        self.obs_horizon = model.config.obs_horizon
        self.action_steps = model.config.action_steps
        self._cache: dict[float, torch.Tensor] = {}
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self._cache.clear()
        self._generator.manual_seed(self.seed)

    @torch.no_grad()
    def _frame_features(self, observation: Observation) -> torch.Tensor:
        stamp = observation.state_stamp
        if stamp not in self._cache:
            cfg = self.model.config
            images = {
                camera: to_image_tensor(
                    crop_frames(
                        resize_frames(getattr(observation, f"{camera}_rgb")[None], cfg.resize),
                        cfg.image_size,
                        None,
                    )
                )
                for camera in cfg.cameras
            }
            state = low_dim_state(
                observation.ee_pos, observation.ee_rot6d, [observation.gripper_width]
            )
            low_dim = self.model.normalizer.normalize("low_dim", torch.from_numpy(state)[None])
            self._cache = {s: f for s, f in self._cache.items() if s > stamp - 1.0}
            self._cache[stamp] = self.model.encoder.encode_frame(images, low_dim)
        return self._cache[stamp]

    @torch.no_grad()
    def encode(self, history: Sequence[Observation]) -> torch.Tensor:
        return torch.cat([self._frame_features(o) for o in history], dim=-1)

    @torch.no_grad()
    def predict_chunk(self, history: Sequence[Observation]) -> np.ndarray:
        cond = self.encode(history[-self.obs_horizon :])
        if self.sampler.name == "onestep":
            z = generator_noise(self.model, self.onedp, 1, self._generator)
            chunk = generate(self.model, self.onedp, cond, z).clamp(-1, 1)
        else:
            chunk = self.model.sample(cond, self.sampler, self._generator)
        actions = self.model.normalizer.unnormalize("action", chunk)[0]
        return actions[self.obs_horizon - 1 :].numpy().astype(np.float64)


def load_policy(path: Path, sampler: str | None = None, seed: int = 0) -> LearnedPolicy:
    payload, model = load_model(path, tuple(DEFAULT_SAMPLER))
    method = payload["method"]
    onedp = None
    if method != "diffusion":
        onedp = from_dict(OneDPConfig, payload["onedp"], f"{path}:onedp")
    spec = Sampler.parse(sampler or DEFAULT_SAMPLER[method])
    return LearnedPolicy(model, method, spec, onedp, seed, name=f"{path}:{spec.label}")
