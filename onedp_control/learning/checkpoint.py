"""Checkpoints: one file holds the method, the model configuration, the weights (with the fitted
normalizer) and, for a run that can resume, the optimiser and RNG states and the loss history.

A policy file is a checkpoint without the training state. Loading checks the format, the
method and the architecture, and names the file and what does not match. The method names the
network class: the teachers (diffusion, flow) and the one-step students that are copies of
their teacher's network (onedp-s, onedp-d, imle) are DiffusionPolicy; a Consistency Policy
student adds a second time input (TwoTimePolicy), the One-Step Flow Policy a null condition
too (OneStepFlowPolicy).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch

from onedp_control.config import from_dict
from onedp_control.errors import ConfigError
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig
from onedp_control.policies.ofp import OneStepFlowPolicy
from onedp_control.policies.two_time import TwoTimePolicy

FORMAT = "onedp-checkpoint-v1"

MODEL_CLASSES: dict[str, type[DiffusionPolicy]] = {
    "diffusion": DiffusionPolicy,
    "flow": DiffusionPolicy,
    "onedp-s": DiffusionPolicy,
    "onedp-d": DiffusionPolicy,
    "imle": DiffusionPolicy,
    "cp": TwoTimePolicy,
    "ofp": OneStepFlowPolicy,
}
# What only a resumable run file holds; a policy file has none of it.
TRAINING_STATE_KEYS = ("optimizer", "distiller", "trainer")


def check_resumable(last: Path, resume: bool) -> None:
    """A run directory's `last.pt` is continued only on request, and only if it exists."""
    if last.exists() and not resume:
        raise ConfigError(f"{last}: a run exists here; pass --resume to continue it")
    if resume and not last.exists():
        raise ConfigError(f"{last}: nothing to resume")


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_payload(method: str, model: DiffusionPolicy, extra: dict | None = None) -> dict:
    return {
        "method": method,
        "model_config": dataclasses.asdict(model.config),
        "model": model.state_dict(),
        **(extra or {}),
    }


def read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or not a torch file: several exception types
        raise ConfigError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an onedp checkpoint (format is not {FORMAT})")
    return payload


def build_model(payload: dict, path: Path) -> DiffusionPolicy:
    """The network described by a checkpoint, with its weights."""
    method = payload.get("method")
    if method not in MODEL_CLASSES:
        raise ConfigError(f"{path}: unknown method '{method}' (known: {', '.join(MODEL_CLASSES)})")
    config = from_dict(ModelConfig, payload["model_config"], f"{path}:model_config")
    try:
        model = MODEL_CLASSES[method](config)
    except ConfigError as error:  # e.g. an OFP network without the flow schedule
        raise ConfigError(f"{path}: {error}") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise ConfigError(
            f"{path}: weights do not fit the architecture: {first[0].strip()}"
        ) from None
    return model


def load_model(path: Path, methods: tuple[str, ...]) -> tuple[dict, DiffusionPolicy]:
    """The checkpoint's payload and its network, refusing a method not in `methods`."""
    payload = read_checkpoint(path)
    method = payload.get("method")
    if method not in methods:
        raise ConfigError(f"{path}: method is '{method}', expected one of {', '.join(methods)}")
    return payload, build_model(payload, path)


def training_lineage(payload: dict, path: Path) -> list[dict]:
    """What made the policy in `payload`, phase by phase, oldest first: each entry names the
    method, the steps and, where known, the config, dataset and batch size. A policy file from
    before lineages were recorded gives one entry, its own steps (earlier phases unknown)."""
    if "lineage" in payload:
        return [dict(entry) for entry in payload["lineage"]]
    return [{"method": payload.get("method"), "steps": payload.get("step"), "source": str(path)}]


def lineage_entry(method: str, config_path: Path, dataset: str, steps: int, batch: int) -> dict:
    return {
        "method": method,
        "config": str(config_path),
        "dataset": dataset,
        "steps": steps,
        "batch_size": batch,
    }


def pack_policy(source: Path, destination: Path) -> int:
    """A policy file with float weights stored as float16 (half the size; loading restores
    float32). Returns the number of bytes written."""
    payload = read_checkpoint(source)
    if "model" not in payload or any(key in payload for key in TRAINING_STATE_KEYS):
        raise ConfigError(f"{source}: not a policy file (use policy.pt, not last.pt)")
    payload["model"] = {
        key: value.half() if value.is_floating_point() else value
        for key, value in payload["model"].items()
    }
    payload.pop("format")
    save_checkpoint(destination, payload)
    return destination.stat().st_size
