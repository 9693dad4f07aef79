"""The 1-D temporal conditional U-Net of Diffusion Policy (Janner et al. 2022; Chi et al. 2023).

Input: a noisy action chunk (B, T, D), a noise level (the DDPM timestep, or EDM's c_noise) and a
global condition (the encoded observations). Every residual block is FiLM-conditioned on the
noise-level embedding concatenated with the global condition.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        frequencies = torch.exp(
            -math.log(10000.0)
            * torch.arange(half, device=level.device, dtype=torch.float32)
            / (half - 1)
        )
        angles = level.float()[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, out_channels),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel: int, groups: int
    ):
        super().__init__()
        self.block1 = ConvBlock(in_channels, out_channels, kernel, groups)
        self.block2 = ConvBlock(out_channels, out_channels, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.block1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        y = self.block2(scale * y + bias)
        return y + self.residual(x)


class ConditionalUnet1D(nn.Module):
    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        step_embed_dim: int = 128,
        kernel: int = 5,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim
        dims = (action_dim, *down_dims)
        pairs = list(itertools.pairwise(dims))

        def block(a: int, b: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(a, b, cond_dim, kernel, groups)

        self.down = nn.ModuleList()
        for index, (dim_in, dim_out) in enumerate(pairs):
            last = index == len(pairs) - 1
            resample = nn.Identity() if last else nn.Conv1d(dim_out, dim_out, 3, 2, 1)
            self.down.append(
                nn.ModuleList([block(dim_in, dim_out), block(dim_out, dim_out), resample])
            )
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        # Every up level undoes one down level's halving (the deepest down level has none).
        for dim_in, dim_out in reversed(pairs[1:]):
            upsample = nn.ConvTranspose1d(dim_in, dim_in, 4, 2, 1)
            self.up.append(
                nn.ModuleList([block(2 * dim_out, dim_in), block(dim_in, dim_in), upsample])
            )
        self.head = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel, groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(
        self, actions: torch.Tensor, level: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """actions (B, T, D), level (B,) or scalar, global_cond (B, C) -> (B, T, D)."""
        level = torch.as_tensor(level, device=actions.device).expand(actions.shape[0])
        cond = torch.cat([self.step_encoder(level), global_cond], dim=-1)
        x = actions.transpose(1, 2)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(block2(block1(x, cond), cond))
        return self.head(x).transpose(1, 2)
