"""The flow-matching teacher of seed 002 (Flow2One): conditional flow matching on action chunks.

The network is the Diffusion Policy network unchanged (encoders + 1-D conditional U-Net); only
the schedule differs, so `onedp train` trains it with `model.schedule: flow` and the sampler
runs through the shared `run_sampler` (`--sampler eulerN`). All equations live in
`FlowSchedule` (diffusion/schedules.py):

- path: x_t = t a + (1 - t) eps, eps ~ N(0, I), t = 0 noise, t = 1 data (rectified flow /
  conditional flow matching with sigma_min = 0, Lipman et al. 2023, Liu et al. 2023);
- loss: E_{t ~ U[0, 1], eps} || v_theta(x_t, t | o) - (a - eps) ||^2;
- sampling: Euler, x <- x + v_theta(x, k / K | o) / K for k = 0..K-1, then clamp to [-1, 1];
  K = 50 is the seed 002 teacher ("50 ODE steps").

Choices (the seed and its reference are silent): uniform training times, the level 100 t fed to
the U-Net, the final clamp. This module adds the teacher's use as an offline oracle for IMLE
set distillation: a set of chunks per observation.
"""

from __future__ import annotations

import torch

from onedp_control.errors import ConfigError
from onedp_control.policies.onedp import DenoisingPolicy

TEACHER_STEPS = 50  # seed 002: the CFM teacher is sampled with 50 ODE steps


@torch.no_grad()
def sample_set(
    teacher: DenoisingPolicy,
    cond: torch.Tensor,
    count: int,
    steps: int = TEACHER_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`count` independent teacher chunks per condition: (B, count, horizon, action_dim)."""
    if teacher.schedule.kind != "flow":
        raise ConfigError(f"a flow teacher is needed, not a {teacher.schedule.kind} one")
    size, horizon, action_dim = cond.shape[0], teacher.config.horizon, teacher.config.action_dim
    noise = torch.randn((size * count, horizon, action_dim), generator=generator)
    chunks = teacher.schedule.sample_euler(
        teacher.unet, noise, cond.repeat_interleave(count, dim=0), steps
    )
    return chunks.reshape(size, count, horizon, action_dim)
