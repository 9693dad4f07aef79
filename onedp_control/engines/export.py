"""`onedp export`: a checkpoint -> ONNX graphs + a manifest (`<stem>.json`) describing them.

For a one-step generator (onedp-s, onedp-d, cp, imle, ofp), `OUT.onnx` is the whole pipeline
(encoders + generator), and the split graphs `OUT.encoder.onnx` / `OUT.head.onnx` let the
run-time reuse a frame's features; a Consistency Policy exported with `--sampler cpN` has its N
jumps unrolled in the graphs (one more input, `renoise`). For a multi-step teacher (diffusion,
flow), `OUT.onnx` is the denoiser the sampler evaluates NFE times, beside `OUT.encoder.onnx`;
the sampler loop (shared schedules module) runs in Python and the action de-normalisation is
stored in the manifest. Inputs and outputs are described in graphs.py and in the manifest;
every graph passes onnx's full checker.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import onnx
import torch

from onedp_control.engines.base import MANIFEST_FORMAT, EngineSpec, manifest_path
from onedp_control.engines.graphs import (
    DenoiserGraph,
    FrameEncoderGraph,
    HeadSettings,
    OneStepHeadGraph,
    OneStepPipelineGraph,
)
from onedp_control.engines.torch_backend import load_checkpoint_model
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path, write_json_atomic
from onedp_control.learning.checkpoint import read_checkpoint, training_lineage
from onedp_control.policies.diffusion import DiffusionPolicy

OPSET = 17


def graph_path(out: Path, role: str) -> Path:
    """`policy.onnx` -> `policy.encoder.onnx`; the main graph keeps the name given."""
    return out if role in ("pipeline", "denoiser") else out.with_suffix(f".{role}{out.suffix}")


def graph_inputs(spec: EngineSpec, role: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, meaning) of each input of a graph, in call order."""
    height, width = spec.image_size
    features = (1, spec.obs_horizon * spec.frame_dim)
    noise = ("noise", spec.noise_shape(), "initial noise, N(0, I) (zeros for OneDP-D)")
    renoise_shape = spec.renoise_shape()
    renoise = (
        []
        if renoise_shape is None
        else [("renoise", renoise_shape, "N(0, I): the noise of each re-noising of the cp chain")]
    )
    obs_features = ("obs_features", features, "frame_features of the last frames, oldest first")
    if role == "encoder":
        frame = (1, 3, height, width)
        return [
            *((f"{c}_rgb", frame, f"{c} camera, RGB in [0, 1]") for c in spec.cameras),
            ("low_dim", (1, spec.low_dim), "end-effector position, 6-D rotation, gripper width"),
        ]
    if role == "head":
        return [obs_features, noise, *renoise]
    if role == "pipeline":
        stack = (1, spec.obs_horizon, 3, height, width)
        return [
            *((f"{c}_rgb", stack, f"{c} camera frames, oldest first") for c in spec.cameras),
            ("low_dim", (1, spec.obs_horizon, spec.low_dim), "low-dim state per frame"),
            noise,
            *renoise,
        ]
    return [
        ("sample", spec.noise_shape(), "noisy normalised action chunk (EDM: scaled by c_in)"),
        ("level", (1,), "the U-Net's level: DDPM timestep, EDM ln(sigma) / 4 or flow 100 t"),
        obs_features,
    ]


GRAPH_OUTPUTS = {
    "encoder": ("frame_features", "one frame's camera features and low-dim state"),
    "head": ("action_chunk", "de-normalised actions: position (m), 6-D rotation, gripper (m)"),
    "pipeline": ("action_chunk", "de-normalised actions: position (m), 6-D rotation, gripper (m)"),
    "denoiser": ("model_output", "epsilon (DDPM), raw network output (EDM) or velocity (flow)"),
}


def _module(
    role: str, model: DiffusionPolicy, spec: EngineSpec, settings: HeadSettings
) -> torch.nn.Module:
    if role == "encoder":
        return FrameEncoderGraph(model)
    if role == "head":
        return OneStepHeadGraph(model, spec.method, settings)
    if role == "pipeline":
        return OneStepPipelineGraph(model, spec.method, settings)
    return DenoiserGraph(model)


def export_graph(module: torch.nn.Module, spec: EngineSpec, role: str, path: Path) -> None:
    inputs = graph_inputs(spec, role)
    args = tuple(torch.rand(shape) for _, shape, _ in inputs)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript;
        # these graphs are static and export the same either way.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=[name for name, _, _ in inputs],
            output_names=[GRAPH_OUTPUTS[role][0]],
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(checkpoint: Path, out: Path, sampler: str | None = None) -> dict:
    """Writes the graphs and the manifest; returns the manifest."""
    if out.suffix != ".onnx":
        raise ConfigError(f"--onnx: {out} must end in .onnx")
    check_output_path(out, overwrite=True, directory=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, settings, spec = load_checkpoint_model(checkpoint, sampler)
    roles = ("pipeline", "encoder", "head") if spec.one_step else ("denoiser", "encoder")
    files = {}
    with torch.no_grad():
        for role in roles:
            path = graph_path(out, role)
            export_graph(_module(role, model, spec, settings), spec, role, path)
            files[role] = {
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "inputs": [
                    {"name": n, "shape": list(s), "dtype": "float32", "meaning": m}
                    for n, s, m in graph_inputs(spec, role)
                ],
                "outputs": [
                    {"name": output, "dtype": "float32", "meaning": meaning}
                    for output, meaning in [GRAPH_OUTPUTS[role]]
                ],
            }
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint": str(checkpoint),
        # How the network was trained travels with it (the methods table bills it).
        "lineage": training_lineage(read_checkpoint(checkpoint), checkpoint),
        "opset": OPSET,
        "schedule": model.schedule.kind,
        "spec": spec.to_json(),
        "graphs": files,
    }
    if not spec.one_step:
        normalizer = model.normalizer
        manifest["action_normalizer"] = {
            "scale": normalizer.action_scale.tolist(),
            "offset": normalizer.action_offset.tolist(),
        }
    write_json_atomic(manifest_path(out), manifest)
    return manifest
