"""The torch backend: a checkpoint (`policy.pt` or a packed model) run in eager mode. It is the
reference the exported engines are checked against, and the only backend that runs the
teachers' samplers on their own U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onedp_control.config import from_dict
from onedp_control.engines.base import (
    METHODS,
    TEACHER_METHODS,
    Engine,
    EngineSpec,
    draw_renoise,
)
from onedp_control.engines.graphs import FrameEncoderGraph, HeadSettings, OneStepHeadGraph
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import load_model
from onedp_control.policies.consistency import ConsistencyConfig
from onedp_control.policies.diffusion import DiffusionPolicy, Sampler, run_sampler
from onedp_control.policies.imle import IMLEConfig
from onedp_control.policies.onedp import OneDPConfig

# The samplers a teacher's schedule runs, the first its default. EDM: 18 Heun steps (35 network
# evaluations), the default of Karras et al. 2022, deterministic or (edmsN) stochastic; flow:
# the 50 Euler steps of the seed 002 teacher (policies/flow.py).
TEACHER_SAMPLERS = {
    "ddpm": ("ddpm", "ddimN"),
    "edm": ("edm18", "edmN", "edmsN"),
    "flow": ("euler50", "eulerN"),
}
# The one-step methods' generator settings, by their key in the policy file. OFP's settings
# are all about training: its generator needs none.
HEAD_SETTINGS = {
    "onedp-s": ("onedp", OneDPConfig),
    "onedp-d": ("onedp", OneDPConfig),
    "cp": ("cp", ConsistencyConfig),
    "imle": ("imle", IMLEConfig),
}


def samplers_for(method: str, schedule: str) -> tuple[str, ...]:
    """The samplers (as in --sampler, N for any step count) a model runs, its default first."""
    if method in TEACHER_METHODS:
        return TEACHER_SAMPLERS[schedule]
    return ("onestep", "cpN") if method == "cp" else ("onestep",)


def default_sampler(method: str, schedule: str) -> str:
    return samplers_for(method, schedule)[0]


def check_sampler(method: str, schedule: str, sampler: Sampler, where: str) -> None:
    names = {name.removesuffix("N") for name in samplers_for(method, schedule)}
    if sampler.name not in names:
        raise ConfigError(
            f"{where}: sampler '{sampler.label}' does not apply to a {method} model with the "
            f"{schedule} schedule (use {', '.join(samplers_for(method, schedule))})"
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
) -> tuple[DiffusionPolicy, HeadSettings, EngineSpec]:
    """A checkpoint's network (eval mode), its one-step generator's settings (None for a
    teacher and for OFP) and the spec for `sampler`."""
    payload, model = load_model(path, METHODS)
    method = payload["method"]
    settings = None
    if method in HEAD_SETTINGS:
        key, settings_class = HEAD_SETTINGS[method]
        if key not in payload:
            raise ConfigError(f"{path}: a {method} policy without its '{key}' settings")
        settings = from_dict(settings_class, payload[key], f"{path}:{key}")
    schedule = model.schedule.kind
    spec = Sampler.parse(sampler or default_sampler(method, schedule))
    check_sampler(method, schedule, spec, "--sampler")
    return model.eval(), settings, make_spec(model, method, spec)


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, path: Path, sampler: str | None = None, threads: int | None = None) -> None:
        model, settings, spec = load_checkpoint_model(path, sampler)
        super().__init__(spec, path)
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model
        self.sampler = Sampler.parse(spec.sampler)
        self.encoder = FrameEncoderGraph(model)
        self.head = OneStepHeadGraph(model, spec.method, settings) if spec.one_step else None

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
            renoise = draw_renoise(self.spec, rng)
            extra = () if renoise is None else (torch.from_numpy(renoise),)
            return self.head(cond, z, *extra).numpy()
        chunk = run_sampler(self.model.schedule, self.model.unet, z, cond, self.sampler, rng)
        return self.model.normalizer.unnormalize("action", chunk).numpy()
