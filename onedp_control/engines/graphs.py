"""The torch modules that are exported to ONNX, and run as-is by the torch backend.

Normalisation is inside the graphs: they take the raw low-dim state and return de-normalised
actions, so no engine needs the normaliser's numbers. Images enter as float32 (1, 3, H, W) in
[0, 1] (TensorRT and ONNX Runtime both take float32 everywhere; uint8 network inputs are not
portable across TensorRT versions).

Graphs of a one-step generator (OneDP):
- encoder:  `<camera>_rgb` (1, 3, H, W) per camera, `low_dim` (1, D)  ->  `frame_features` (1, F)
- head:     `obs_features` (1, To*F), `noise` (1, T, A)                ->  `action_chunk` (1, T, A)
- pipeline: `<camera>_rgb` (1, To, 3, H, W), `low_dim` (1, To, D), `noise` -> `action_chunk`
Graphs of a multi-step teacher (the sampler loop stays in Python, shared with training):
- encoder, as above
- denoiser: `sample` (1, T, A), `level` (1,), `obs_features` (1, To*F) -> `model_output` (1, T, A)
"""

from __future__ import annotations

import torch
from torch import nn

from onedp_control.policies.diffusion import DiffusionPolicy
from onedp_control.policies.onedp import OneDPConfig, generate


class FrameEncoderGraph(nn.Module):
    def __init__(self, model: DiffusionPolicy) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *images, low_dim = inputs
        cameras = self.model.config.cameras
        normalised = self.model.normalizer.normalize("low_dim", low_dim)
        return self.model.encoder.encode_frame(dict(zip(cameras, images, strict=True)), normalised)


class OneStepHeadGraph(nn.Module):
    def __init__(self, model: DiffusionPolicy, onedp: OneDPConfig) -> None:
        super().__init__()
        self.model = model
        self.onedp = onedp

    def forward(self, obs_features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        chunk = generate(self.model, self.onedp, obs_features, noise).clamp(-1, 1)
        return self.model.normalizer.unnormalize("action", chunk)


class OneStepPipelineGraph(nn.Module):
    def __init__(self, model: DiffusionPolicy, onedp: OneDPConfig) -> None:
        super().__init__()
        self.model = model
        self.head = OneStepHeadGraph(model, onedp)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *images, low_dim, noise = inputs
        cameras = self.model.config.cameras
        normalised = self.model.normalizer.normalize("low_dim", low_dim)
        cond = self.model.encoder(dict(zip(cameras, images, strict=True)), normalised)
        return self.head(cond, noise)


class DenoiserGraph(nn.Module):
    def __init__(self, model: DiffusionPolicy) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, sample: torch.Tensor, level: torch.Tensor, obs_features: torch.Tensor
    ) -> torch.Tensor:
        return self.model.unet(sample, level, obs_features)
