"""Inference engines: one interface (engines/base.py), three backends, chosen by file or config.

- `torch`: a checkpoint (`.pt`), eager mode; the reference.
- `onnxruntime`: graphs from `onedp export --onnx` (`.onnx`), CPU or CUDA execution provider.
- `tensorrt`: engines from `onedp export --engine` (`.engine`), NVIDIA GPUs only.
"""

from __future__ import annotations

from pathlib import Path

from onedp_control.engines.base import Engine, EngineError

BACKENDS = {".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}


def load_engine(
    path: Path,
    backend: str | None = None,
    sampler: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Engine:
    """The engine for a model file; `backend` (default: from the file's suffix) must match it."""
    expected = BACKENDS.get(path.suffix)
    if expected is None:
        raise EngineError(
            f"{path}: unknown model file type '{path.suffix}' "
            f"(known: {', '.join(f'{s} ({b})' for s, b in BACKENDS.items())})"
        )
    backend = backend or expected
    if backend not in BACKENDS.values():
        raise EngineError(
            f"engine backend '{backend}' unknown (known: {', '.join(BACKENDS.values())})"
        )
    if backend != expected:
        raise EngineError(
            f"{path}: backend '{backend}' runs {_suffix(backend)} files, not '{path.suffix}' "
            "(`onedp export` makes them from a checkpoint)"
        )
    if not path.is_file():
        raise EngineError(f"{path}: no such file")
    if backend == "torch":
        from onedp_control.engines.torch_backend import TorchEngine

        return TorchEngine(path, sampler, threads)
    if backend == "onnxruntime":
        from onedp_control.engines.ort_backend import OrtEngine

        return OrtEngine(path, sampler, device, threads)
    if sampler not in (None, "onestep"):
        raise EngineError(f"{path}: TensorRT engines are one-step models (no --sampler)")
    from onedp_control.engines.tensorrt_backend import TensorRTEngine

    return TensorRTEngine(path)


def _suffix(backend: str) -> str:
    return next((s for s, b in BACKENDS.items() if b == backend), "?")
