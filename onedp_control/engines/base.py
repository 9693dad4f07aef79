"""The inference-engine contract shared by the torch, ONNX Runtime and TensorRT backends.

An engine holds a trained policy as two stages, so that the run-time can reuse a frame's
features at the next control step (obs horizon 2: half the encoder work):

- `encode_frame(images, low_dim) -> features`: one frame of both cameras, float32 images
  (1, 3, H, W) in [0, 1] at the model's crop size, and the raw low-dim state (1, 10);
- `generate(obs_features, noise) -> chunk`: the features of the last `obs_horizon` frames,
  concatenated (1, obs_horizon * frame_dim), and the initial noise (1, horizon, action_dim)
  -> the de-normalised action chunk (1, horizon, action_dim) in metres / 6-D rotation / metres.
  Samplers that need more noise than the initial one draw it from the `rng` passed along: a
  teacher's DDPM steps, and the re-noising of a Consistency Policy chained over N jumps (cpN).

Methods (the `method` of a checkpoint and of an engine's spec):
- teachers, a multi-step sampler around a denoising network: `diffusion` (Diffusion Policy,
  DDPM or EDM schedule: samplers ddpm, ddimN, edmN or edmsN) and `flow` (flow matching: eulerN);
- one-step generators, the whole chunk in one network evaluation (sampler `onestep`):
  `onedp-s` and `onedp-d` (OneDP), `cp` (Consistency Policy; also cpN, N jumps), `imle` (IMLE
  set distillation of a flow teacher) and `ofp` (One-Step Flow Policy).

`infer(frames, noise)` runs both for a whole observation. Every call checks its inputs (shape,
dtype, finite values) and raises `EngineInputError` naming the input, so a bad observation
never reaches the network or the robot; the time of each stage is recorded (`latency()`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onedp_control.errors import ConfigError

if TYPE_CHECKING:
    import torch


TEACHER_METHODS = ("diffusion", "flow")
ONE_STEP_METHODS = ("onedp-s", "onedp-d", "cp", "imle", "ofp")
METHODS = TEACHER_METHODS + ONE_STEP_METHODS


class EngineError(ConfigError):
    """An engine cannot be loaded: missing library, missing GPU, missing or wrong file."""


class EngineInputError(ValueError):
    """An input of the wrong shape or dtype, or with NaN/Inf values."""


@dataclass(frozen=True)
class EngineSpec:
    """What the run-time needs to know about a model to feed it; stored beside exported files."""

    method: str  # one of METHODS
    cameras: tuple[str, ...]
    resize: tuple[int, int]  # camera frames are resized to this, then centre-cropped ...
    image_size: tuple[int, int]  # ... to this
    obs_horizon: int
    horizon: int
    action_steps: int
    action_dim: int
    low_dim: int
    frame_dim: int
    sampler: str  # ddpm, ddimN, edmN, edmsN, eulerN (teachers), onestep, cpN (one-step methods)
    nfe: int  # network evaluations per chunk

    @property
    def stochastic(self) -> bool:
        """Whether the initial noise is drawn (all but the deterministic OneDP-D)."""
        return self.method != "onedp-d"

    @property
    def one_step(self) -> bool:
        """Whether the chunk comes from one graph (a head), not a sampler loop in Python."""
        return self.method in ONE_STEP_METHODS

    def renoise_shape(self) -> tuple[int, int, int, int] | None:
        """The fresh noise of cpN's N - 1 re-noisings (1, N - 1, T, A), an input of its graph
        since the whole chain is one graph; None for every other sampler."""
        if self.method != "cp" or self.nfe == 1:
            return None
        return (1, self.nfe - 1, self.horizon, self.action_dim)

    def image_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.image_size)

    def noise_shape(self) -> tuple[int, int, int]:
        return (1, self.horizon, self.action_dim)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> EngineSpec:
        from onedp_control.config import from_dict

        return from_dict(cls, data, where)


def manifest_path(model_path: Path) -> Path:
    """`policy.onnx` -> `policy.onnx.json`: the manifest beside an exported file."""
    return model_path.with_name(model_path.name + ".json")


MANIFEST_FORMAT = "onedp-engine-v1"


def read_manifest(model_path: Path) -> tuple[dict, EngineSpec]:
    """The manifest `onedp export` wrote beside `model_path`, and the spec in it."""
    path = manifest_path(model_path)
    if not path.is_file():
        raise EngineError(f"{path}: missing (written by `onedp export` beside {model_path.name})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EngineError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise EngineError(f"{path}: not an onedp engine manifest (format {MANIFEST_FORMAT})")
    if not isinstance(manifest.get("spec"), dict):
        raise EngineError(f"{path}: no 'spec' mapping")
    return manifest, EngineSpec.from_json(manifest["spec"], f"{path}:spec")


def check_input(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The input as contiguous float32, or EngineInputError naming what is wrong."""
    array = np.asarray(value)
    if array.shape != shape:
        raise EngineInputError(f"input '{name}': shape {array.shape}, expected {shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise EngineInputError(f"input '{name}': dtype {array.dtype}, expected float32")
    if not np.all(np.isfinite(array)):
        raise EngineInputError(f"input '{name}': contains NaN or Inf")
    return np.ascontiguousarray(array, dtype=np.float32)


def draw_renoise(spec: EngineSpec, rng: torch.Generator | None) -> np.ndarray | None:
    """cpN's re-noising noise from `rng`, the same on every backend (None where not needed)."""
    import torch

    shape = spec.renoise_shape()
    return None if shape is None else torch.randn(shape, generator=rng).numpy()


def check_output(name: str, value: np.ndarray) -> np.ndarray:
    """A non-finite network output is an error, never a command."""
    if not np.all(np.isfinite(value)):
        raise EngineInputError(f"output '{name}': the network produced NaN or Inf")
    return value


def percentiles(samples: Sequence[float]) -> dict[str, float | int]:
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        return {"runs": 0}
    return {
        "runs": int(values.size),
        "median_ms": round(float(np.median(values)), 4),
        "p90_ms": round(float(np.percentile(values, 90)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
        "max_ms": round(float(values.max()), 4),
    }


class Engine(ABC):
    """A loaded policy behind one backend. Subclasses implement `_encode` and `_generate` on
    checked float32 arrays."""

    backend: str

    def __init__(self, spec: EngineSpec, source: Path) -> None:
        self.spec = spec
        self.source = source
        self._timings: dict[str, list[float]] = {"encode_frame": [], "generate": []}

    @abstractmethod
    def _encode(self, images: dict[str, np.ndarray], low_dim: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _generate(
        self, obs_features: np.ndarray, noise: np.ndarray, rng: torch.Generator | None
    ) -> np.ndarray: ...

    def encode_frame(self, images: dict[str, np.ndarray], low_dim: np.ndarray) -> np.ndarray:
        spec = self.spec
        checked = {}
        for camera in spec.cameras:
            if camera not in images:
                raise EngineInputError(f"input '{camera}_rgb': missing")
            checked[camera] = check_input(f"{camera}_rgb", images[camera], spec.image_shape())
        state = check_input("low_dim", low_dim, (1, spec.low_dim))
        start = time.perf_counter()
        features = self._encode(checked, state)
        self._timings["encode_frame"].append((time.perf_counter() - start) * 1e3)
        return check_output("frame_features", features)

    def generate(
        self,
        obs_features: np.ndarray,
        noise: np.ndarray,
        rng: torch.Generator | None = None,
    ) -> np.ndarray:
        """`rng` draws the fresh noise of a stochastic multi-step sampler (DDPM, cpN)."""
        spec = self.spec
        features = check_input("obs_features", obs_features, (1, spec.obs_horizon * spec.frame_dim))
        noise = check_input("noise", noise, spec.noise_shape())
        start = time.perf_counter()
        chunk = self._generate(features, noise, rng)
        self._timings["generate"].append((time.perf_counter() - start) * 1e3)
        return check_output("action_chunk", chunk)

    def infer(
        self,
        frames: Sequence[tuple[dict[str, np.ndarray], np.ndarray]],
        noise: np.ndarray,
        rng: torch.Generator | None = None,
    ) -> np.ndarray:
        """A whole observation, oldest frame first: [(images, low_dim)] * obs_horizon."""
        if len(frames) != self.spec.obs_horizon:
            raise EngineInputError(
                f"infer: {len(frames)} frames, expected obs_horizon {self.spec.obs_horizon}"
            )
        features = np.concatenate([self.encode_frame(i, s) for i, s in frames], axis=-1)
        return self.generate(features, noise, rng)

    def warmup(self, runs: int = 5) -> None:
        """Runs the engine on zeros, then forgets the timings (first runs allocate)."""
        spec = self.spec
        images = {camera: np.zeros(spec.image_shape(), np.float32) for camera in spec.cameras}
        frame = (images, np.zeros((1, spec.low_dim), np.float32))
        for _ in range(runs):
            self.infer([frame] * spec.obs_horizon, np.zeros(spec.noise_shape(), np.float32))
        self.reset_latency()

    def close(self) -> None:  # noqa: B027 - most backends hold nothing outside Python
        """Frees what the backend holds outside Python (device memory)."""

    def reset_latency(self) -> None:
        for samples in self._timings.values():
            samples.clear()

    def latency(self) -> dict[str, dict[str, float | int]]:
        """Median / p90 / p99 / max of each stage since the last reset, in milliseconds."""
        return {stage: percentiles(samples) for stage, samples in self._timings.items()}
