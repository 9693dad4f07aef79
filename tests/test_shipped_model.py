"""The one-step models that ship in models/pnp_milk/ load as one-step generators on every CPU
backend and act within the cell: its first target starts near the gripper, the chunk stays in the
reachable workspace, and the exported engine gives the same chunk. (How well it scores is the
model card's business: models/pnp_milk/README.md.) The shipped teacher samples chunks too."""

from pathlib import Path

import numpy as np
import pytest

from onedp_control.engines import load_engine
from onedp_control.engines.export import export_onnx
from onedp_control.learning.checkpoint import read_checkpoint
from onedp_control.policies.learned import LearnedPolicy, load_policy

MODELS = Path(__file__).resolve().parents[1] / "models" / "pnp_milk"


@pytest.mark.parametrize("method", ["onedp-s", "onedp-d"])
def test_shipped_model_runs_one_step_and_exports(world, tmp_path, method):
    model = MODELS / f"{method.replace('-', '_')}.pt"
    policy = load_policy(model)
    assert policy.engine.spec.method == method and policy.sampler.nfe == 1
    assert model.stat().st_size < 20e6
    observation = world.reset(100000)
    history = [observation, observation]
    chunk = policy.predict_chunk(history)
    assert chunk.shape == (15, 10) and np.all(np.isfinite(chunk))
    assert np.linalg.norm(chunk[0, :3] - observation.ee_pos) < 0.1
    assert np.all(chunk[:, 2] > -0.01) and np.all((chunk[:, 9] > -0.01) & (chunk[:, 9] < 0.09))
    export_onnx(model, tmp_path / "policy.onnx")
    exported = LearnedPolicy(load_engine(tmp_path / "policy.onnx", threads=1), seed=0)
    np.testing.assert_allclose(exported.predict_chunk(history), chunk, atol=1e-4)


def test_shipped_teacher_samples_chunks_and_bills_its_lineage(world):
    """The shipped teacher is a DDPM-100 Diffusion Policy (what `onedp distill --teacher` takes);
    recovered from an earlier OneDP-S generator and then trained on a GPU, its lineage carries
    that generator's phases and its own two."""
    model = MODELS / "teacher.pt"
    policy = load_policy(model)
    assert policy.engine.spec.method == "diffusion" and policy.sampler.nfe == 100
    assert model.stat().st_size < 20e6
    observation = world.reset(100000)
    chunk = policy.predict_chunk([observation, observation])
    assert chunk.shape == (15, 10) and np.all(np.isfinite(chunk))
    assert np.linalg.norm(chunk[0, :3] - observation.ee_pos) < 0.1
    lineage = read_checkpoint(model)["lineage"]
    assert [entry["method"] for entry in lineage] == [
        "diffusion",
        "diffusion",
        "diffusion",
        "onedp-s",
        "diffusion",
        "diffusion",
    ]
