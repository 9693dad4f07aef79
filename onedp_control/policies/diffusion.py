"""Diffusion Policy (Chi et al. 2023): the teacher. Configuration, network, loss and samplers.

Observation encoder: a ResNet-18 per camera (GroupNorm, spatial-softmax keypoints, no
pretraining) on the last `obs_horizon` frames, with the low-dim state concatenated. Action
model: the 1-D temporal conditional U-Net, FiLM-conditioned on the noise level and the encoded
observations, denoising a chunk of `horizon` actions. DDPM (epsilon prediction) or EDM
(x0 prediction), from the shared schedules module.

Sizes: `ModelConfig()` is the CPU size this repository trains (stated in models/*/README.md);
`PAPER_MODEL` is Diffusion Policy's (ResNet-18 width 64, U-Net 256-512-1024, step embedding 128:
the 67M-parameter U-Net of the OneDP paper) for GPU users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from onedp_control.diffusion.schedules import make_schedule
from onedp_control.errors import ConfigError
from onedp_control.nn.unet1d import ConditionalUnet1D
from onedp_control.nn.vision import ObservationEncoder


@dataclass(frozen=True)
class ModelConfig:
    cameras: tuple[str, ...] = ("front", "wrist")
    resize: tuple[int, int] = (76, 100)  # dataset frames (120x160) are resized to this ...
    image_size: tuple[int, int] = (72, 96)  # ... then cropped (random in training, centred after)
    vision_width: int = 16  # ResNet-18 base width; 64 is the standard ResNet-18
    keypoints: int = 32
    feature_dim: int = 64
    low_dim: int = 10
    action_dim: int = 10
    obs_horizon: int = 2
    horizon: int = 16
    action_steps: int = 8
    down_dims: tuple[int, ...] = (64, 128, 256)
    step_embed_dim: int = 64
    kernel: int = 5
    groups: int = 8
    schedule: str = "ddpm"  # ddpm | edm | flow

    def validate(self, where: str) -> None:
        if self.schedule not in ("ddpm", "edm", "flow"):
            raise ConfigError(
                f"{where}: schedule must be 'ddpm' or 'edm' (diffusion) or 'flow' (flow "
                f"matching), got '{self.schedule}'"
            )
        if any(c > r for c, r in zip(self.image_size, self.resize, strict=True)):
            raise ConfigError(f"{where}: image_size {self.image_size} exceeds resize {self.resize}")
        if not 1 <= self.action_steps <= self.horizon - self.obs_horizon + 1:
            raise ConfigError(f"{where}: action_steps {self.action_steps} out of range")
        if self.horizon % 2 ** (len(self.down_dims) - 1):
            raise ConfigError(f"{where}: horizon must be divisible by 2^(len(down_dims)-1)")


PAPER_MODEL = ModelConfig(
    resize=(120, 160),
    image_size=(108, 144),
    vision_width=64,
    down_dims=(256, 512, 1024),
    step_embed_dim=128,
)


@dataclass(frozen=True)
class Sampler:
    """How to draw an action chunk: `ddpm` (K steps), `ddimN`, `edmN` (Heun, N steps), `edmsN`
    (Heun with churn, stochastic, N steps), `eulerN` (a flow teacher, N Euler steps), `onestep`
    (a one-step generator) or `cpN` (a consistency student chained over N steps,
    policies/consistency.py; cp1 is its onestep)."""

    name: str
    steps: int

    @classmethod
    def parse(cls, text: str) -> Sampler:
        match = re.fullmatch(r"(ddpm|ddim|edms|edm|euler|onestep|cp)(\d*)", text)
        if match is None:
            raise ConfigError(
                f"--sampler: unknown sampler '{text}' "
                "(use ddpm, ddimN, edmN, edmsN, eulerN, onestep or cpN)"
            )
        name, digits = match.groups()
        if name == "ddpm" and not digits:
            return cls("ddpm", 100)
        if name == "onestep" and not digits:
            return cls("onestep", 1)
        if name in ("ddim", "edm", "edms", "euler", "cp") and digits and int(digits) >= 1:
            return cls(name, int(digits))
        raise ConfigError(f"--sampler: '{text}' needs a step count (e.g. ddim10) or none (ddpm)")

    @property
    def label(self) -> str:
        return {"ddpm": "ddpm", "onestep": "onestep"}.get(self.name, f"{self.name}{self.steps}")

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1 if self.name in ("edm", "edms") else self.steps


class Normalizer(nn.Module):
    """Per-dimension affine map of actions and low-dim state to [-1, 1], fitted on a dataset.

    Dimensions that barely vary (the z components of a top-down gripper's 6-D rotation) get a
    floor on their range, so that sensor noise is not blown up into large normalised values."""

    MIN_RANGE = 0.05

    def __init__(self, action_dim: int, low_dim: int) -> None:
        super().__init__()
        for key, dim in (("action", action_dim), ("low_dim", low_dim)):
            self.register_buffer(f"{key}_scale", torch.ones(dim))
            self.register_buffer(f"{key}_offset", torch.zeros(dim))

    def fit(self, key: str, values: torch.Tensor) -> None:
        flat = values.reshape(-1, values.shape[-1]).float()
        low, high = flat.min(0).values, flat.max(0).values
        scale = 2.0 / torch.clamp(high - low, min=self.MIN_RANGE)
        getattr(self, f"{key}_scale").copy_(scale)
        getattr(self, f"{key}_offset").copy_(-(high + low) / 2 * scale)

    def normalize(self, key: str, values: torch.Tensor) -> torch.Tensor:
        return values * getattr(self, f"{key}_scale") + getattr(self, f"{key}_offset")

    def unnormalize(self, key: str, values: torch.Tensor) -> torch.Tensor:
        return (values - getattr(self, f"{key}_offset")) / getattr(self, f"{key}_scale")


class DiffusionPolicy(nn.Module):
    method = "diffusion"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ObservationEncoder(
            config.cameras,
            config.vision_width,
            config.keypoints,
            config.feature_dim,
            config.low_dim,
        )
        self.unet = ConditionalUnet1D(
            config.action_dim,
            config.obs_horizon * self.encoder.frame_dim,
            config.down_dims,
            config.step_embed_dim,
            config.kernel,
            config.groups,
        )
        self.normalizer = Normalizer(config.action_dim, config.low_dim)
        self.schedule = make_schedule(config.schedule)

    def encode(self, batch: dict) -> torch.Tensor:
        """Global condition from a batch of images (B, To, 3, H, W) and normalised low-dim."""
        return self.encoder(batch["images"], batch["low_dim"])

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.schedule.loss(self.unet, batch["action"], self.encode(batch), generator)

    def sample(
        self, cond: torch.Tensor, sampler: Sampler, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A normalised action chunk (B, horizon, action_dim) for a global condition."""
        shape = (cond.shape[0], self.config.horizon, self.config.action_dim)
        noise = torch.randn(shape, generator=generator)
        return run_sampler(self.schedule, self.unet, noise, cond, sampler, generator)


def run_sampler(
    schedule,
    net,
    noise: torch.Tensor,
    cond: torch.Tensor,
    sampler: Sampler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A multi-step sampler of `schedule` over any denoising network `net(x, level, cond)`: the
    torch U-Net, or an exported one behind an inference engine."""
    if sampler.name == "ddpm" and schedule.kind == "ddpm":
        return schedule.sample_ddpm(net, noise, cond, generator)
    if sampler.name == "ddim" and schedule.kind == "ddpm":
        return schedule.sample_ddim(net, noise, cond, sampler.steps)
    if sampler.name in ("edm", "edms") and schedule.kind == "edm":
        stochastic = sampler.name == "edms"
        return schedule.sample_heun(net, noise, cond, sampler.steps, stochastic, generator)
    if sampler.name == "euler" and schedule.kind == "flow":
        return schedule.sample_euler(net, noise, cond, sampler.steps)
    raise ConfigError(
        f"--sampler: '{sampler.name}' does not apply to a {schedule.kind.upper()} teacher"
    )
