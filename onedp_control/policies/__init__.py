"""Policies that act in the world, and the one place that turns a `--policy` value into one."""

from __future__ import annotations

from onedp_control.errors import ConfigError
from onedp_control.policies.base import Policy
from onedp_control.sim.world import PnpMilkWorld

BUILTIN_POLICIES = ("expert",)


def make_policy(spec: str, world: PnpMilkWorld) -> Policy:
    """`expert` is the scripted expert; learned checkpoints plug in here as they land."""
    if spec == "expert":
        from onedp_control.policies.expert import ScriptedExpert

        return ScriptedExpert(world)
    raise ConfigError(f"--policy: unknown policy '{spec}' (known: {', '.join(BUILTIN_POLICIES)})")
