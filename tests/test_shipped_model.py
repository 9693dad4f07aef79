"""The models that ship in models/pnp_milk/ load as one-step generators on every CPU backend
and acts within the cell: its first target starts near the gripper, the chunk stays in the
reachable workspace, and the exported engine gives the same chunk. (How well it scores is the
model card's business: models/pnp_milk/README.md.)"""

from pathlib import Path

import numpy as np
import pytest

from onedp_control.engines import load_engine
from onedp_control.engines.export import export_onnx
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
