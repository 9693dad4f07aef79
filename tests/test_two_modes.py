"""Mode coverage on a 2-D task with two valid answers: pass an obstacle on the left or right.

The action is the 2-D point where the path crosses the obstacle's depth: valid when it goes
through the gap left or right of the obstacle, invalid when it hits the obstacle (the middle).
A small DDPM teacher (an MLP, same schedules and samplers as the real policies) learns both
answers; OneDP-S distilled from it keeps both in one step, where a student trained by plain
regression on the teacher's samples collapses onto the invalid middle, and the teacher's own
one-step DDIM gives mostly invalid samples (the paper's Table 1: DDIM with one step fails).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from onedp_control.diffusion.schedules import DDPMSchedule
from onedp_control.policies.onedp import OneDPConfig, OneDPDistiller, generate, generator_noise

MODES = torch.tensor([[-0.6, 0.4], [0.6, 0.4]])  # through the gap left of the obstacle, or right
SPREAD = 0.05
OBSTACLE_HALF_WIDTH = 0.25  # an obstacle on the middle path: |x| <= 0.25 hits it
GAP = (0.25, 0.95)  # each gap spans this |x|, between the obstacle and a wall ...
GAP_Y = (0.15, 0.65)  # ... at the obstacle's depth


@dataclass(frozen=True)
class ToyConfig:
    horizon: int = 1
    action_dim: int = 2


class MLPDenoiser(nn.Module):
    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + 16, width),
            nn.Mish(),
            nn.Linear(width, width),
            nn.Mish(),
            nn.Linear(width, width),
            nn.Mish(),
            nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond) -> torch.Tensor:
        level = torch.as_tensor(level, dtype=torch.float32).expand(x.shape[0])
        freqs = torch.exp(-np.log(1000.0) * torch.arange(8) / 8)
        angles = level[:, None] * freqs[None]
        features = torch.cat([x[:, 0], angles.sin(), angles.cos()], dim=-1)
        return self.net(features)[:, None]


class ToyPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unet = MLPDenoiser()
        self.schedule = DDPMSchedule()
        self.config = ToyConfig()

    def encode(self, batch: dict) -> torch.Tensor:
        return batch["cond"]


def expert_samples(n: int, rng: torch.Generator) -> torch.Tensor:
    which = torch.randint(0, 2, (n,), generator=rng)
    return (MODES[which] + SPREAD * torch.randn(n, 2, generator=rng))[:, None]


def score(samples: torch.Tensor) -> tuple[float, float, float]:
    """(share through the left gap, share through the right gap, share through either)."""
    x, y = samples[:, 0, 0], samples[:, 0, 1]
    through = (x.abs() > GAP[0]) & (x.abs() < GAP[1]) & (y > GAP_Y[0]) & (y < GAP_Y[1])
    left, right = through & (x < 0), through & (x > 0)
    return float(left.float().mean()), float(right.float().mean()), float(through.float().mean())


@pytest.fixture(scope="module")
def teacher() -> ToyPolicy:
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    policy = ToyPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    for _ in range(1500):
        x0 = expert_samples(256, rng)
        loss = policy.schedule.loss(policy.unet, x0, None, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def test_teacher_samples_both_answers(teacher):
    rng = torch.Generator().manual_seed(1)
    noise = torch.randn(1000, 1, 2, generator=rng)
    with torch.no_grad():
        samples = teacher.schedule.sample_ddpm(teacher.unet, noise, None, rng)
    left, right, valid = score(samples)
    assert left > 0.3 and right > 0.3 and valid > 0.9, (left, right, valid)


def test_ddim_one_step_gives_poor_samples(teacher):
    noise = torch.randn(1000, 1, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        samples = teacher.schedule.sample_ddim(teacher.unet, noise, None, 1)
    _, _, valid = score(samples)
    assert valid < 0.5, valid


def test_onedp_s_keeps_both_modes_where_regression_collapses(teacher):
    rng = torch.Generator().manual_seed(3)
    # Teacher samples as distillation targets for the regression student.
    with torch.no_grad():
        targets = teacher.schedule.sample_ddpm(
            teacher.unet, torch.randn(2000, 1, 2, generator=rng), None, rng
        )
    regression = nn.Sequential(nn.Linear(1, 64), nn.Mish(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(regression.parameters(), lr=1e-2)
    observation = torch.zeros(2000, 1)  # the same observation for every sample
    for _ in range(300):
        loss = torch.mean((regression(observation) - targets[:, 0]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, _, regression_valid = score(regression(observation[:1000])[:, None])
    assert regression_valid < 0.1, regression_valid

    # The paper's learning rates (1e-6 for G, 2e-5 for psi) are for a large network and many
    # epochs; this toy keeps their 1:20 ratio, 100 times larger, to converge in seconds.
    # Everything else is as in the paper's Table 7.
    config = OneDPConfig(method="onedp-s", lr_generator=1e-4, lr_score=2e-3)
    distiller = OneDPDistiller(teacher, config)
    batch = {"action": torch.zeros(256, 1, 2), "cond": None}
    for _ in range(2500):
        distiller.step(batch, rng)
    with torch.no_grad():
        z = generator_noise(distiller.generator, config, 1000, rng)
        samples = generate(distiller.generator, config, None, z)
    left, right, valid = score(samples)
    assert left >= 0.3 and right >= 0.3, (left, right)
    assert valid >= 0.9, valid
