"""Policies that act in the world, and the one place that turns a `--policy` value into one."""

from __future__ import annotations

from pathlib import Path

from onedp_control.errors import ConfigError
from onedp_control.policies.base import Policy
from onedp_control.sim.world import PnpMilkWorld

BUILTIN_POLICIES = ("expert",)


def make_policy(
    spec: str, world: PnpMilkWorld, sampler: str | None = None, backend: str | None = None
) -> Policy:
    """`expert` is the scripted expert; anything else is a model file (policy.pt, a shipped
    model, an exported .onnx or .engine), sampled with `sampler` (default: DDPM for a teacher,
    one step for OneDP) on the inference `backend` (default: from the file type)."""
    if spec == "expert":
        if sampler is not None:
            raise ConfigError("--sampler: the scripted expert has no sampler")
        if backend is not None:
            raise ConfigError("--backend: the scripted expert runs no inference engine")
        from onedp_control.policies.expert import ScriptedExpert

        return ScriptedExpert(world)
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"--policy: '{spec}' is neither a built-in policy ({', '.join(BUILTIN_POLICIES)}) "
            "nor an existing checkpoint file"
        )
    from onedp_control.policies.learned import load_policy

    return load_policy(path, sampler, backend=backend)
