"""What the rollout harness asks of a policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from onedp_control.sim.world import Observation

if TYPE_CHECKING:
    from onedp_control.policies.diffusion import Sampler


class Policy(Protocol):
    """Maps the latest observations to a chunk of absolute end-effector targets.

    `predict_chunk` gets the last `obs_horizon` observations, oldest first, taken one control
    period apart, and returns an array (T, 10): the targets for the T control steps that start
    at the newest observation's time. The harness executes up to `action_steps` of them (or, on
    the real-time clock, those whose time has not yet passed) before it asks again.
    """

    name: str
    obs_horizon: int
    action_steps: int
    sampler: Sampler | None  # how a learned policy draws a chunk; None for a scripted one
    backend: str | None  # the inference engine of a learned policy; None for a scripted one

    def reset(self) -> None: ...

    def predict_chunk(self, history: Sequence[Observation]) -> np.ndarray: ...
