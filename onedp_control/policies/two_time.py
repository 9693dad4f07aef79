"""The shared encoders and U-Net with a second time input, for the rivals that need one.

Consistency Policy's student G(x, t, s) (a jump from time t to time s, CTM) and the One-Step
Flow Policy's average velocity u(z, t, r) (over [t, r]) take two times; the project's U-Net
takes one level. Neither paper's public description says how the second time enters the
network, so this is a choice: the second time is embedded like the first (sinusoidal features
and an MLP at the U-Net's step-embedding width) and *added to the global condition*, so every
FiLM layer sees both times and the U-Net itself is unchanged and shared. The embedding's last
layer starts at zero: a student warm-started from a one-time teacher starts as that teacher
(the second time ignored), the warm start Consistency Policy uses.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from onedp_control.errors import ConfigError
from onedp_control.nn.unet1d import SinusoidalEmbedding
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig
from onedp_control.policies.onedp import DenoisingPolicy


class SecondTimeEmbedding(nn.Module):
    """cond -> cond + MLP(sinusoid(second level)); zero at initialisation."""

    def __init__(self, embed_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            SinusoidalEmbedding(embed_dim),
            nn.Linear(embed_dim, 4 * embed_dim),
            nn.Mish(),
            nn.Linear(4 * embed_dim, cond_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, level: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(level, device=cond.device).expand(cond.shape[0])
        return cond + self.mlp(level)


class TwoTimeModel(DenoisingPolicy, Protocol):
    """A DenoisingPolicy with a second-time embedding: a TwoTimePolicy, or a toy like it."""

    second_time: SecondTimeEmbedding


def two_time_output(
    model: TwoTimeModel,
    x: torch.Tensor,
    level: torch.Tensor,
    second_level: torch.Tensor,
    cond: torch.Tensor,
) -> torch.Tensor:
    """The raw U-Net output at two levels (both already in the U-Net's level units)."""
    return model.unet(x, level, model.second_time(second_level, cond))


class TwoTimePolicy(DiffusionPolicy):
    """DiffusionPolicy (encoders, U-Net, normalizer, schedule) plus the second-time embedding.
    Its state dict is the DiffusionPolicy's plus `second_time.*`."""

    method = "two-time"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cond_dim = config.obs_horizon * self.encoder.frame_dim
        self.second_time = SecondTimeEmbedding(config.step_embed_dim, cond_dim)


def warm_start(student: nn.Module, teacher: nn.Module) -> None:
    """Copies a teacher's weights into a two-time student of the same architecture; only the
    student's own additions (second-time embedding, null condition) keep their initial values."""
    try:
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    except RuntimeError as error:  # a weight of another shape
        raise ConfigError(
            f"the teacher's weights do not fit the student: {str(error).splitlines()[-1].strip()}"
        ) from None
    own = ("second_time.", "null_condition")
    foreign = [key for key in missing if not key.startswith(own)] + list(unexpected)
    if foreign:
        raise ConfigError(f"the teacher's weights do not fit the student: {foreign[0]}")


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, decay: float) -> None:
    """theta- <- decay theta- + (1 - decay) theta (decay 0: a stop-gradient copy)."""
    for target_param, param in zip(target.parameters(), online.parameters(), strict=True):
        target_param.lerp_(param.detach(), 1 - decay)
