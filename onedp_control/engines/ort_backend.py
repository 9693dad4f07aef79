"""The ONNX Runtime backend: exported graphs on the CPU (or the CUDA execution provider where
onnxruntime-gpu provides it).

Thread spinning is off: with the camera, robot and watchdog processes on the same cores, ORT's
busy-waiting worker threads starve them and its own latency collapses (measured on the 2-core
CI machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onedp_control.diffusion.schedules import make_schedule
from onedp_control.engines.base import Engine, EngineError, draw_renoise, read_manifest
from onedp_control.engines.export import graph_path
from onedp_control.engines.torch_backend import check_sampler
from onedp_control.policies.diffusion import Sampler, run_sampler

DEVICES = ("cpu", "cuda")


def open_session(path: Path, device: str, threads: int | None):
    import onnxruntime as ort

    if device not in DEVICES:
        raise EngineError(f"engine device '{device}' unknown (known: {', '.join(DEVICES)})")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(
                "device cuda: this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu on a machine with an NVIDIA GPU)"
            )
        providers.insert(0, "CUDAExecutionProvider")
    if not path.is_file():
        raise EngineError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise EngineError(f"{path}: ONNX Runtime cannot load it ({error})") from None


class OrtEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        sampler: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        manifest, spec = read_manifest(path)
        if sampler is not None:
            chosen = Sampler.parse(sampler)
            check_sampler(spec.method, manifest["schedule"], chosen, "--sampler")
            if spec.one_step and chosen.nfe != spec.nfe:  # the chain is unrolled in the graph
                raise EngineError(
                    f"{path}: exported for sampler {spec.sampler}; export the checkpoint again "
                    f"with --sampler {chosen.label} to run that"
                )
            spec = type(spec)(**{**spec.to_json(), "sampler": chosen.label, "nfe": chosen.nfe})
        super().__init__(spec, path)
        self.device = device
        roles = manifest["graphs"]
        self._sessions = {
            role: open_session(graph_path(path, role), device, threads) for role in roles
        }
        for role, session in self._sessions.items():
            expected = [item["name"] for item in roles[role]["inputs"]]
            actual = [node.name for node in session.get_inputs()]
            if actual != expected:
                raise EngineError(
                    f"{graph_path(path, role)}: inputs {actual} do not match the manifest "
                    f"{expected}"
                )
        if not spec.one_step:
            self.schedule = make_schedule(manifest["schedule"])
            self.sampler = Sampler.parse(spec.sampler)
            normalizer = manifest["action_normalizer"]
            self._scale = np.asarray(normalizer["scale"], np.float32)
            self._offset = np.asarray(normalizer["offset"], np.float32)

    def _encode(self, images: dict[str, np.ndarray], low_dim: np.ndarray) -> np.ndarray:
        feeds = {f"{camera}_rgb": images[camera] for camera in self.spec.cameras}
        feeds["low_dim"] = low_dim
        return self._sessions["encoder"].run(None, feeds)[0]

    def run_pipeline(
        self, frames: dict[str, np.ndarray], noise: np.ndarray, renoise: np.ndarray | None = None
    ) -> np.ndarray:
        """The single whole-pipeline graph (one-step models): `<camera>_rgb` (1, To, 3, H, W),
        `low_dim` (1, To, D), noise (and cpN's renoise) -> chunk. Used to check it against the
        split graphs."""
        feeds = {**frames, "noise": noise}
        if renoise is not None:
            feeds["renoise"] = renoise
        return self._sessions["pipeline"].run(None, feeds)[0]

    def denoise(self, sample: torch.Tensor, level: torch.Tensor, cond: torch.Tensor):
        """The denoiser graph as the shared samplers' `net(x, level, cond)`."""
        feeds = {
            "sample": sample.numpy().astype(np.float32),
            "level": level.reshape(-1).float().numpy(),
            "obs_features": cond.numpy(),
        }
        return torch.from_numpy(self._sessions["denoiser"].run(None, feeds)[0])

    def _generate(
        self, obs_features: np.ndarray, noise: np.ndarray, rng: torch.Generator | None
    ) -> np.ndarray:
        if self.spec.one_step:
            feeds = {"obs_features": obs_features, "noise": noise}
            renoise = draw_renoise(self.spec, rng)
            if renoise is not None:
                feeds["renoise"] = renoise
            return self._sessions["head"].run(None, feeds)[0]
        chunk = run_sampler(
            self.schedule,
            self.denoise,
            torch.from_numpy(noise),
            torch.from_numpy(obs_features),
            self.sampler,
            rng,
        ).numpy()
        return (chunk - self._offset) / self._scale
