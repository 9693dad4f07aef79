"""The torch modules that are exported to ONNX, and run as-is by the torch backend.

Normalisation is inside the graphs: they take the raw low-dim state and return de-normalised
actions, so no engine needs the normaliser's numbers. Images enter as float32 (1, 3, H, W) in
[0, 1] (TensorRT and ONNX Runtime both take float32 everywhere; uint8 network inputs are not
portable across TensorRT versions).

Graphs of a one-step generator (OneDP-S/D, Consistency Policy, IMLE, One-Step Flow Policy):
- encoder:  `<camera>_rgb` (1, 3, H, W) per camera, `low_dim` (1, D)  ->  `frame_features` (1, F)
- head:     `obs_features` (1, To*F), `noise` (1, T, A)                ->  `action_chunk` (1, T, A)
- pipeline: `<camera>_rgb` (1, To, 3, H, W), `low_dim` (1, To, D), `noise` -> `action_chunk`
A Consistency Policy chained over N > 1 jumps (cpN) unrolls the chain into the head and takes
its re-noising noise as one more input, `renoise` (1, N - 1, T, A), after `noise`.
Graphs of a multi-step teacher (diffusion or flow; the sampler loop stays in Python, shared
with training):
- encoder, as above
- denoiser: `sample` (1, T, A), `level` (1,), `obs_features` (1, To*F) -> `model_output` (1, T, A)
"""

from __future__ import annotations

import torch
from torch import nn

from onedp_control.errors import ConfigError
from onedp_control.policies import consistency, imle, ofp, onedp
from onedp_control.policies.diffusion import DiffusionPolicy

# A one-step generator's settings (policies/<method>.py); OFP's generator needs none.
HeadSettings = onedp.OneDPConfig | consistency.ConsistencyConfig | imle.IMLEConfig | None


def one_step_chunk(
    model: DiffusionPolicy,
    method: str,
    settings: HeadSettings,
    cond: torch.Tensor,
    noise: torch.Tensor,
    renoise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The normalised chunk of a one-step method (renoise: cpN's, see the module docstring)."""
    if method in onedp.METHODS:
        return onedp.generate(model, settings, cond, noise)
    if method == consistency.METHOD:
        return consistency.generate(model, settings, cond, noise, renoise)
    if method == imle.METHOD:
        return imle.generate(model, settings, cond, noise)
    if method == ofp.METHOD:
        return ofp.generate(model, cond, noise)
    raise ConfigError(f"'{method}' is not a one-step method")


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
    def __init__(self, model: DiffusionPolicy, method: str, settings: HeadSettings) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.settings = settings

    def forward(
        self, obs_features: torch.Tensor, noise: torch.Tensor, renoise: torch.Tensor | None = None
    ) -> torch.Tensor:
        chunk = one_step_chunk(
            self.model, self.method, self.settings, obs_features, noise, renoise
        ).clamp(-1, 1)
        return self.model.normalizer.unnormalize("action", chunk)


class OneStepPipelineGraph(nn.Module):
    def __init__(self, model: DiffusionPolicy, method: str, settings: HeadSettings) -> None:
        super().__init__()
        self.model = model
        self.head = OneStepHeadGraph(model, method, settings)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cameras = self.model.config.cameras
        images, (low_dim, noise, *renoise) = inputs[: len(cameras)], inputs[len(cameras) :]
        normalised = self.model.normalizer.normalize("low_dim", low_dim)
        cond = self.model.encoder(dict(zip(cameras, images, strict=True)), normalised)
        return self.head(cond, noise, *renoise)


class DenoiserGraph(nn.Module):
    """The teacher's raw U-Net: epsilon (DDPM), the preconditioned output (EDM) or the velocity
    (flow, level 100 t), as the shared samplers call it."""

    def __init__(self, model: DiffusionPolicy) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, sample: torch.Tensor, level: torch.Tensor, obs_features: torch.Tensor
    ) -> torch.Tensor:
        return self.model.unet(sample, level, obs_features)
