"""The model that ships in models/pnp_milk/ loads as a one-step generator on every CPU backend
and acts within the cell: its first target starts near the gripper, the chunk stays in the
reachable workspace, and the exported engine gives the same chunk. (How well it scores is the
model card's business: models/pnp_milk/README.md.)"""

from pathlib import Path

import numpy as np

from onedp_control.engines import load_engine
from onedp_control.engines.export import export_onnx
from onedp_control.policies.learned import LearnedPolicy, load_policy

MODEL = Path(__file__).resolve().parents[1] / "models" / "pnp_milk" / "onedp_s.pt"


def test_shipped_onedp_s_runs_one_step_and_exports(world, tmp_path):
    policy = load_policy(MODEL)
    assert policy.engine.spec.method == "onedp-s" and policy.sampler.nfe == 1
    assert MODEL.stat().st_size < 20e6
    observation = world.reset(100000)
    history = [observation, observation]
    chunk = policy.predict_chunk(history)
    assert chunk.shape == (15, 10) and np.all(np.isfinite(chunk))
    assert np.linalg.norm(chunk[0, :3] - observation.ee_pos) < 0.1
    assert np.all(chunk[:, 2] > -0.01) and np.all((chunk[:, 9] > -0.01) & (chunk[:, 9] < 0.09))
    export_onnx(MODEL, tmp_path / "onedp_s.onnx")
    exported = LearnedPolicy(load_engine(tmp_path / "onedp_s.onnx", threads=1), seed=0)
    np.testing.assert_allclose(exported.predict_chunk(history), chunk, atol=1e-4)
