"""Observation encoders: a ResNet-18 per camera, GroupNorm for BatchNorm, spatial-softmax
keypoints for global pooling (Diffusion Policy's robomimic-style encoder), written here because
there is no CPU torchvision. No pretrained weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # Diffusion Policy's replacement for BatchNorm: one group per 16 channels.
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), _norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to its last stage (no pooling, no classifier); `width` 64 is the standard."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), _norm(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        stages = []
        channels = width
        for index, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            stages += [
                BasicBlock(channels, out_channels, stride),
                BasicBlock(out_channels, out_channels, 1),
            ]
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _unit_range(count: int, like: torch.Tensor) -> torch.Tensor:
    """`count` points evenly spaced over [-1, 1], in `like`'s dtype. (torch.linspace would do,
    but the ONNX exporter turns it into float64 constants that TensorRT rejects.)"""
    steps = torch.arange(count, device=like.device, dtype=like.dtype)
    return steps * (2.0 / max(count - 1, 1)) - 1.0


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of `keypoints` learned heat maps: (B, C, H, W) -> (B, 2K)."""

    def __init__(self, in_channels: int, keypoints: int) -> None:
        super().__init__()
        self.to_keypoints = nn.Conv2d(in_channels, keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        heat = self.to_keypoints(features)
        batch, keypoints, height, width = heat.shape
        attention = torch.softmax(heat.flatten(2), dim=-1)
        grid_y, grid_x = torch.meshgrid(
            _unit_range(height, heat), _unit_range(width, heat), indexing="ij"
        )
        expected_x = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([expected_x, expected_y], dim=-1).reshape(batch, 2 * keypoints)


class CameraEncoder(nn.Module):
    """One camera's frames (B, 3, H, W) in [0, 1] -> features (B, feature_dim)."""

    def __init__(self, width: int, keypoints: int, feature_dim: int) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(width)
        self.pool = SpatialSoftmax(self.trunk.out_channels, keypoints)
        self.project = nn.Linear(2 * keypoints, feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.trunk(images * 2.0 - 1.0)))


class ObservationEncoder(nn.Module):
    """A CameraEncoder per camera; a frame's features are its cameras' features and its low-dim
    state, concatenated. Frames are encoded independently, so a frame encoded at one control
    step can be reused at the next (the run-time caches them)."""

    def __init__(
        self, cameras: tuple[str, ...], width: int, keypoints: int, feature_dim: int, low_dim: int
    ) -> None:
        super().__init__()
        self.cameras = cameras
        self.encoders = nn.ModuleDict(
            {camera: CameraEncoder(width, keypoints, feature_dim) for camera in cameras}
        )
        self.frame_dim = feature_dim * len(cameras) + low_dim

    def encode_frame(self, images: dict[str, torch.Tensor], low_dim: torch.Tensor) -> torch.Tensor:
        """One frame per row: images[camera] (N, 3, H, W), low_dim (N, D) -> (N, frame_dim)."""
        return torch.cat([*(self.encoders[c](images[c]) for c in self.cameras), low_dim], dim=-1)

    def forward(self, images: dict[str, torch.Tensor], low_dim: torch.Tensor) -> torch.Tensor:
        """images[camera]: (B, T, 3, H, W); low_dim: (B, T, D) -> (B, T * frame_dim)."""
        batch, steps = low_dim.shape[:2]
        frames = self.encode_frame(
            {c: images[c].flatten(0, 1) for c in self.cameras}, low_dim.flatten(0, 1)
        )
        return frames.reshape(batch, steps * self.frame_dim)
