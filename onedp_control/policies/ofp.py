"""One-Step Flow Policy, OFP (Li, Sun, Chen 2026, arXiv 2603.12480; seed 000): a one-step flow
policy trained from scratch, with no pretrained teacher.

The paper's body was not available here; the equations below are those of two independent
explainers that agree with each other ([S1], [S2] in shared/reference/one_step_methods.md,
section 1), which give no equation numbers. Path z_t = (1 - t) eps + t a (t = 0 noise, t = 1
data: FlowSchedule's convention). The network predicts the average velocity u(z, t, r | o)
over [t, r], 0 <= t <= r <= 1, so that z_r = z_t + (r - t) u; u(z, t, t) is the instantaneous
velocity. theta- is an EMA copy of theta, sg a stop-gradient.

- Flow anchor: L_flow = || u(z_t, t, t | o) - (a - eps) ||^2 (FlowSchedule.loss on the
  diagonal r = t, uniform t).
- Self-consistency (only forward passes, no JVP): t < r; m ~ U[t, t + (r - t) rho(s)] with the
  time-contracting schedule rho decreasing over training step s; z_m from the same (eps, a);
  U = [(m - t)(a - eps) + (r - m) sg(u-(z_m, m, r | o))] / (r - t);
  L_sc = || u(z_t, t, r | o) - U ||^2.
- Self-guidance: y = u(z_t, t, 1 | o), a_hat = z_t + (1 - t) y, re-noised
  z~ = (1 - t') eps' + t' a_hat; g = u-(z~, t', t' | o) - u-(z~, t', t' | null);
  L_sg = || y - sg(y + w g) ||^2, which pushes y along the EMA model's own
  conditional-minus-unconditional gap (no teacher); needs condition dropout in training.
- L = L_flow + lambda_c L_sc + lambda_g L_sg.
- Inference, 1 NFE: a = eps + u(eps, 0, 1 | o); K steps on the grid k / K:
  z <- z + (tau_{k+1} - tau_k) u(z, tau_k, tau_{k+1} | o). The chunk is clamped to [-1, 1].

Everything numeric is unspecified by the sources. Choices, with where they come from:
- Rows (third-party reimplementation [T1], not the paper's): 1/4 of the batch are consistency
  rows with t ~ Beta(1, 1.5) and r - t = (1 - t) sigmoid(N(-0.2, 1)); the other 3/4 are flow
  rows; guidance on 1/10 of the batch, on its own fresh (t, eps), t and t' ~ U[0, 1].
- rho: linear from 1 to 0 over training ([T1]).
- Condition dropout 0.1, guidance scale w = 1 and lambda_g = 0.05 (an online-RL port's values;
  its flow and consistency weights 0.8 / 0.2 are replaced by [T1]'s row split with
  lambda_c = 1). lambda_g matters: L_sg's gradient is a constant push of y = u(., ., 1) along
  g, and the other terms rarely train r = 1 to hold y back; with lambda_g = 1 the toy of
  tests/test_two_modes_methods.py drifted off the data range and its flow loss diverged.
- The null condition is a learned vector in place of the observation features ([T1]); the
  second time r enters the U-Net through two_time.py's embedding of r (not r - t).
- a_hat is clamped to the data range before re-noising; theta- has EMA decay 0.99 (with decay
  0, a stop-gradient copy, and lambda_g = 1 the toy diverged too) and runs in eval mode (no
  layer of this network behaves differently there).
- AdamW, lr 1e-4, weight decay 1e-6: the teacher's optimiser in this project (`onedp train`'s
  settings).
- The warm start from the previous chunk (t_w = 0.15) is not implemented: the engine contract
  has no previous chunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from onedp_control.errors import ConfigError
from onedp_control.policies.diffusion import ModelConfig
from onedp_control.policies.two_time import TwoTimeModel, TwoTimePolicy, update_target

METHOD = "ofp"


@dataclass(frozen=True)
class OFPConfig:
    consistency_share: float = 0.25
    guidance_share: float = 0.1
    consistency_weight: float = 1.0  # lambda_c
    guidance_weight: float = 0.05  # lambda_g
    guidance_scale: float = 1.0  # w
    condition_dropout: float = 0.1
    contraction_end: float = 0.0  # rho at the end of training; it starts at 1
    time_beta: float = 1.5  # consistency rows: t ~ Beta(1, time_beta) ...
    gap_mean: float = -0.2  # ... and r - t = (1 - t) sigmoid(N(gap_mean, gap_std^2))
    gap_std: float = 1.0
    target_decay: float = 0.99

    def validate(self, where: str) -> None:
        if not 0 <= self.consistency_share < 1:  # the rest of the batch are flow rows
            raise ConfigError(f"{where}: consistency_share must be in [0, 1)")
        if not 0 <= self.guidance_share <= 1 or not 0 <= self.condition_dropout <= 1:
            raise ConfigError(f"{where}: guidance_share and condition_dropout must be in [0, 1]")
        if min(self.consistency_weight, self.guidance_weight, self.guidance_scale) < 0:
            raise ConfigError(f"{where}: weights and guidance_scale must be >= 0")
        if not 0 <= self.contraction_end <= 1 or not 0 <= self.target_decay < 1:
            raise ConfigError(f"{where}: contraction_end in [0, 1], target_decay in [0, 1)")
        if self.time_beta <= 0 or self.gap_std <= 0:
            raise ConfigError(f"{where}: time_beta and gap_std must be > 0")


class GuidedTwoTimeModel(TwoTimeModel, Protocol):
    null_condition: nn.Parameter  # stands for "no observation" in place of the features


class OneStepFlowPolicy(TwoTimePolicy):
    """The OFP network: DiffusionPolicy (flow schedule) + second time + learned null condition.
    Its state dict is the DiffusionPolicy's plus `second_time.*` and `null_condition`."""

    method = METHOD

    def __init__(self, config: ModelConfig) -> None:
        if config.schedule != "flow":
            raise ConfigError(f"OFP needs model.schedule 'flow', not '{config.schedule}'")
        super().__init__(config)
        self.null_condition = nn.Parameter(torch.zeros(config.obs_horizon * self.encoder.frame_dim))


def average_velocity(
    model: TwoTimeModel, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """u(z, t, r | cond), times in [0, 1]."""
    scale = model.schedule.level_scale
    return model.unet(z, t * scale, model.second_time(r * scale, cond))


def generate(
    model: TwoTimeModel, cond: torch.Tensor, z: torch.Tensor, steps: int = 1
) -> torch.Tensor:
    """`steps` jumps from noise z (B, T, D) at t = 0 to the data at t = 1; 1 step is OFP-1."""
    size = z.shape[0]
    for index in range(steps):
        t = torch.full((size,), index / steps)
        r = torch.full((size,), (index + 1) / steps)
        z = z + (r - t).reshape(-1, 1, 1) * average_velocity(model, z, t, r, cond)
    return z.clamp(-1, 1)


class OneStepFlowTrainer:
    """The OFP network, its EMA target theta- and optimiser, and one training iteration.
    `total_steps` sets the time-contracting schedule rho. The optimiser is the teacher's
    (AdamW; lr and weight decay from the training loop's settings, defaults as OptimConfig's) and
    is exposed so that the loop can attach its learning-rate schedule."""

    def __init__(
        self,
        model: GuidedTwoTimeModel,
        config: OFPConfig,
        total_steps: int,
        lr: float = 1e-4,
        weight_decay: float = 1e-6,
    ) -> None:
        if model.schedule.kind != "flow":
            raise ConfigError(f"OFP needs a flow schedule, not {model.schedule.kind}")
        self.config = config
        self.total_steps = total_steps
        self.steps_done = 0
        self.model = model.train().requires_grad_(True)
        self.target = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def contraction(self) -> float:
        """rho(s): 1 at the start, contraction_end at total_steps, linear in between."""
        progress = min(1.0, self.steps_done / max(1, self.total_steps))
        return 1 - (1 - self.config.contraction_end) * progress

    def _drop(self, cond: torch.Tensor, null: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return torch.where(dropped[:, None], null.expand_as(cond), cond)

    def _consistency(
        self, a: torch.Tensor, cond: torch.Tensor, cond_target: torch.Tensor, rng
    ) -> torch.Tensor:
        cfg, schedule = self.config, self.model.schedule
        size = a.shape[0]
        # t ~ Beta(1, b) by inverting its CDF 1 - (1 - t)^b (torch's Beta takes no generator).
        t = 1 - (1 - torch.rand(size, generator=rng)) ** (1 / cfg.time_beta)
        gap = torch.sigmoid(cfg.gap_mean + cfg.gap_std * torch.randn(size, generator=rng))
        r = t + (1 - t) * gap
        # m = t + share (r - t), share ~ U[0, rho]: U's weights are share and 1 - share.
        share = self.contraction() * torch.rand(size, generator=rng)
        m = t + share * (r - t)
        eps = torch.randn(a.shape, generator=rng)
        z_t, _ = schedule.diffuse(a, t, eps)
        z_m, _ = schedule.diffuse(a, m, eps)
        with torch.no_grad():
            u_m = average_velocity(self.target, z_m, m, r, cond_target)
            target = share.reshape(-1, 1, 1) * (a - eps) + (1 - share).reshape(-1, 1, 1) * u_m
        return torch.mean((average_velocity(self.model, z_t, t, r, cond) - target) ** 2)

    def _guidance(
        self, a: torch.Tensor, cond: torch.Tensor, cond_target: torch.Tensor, rng
    ) -> torch.Tensor:
        schedule, size = self.model.schedule, a.shape[0]
        t = schedule.sample_levels(size, rng)
        z_t, _ = schedule.diffuse(a, t, torch.randn(a.shape, generator=rng))
        y = average_velocity(self.model, z_t, t, torch.ones(size), cond)
        with torch.no_grad():
            a_hat = (z_t + (1 - t).reshape(-1, 1, 1) * y).clamp(-1, 1)
            t_renoise = schedule.sample_levels(size, rng)
            z_renoised, _ = schedule.diffuse(a_hat, t_renoise, torch.randn(a.shape, generator=rng))
            null = self.target.null_condition.expand_as(cond_target)
            gap = average_velocity(
                self.target, z_renoised, t_renoise, t_renoise, cond_target
            ) - average_velocity(self.target, z_renoised, t_renoise, t_renoise, null)
            target = y + self.config.guidance_scale * gap
        return torch.mean((y - target) ** 2)

    def step(self, batch: dict, rng: torch.Generator | None = None) -> dict[str, float]:
        cfg, model = self.config, self.model
        a = batch["action"]
        size = a.shape[0]
        cond = model.encode(batch)
        with torch.no_grad():
            cond_target = self.target.encode(batch)
        dropped = torch.rand(size, generator=rng) < cfg.condition_dropout
        cond_dropped = self._drop(cond, model.null_condition, dropped)
        target_dropped = self._drop(cond_target, self.target.null_condition, dropped)

        consistency_rows = round(size * cfg.consistency_share)
        guidance_rows = round(size * cfg.guidance_share)

        def diagonal(x: torch.Tensor, level: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return model.unet(x, level, model.second_time(level, c))  # u(z, t, t)

        flow = model.schedule.loss(
            diagonal, a[consistency_rows:], cond_dropped[consistency_rows:], rng
        )
        losses = {"flow": flow}
        loss = flow
        if consistency_rows:
            losses["consistency"] = self._consistency(
                a[:consistency_rows],
                cond_dropped[:consistency_rows],
                target_dropped[:consistency_rows],
                rng,
            )
            loss = loss + cfg.consistency_weight * losses["consistency"]
        if guidance_rows:
            losses["guidance"] = self._guidance(
                a[:guidance_rows], cond[:guidance_rows], cond_target[:guidance_rows], rng
            )
            loss = loss + cfg.guidance_weight * losses["guidance"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        update_target(self.target, model, cfg.target_decay)
        self.steps_done += 1
        return {name: float(value.detach()) for name, value in losses.items()}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = state["steps_done"]
