"""Shared fixtures: worlds are built once per module (building the GL context costs ~0.1 s)."""

from __future__ import annotations

import pytest

from onedp_control.sim.world import PnpMilkWorld


@pytest.fixture(scope="module")
def world():
    with PnpMilkWorld("pnp_milk") as w:
        yield w


@pytest.fixture(scope="module")
def moving_world():
    with PnpMilkWorld("pnp_milk_move") as w:
        yield w
