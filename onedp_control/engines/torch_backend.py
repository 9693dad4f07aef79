"""The torch backend: a checkpoint (`policy.pt` or a packed model) run in eager mode. It is the
reference the exported engines are checked against, and the only backend that runs the
teacher's samplers on its own U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onedp_control.config import from_dict
from onedp_control.engines.base import Engine, EngineSpec
from onedp_control.engines.graphs import FrameEncoderGraph, OneStepHeadGraph
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import load_model
from onedp_control.policies.diffusion import DiffusionPolicy, Sampler, run_sampler
from onedp_control.policies.onedp import OneDPConfig

DEFAULT_SAMPLER = {"diffusion": "ddpm", "onedp-s": "onestep", "onedp-d": "onestep"}


def check_sampler(method: str, sampler: Sampler, where: str) -> None:
    if (method != "diffusion") != (sampler.name == "onestep"):
        raise ConfigError(
            f"{where}: sampler '{sampler.label}' does not apply to a {method} model "
            f"(use {DEFAULT_SAMPLER[method]})"
        )


def make_spec(model: DiffusionPolicy, method: str, sampler: Sampler) -> EngineSpec:
    cfg = model.config
    return EngineSpec(
        method=method,
        cameras=tuple(cfg.cameras),
        resize=tuple(cfg.resize),
        image_size=tuple(cfg.image_size),
        obs_horizon=cfg.obs_horizon,
        horizon=cfg.horizon,
        action_steps=cfg.action_steps,
        action_dim=cfg.action_dim,
        low_dim=cfg.low_dim,
        frame_dim=model.encoder.frame_dim,
        sampler=sampler.label,
        nfe=sampler.nfe,
    )


def load_checkpoint_model(
    path: Path, sampler: str | None
) -> tuple[DiffusionPolicy, OneDPConfig | None, EngineSpec]:
    """A checkpoint's network (eval mode), its OneDP settings and the spec for `sampler`."""
    payload, model = load_model(path, tuple(DEFAULT_SAMPLER))
    method = payload["method"]
    onedp = None
    if method != "diffusion":
        onedp = from_dict(OneDPConfig, payload["onedp"], f"{path}:onedp")
    spec = Sampler.parse(sampler or DEFAULT_SAMPLER[method])
    check_sampler(method, spec, "--sampler")
    return model.eval(), onedp, make_spec(model, method, spec)


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, path: Path, sampler: str | None = None, threads: int | None = None) -> None:
        model, onedp, spec = load_checkpoint_model(path, sampler)
        super().__init__(spec, path)
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model
        self.sampler = Sampler.parse(spec.sampler)
        self.encoder = FrameEncoderGraph(model)
        self.head = OneStepHeadGraph(model, onedp) if onedp is not None else None

    @torch.no_grad()
    def _encode(self, images: dict[str, np.ndarray], low_dim: np.ndarray) -> np.ndarray:
        inputs = [torch.from_numpy(images[camera]) for camera in self.spec.cameras]
        return self.encoder(*inputs, torch.from_numpy(low_dim)).numpy()

    @torch.no_grad()
    def _generate(
        self, obs_features: np.ndarray, noise: np.ndarray, rng: torch.Generator | None
    ) -> np.ndarray:
        cond, z = torch.from_numpy(obs_features), torch.from_numpy(noise)
        if self.head is not None:
            return self.head(cond, z).numpy()
        chunk = run_sampler(self.model.schedule, self.model.unet, z, cond, self.sampler, rng)
        return self.model.normalizer.unnormalize("action", chunk).numpy()
