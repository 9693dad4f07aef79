"""OneDP (Wang et al. 2024): distil a diffusion policy into a one-step action generator.

Notation as in the paper: teacher epsilon_phi (frozen), generator G_theta, generator score
network epsilon_psi; x_k = alpha_k x0 + sigma_k eps (shared schedules module), score
s(x_k) = -eps(x_k) / sigma_k (Eq. 1).

- Generator (Eq. 3). G_theta is a copy of the teacher's network (encoders + U-Net) evaluated at
  a fixed noise level, timestep 65 (DDPM) or sigma = 2.5 (EDM), and read out as the teacher's
  x0 estimate there: A = x0(z_in, level, O) with z_in = z (DDPM) or sigma * z (EDM). So the
  warm-started generator starts as the teacher's one-step denoiser. (The paper says "direct
  action predictions" from a fixed time embedding; reading the output through the schedule's
  x0 is our choice, and keeps one generator definition for both schedules.)
- OneDP-S, generator (Eq. 5) with w(k) = sigma_k^2: the gradient with respect to x_k is
  sigma_k^2 (s_G - s_phi) = sigma_k (eps_phi(x_k) - eps_psi(x_k)), applied through x_k with a
  stop-gradient surrogate. Distillation levels: k uniform in [2, 95] (DDPM) or EDM's log-normal.
- OneDP-S, generator score network (Eq. 6): epsilon_psi is trained by the schedule's own
  denoising loss on stop-gradient generator samples.
- OneDP-D (Eq. 7, 8): a deterministic generator (z = 0 in place of noise); its score is known,
  s_G = -eps_k / sigma_k, so the gradient is sigma_k (eps_phi(x_k) - eps_k) and no psi is needed.
- Both expectations over (k, eps) are estimated with `draws` pairs per generated chunk (the
  encoders run once; only the U-Net passes repeat). One draw is Algorithm 1 as written; more
  lower the variance of psi's denoising loss and of the score difference, so psi drifts less
  from the teacher while it learns the generator (the shipped pnp_milk OneDP-S uses 8, with the
  generator at 5e-6: models/pnp_milk/README.md).
- Optimisers (Table 7): Adam with betas (0, 0.999); generator lr 1e-6, score network lr 2e-5.
  The vision encoders of G and psi are trained too; the teacher stays fixed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from onedp_control.diffusion.schedules import DDPMSchedule
from onedp_control.errors import ConfigError

METHODS = ("onedp-s", "onedp-d")


class DenoisingPolicy(Protocol):
    """What distillation needs of a teacher: a DiffusionPolicy, or any small network shaped
    like it (the two-mode test uses an MLP)."""

    schedule: object
    unet: nn.Module  # unet(x, level, cond) -> raw output for the schedule

    @property
    def config(self): ...  # .horizon, .action_dim

    def encode(self, batch: dict) -> torch.Tensor: ...


@dataclass(frozen=True)
class OneDPConfig:
    method: str = "onedp-s"  # onedp-s | onedp-d
    init_timestep: int = 65  # the generator's fixed level for a DDPM teacher ...
    init_sigma: float = 2.5  # ... and for an EDM teacher
    timestep_range: tuple[int, int] = (2, 95)  # distillation levels for DDPM
    lr_generator: float = 1e-6
    lr_score: float = 2e-5
    betas: tuple[float, float] = (0.0, 0.999)
    draws: int = 1  # (k, eps) draws per generated chunk for Eq. 5 and Eq. 6

    def validate(self, where: str) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}")
        low, high = self.timestep_range
        if not 0 <= low <= high < DDPMSchedule().steps:
            raise ConfigError(f"{where}: timestep_range {self.timestep_range} out of [0, 99]")
        if self.draws < 1:
            raise ConfigError(f"{where}: draws must be >= 1, got {self.draws}")

    @property
    def stochastic(self) -> bool:
        return self.method == "onedp-s"


def generator_level(model: DenoisingPolicy, config: OneDPConfig, batch: int) -> torch.Tensor:
    if model.schedule.kind == "ddpm":
        return torch.full((batch,), config.init_timestep, dtype=torch.long)
    return torch.full((batch,), config.init_sigma)


def generator_input(model: DenoisingPolicy, config: OneDPConfig, z: torch.Tensor) -> torch.Tensor:
    return z if model.schedule.kind == "ddpm" else config.init_sigma * z


def generate(
    generator: DenoisingPolicy, config: OneDPConfig, cond: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """One network evaluation: noise (zeros for OneDP-D) and condition -> normalised chunk."""
    level = generator_level(generator, config, z.shape[0])
    return generator.schedule.x0(generator.unet, generator_input(generator, config, z), level, cond)


def generator_noise(
    model: DenoisingPolicy, config: OneDPConfig, batch: int, rng: torch.Generator | None = None
) -> torch.Tensor:
    shape = (batch, model.config.horizon, model.config.action_dim)
    return torch.randn(shape, generator=rng) if config.stochastic else torch.zeros(shape)


def distillation_levels(
    schedule, config: OneDPConfig, batch: int, rng: torch.Generator | None
) -> torch.Tensor:
    if schedule.kind == "ddpm":
        low, high = config.timestep_range
        return schedule.sample_levels(batch, rng, low=low, high=high)
    return schedule.sample_levels(batch, rng)


def repeat_draws(tensor: torch.Tensor | None, draws: int) -> torch.Tensor | None:
    """`draws` copies of a batch, stacked along the batch axis (None: a model without
    condition, as in the two-mode test)."""
    if tensor is None or draws == 1:
        return tensor
    return tensor.repeat(draws, *(1,) * (tensor.dim() - 1))


class OneDPDistiller:
    """Holds teacher, generator (and score network) and performs one Algorithm-1 iteration."""

    def __init__(self, teacher: DenoisingPolicy, config: OneDPConfig) -> None:
        self.config = config
        self.teacher = teacher.eval().requires_grad_(False)
        self.generator = copy.deepcopy(teacher).train().requires_grad_(True)
        self.score = (
            copy.deepcopy(teacher).train().requires_grad_(True) if config.stochastic else None
        )
        self.generator_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=config.lr_generator, betas=config.betas
        )
        self.score_optimizer = (
            torch.optim.Adam(self.score.parameters(), lr=config.lr_score, betas=config.betas)
            if self.score is not None
            else None
        )

    def step(self, batch: dict, rng: torch.Generator | None = None) -> dict[str, float]:
        cfg, schedule = self.config, self.teacher.schedule
        size = batch["action"].shape[0]
        z = generator_noise(self.generator, cfg, size, rng)
        actions = generate(self.generator, cfg, self.generator.encode(batch), z)
        # Each chunk is diffused `draws` times; the copies share the chunk's condition.
        drawn = repeat_draws(actions, cfg.draws)
        losses = {}
        if self.score is not None:  # Eq. 6: the score network follows the generator
            score_cond = repeat_draws(self.score.encode(batch), cfg.draws)
            score_loss = schedule.loss(self.score.unet, drawn.detach(), score_cond, rng)
            self.score_optimizer.zero_grad(set_to_none=True)
            score_loss.backward()
            self.score_optimizer.step()
            losses["score"] = float(score_loss.detach())

        levels = distillation_levels(schedule, cfg, drawn.shape[0], rng)
        noise = torch.randn(drawn.shape, generator=rng)
        noisy, sigma = schedule.diffuse(drawn, levels, noise)
        with torch.no_grad():
            teacher_cond = repeat_draws(self.teacher.encode(batch), cfg.draws)
            eps_teacher = schedule.eps(self.teacher.unet, noisy, levels, teacher_cond)
            if self.score is not None:  # Eq. 5
                score_cond = repeat_draws(self.score.encode(batch), cfg.draws)
                eps_generator = schedule.eps(self.score.unet, noisy, levels, score_cond)
            else:  # Eq. 7-8: a point mass's diffused score is known exactly
                eps_generator = noise
            gradient = sigma.reshape(-1, 1, 1) * (eps_teacher - eps_generator)
        # d/d(theta) of this surrogate is gradient * d(x_k)/d(theta), the KL gradient of Eq. 5/8
        # averaged over the draws.
        surrogate = (gradient * noisy).sum() / drawn.shape[0]
        self.generator_optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        self.generator_optimizer.step()
        losses["score_difference"] = float(gradient.pow(2).mean())
        return losses

    def state_dict(self) -> dict:
        state = {
            "generator": self.generator.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
        }
        if self.score is not None:
            state["score"] = self.score.state_dict()
            state["score_optimizer"] = self.score_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        if self.score is not None:
            self.score.load_state_dict(state["score"])
            self.score_optimizer.load_state_dict(state["score_optimizer"])
