"""Shared fixtures: worlds are built once per module (building the GL context costs ~0.1 s);
a tiny random-weight model for the runtime tests."""

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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight one-step model whose actions stay around the arm's home pose: for tests
    of the running graph's plumbing and timing, not of skill."""
    import dataclasses

    import torch

    from onedp_control.learning.checkpoint import model_payload, save_checkpoint
    from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig
    from onedp_control.policies.onedp import OneDPConfig

    tiny = ModelConfig(
        resize=(36, 48),
        image_size=(32, 44),
        vision_width=8,
        keypoints=8,
        feature_dim=16,
        down_dims=(16, 32),
        step_embed_dim=16,
        groups=4,
    )
    torch.manual_seed(0)
    model = DiffusionPolicy(tiny)
    home = torch.tensor([0.31, 0, 0.49, 1, 0, 0, 0, -1, 0, 0.08])
    model.normalizer.action_scale.fill_(20.0)
    model.normalizer.action_offset.copy_(-20.0 * home)
    path = tmp_path_factory.mktemp("model") / "tiny_onedp_s.pt"
    save_checkpoint(
        path, model_payload("onedp-s", model, {"onedp": dataclasses.asdict(OneDPConfig())})
    )
    return path
