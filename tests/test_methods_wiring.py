"""The rival methods through the same commands as OneDP, on a tiny model: `onedp train` (flow
and EDM teachers, the One-Step Flow Policy), `onedp distill` (cp from EDM, imle from flow), the
policy files they write, `onedp eval`, `onedp export` and ONNX Runtime against torch, and the
pairings and settings that are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from onedp_control.cli import main
from onedp_control.dataset import Dataset
from onedp_control.engines import load_engine
from onedp_control.engines.base import EngineError, draw_renoise
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import (
    load_model,
    model_payload,
    read_checkpoint,
    save_checkpoint,
)
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig
from onedp_control.policies.ofp import OneStepFlowPolicy
from onedp_control.policies.two_time import TwoTimePolicy
from onedp_control.sim.tasks import TASKS
from tests.conftest import TINY_MODEL_FIELDS as TINY

pytestmark = pytest.mark.slow

LOOP = {"batch_size": 4, "checkpoint_every": 2, "threads": 1}
# Distillation settings small enough for seconds: IMLE's teacher sets of 2 chunks, 2 steps.
DISTILL = {"imle": {"teacher_set_size": 2, "hypotheses": 2, "teacher_steps": 2}}
# Each policy of the `policies` fixture: the method its file names, the network class it loads as.
POLICIES = {
    "flow": ("flow", DiffusionPolicy),
    "edm": ("diffusion", DiffusionPolicy),
    "ofp": ("ofp", OneStepFlowPolicy),
    "cp": ("cp", TwoTimePolicy),
    "imle": ("imle", DiffusionPolicy),
}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def train_config(
    path: Path, dataset: Path, method: str, schedule: str, steps: int = 3, **sections
) -> Path:
    return write_yaml(
        path,
        {
            "dataset": str(dataset),
            "output_dir": str(path.with_suffix("")),
            "method": method,
            "model": {**TINY, "schedule": schedule},
            "train": {**LOOP, "steps": steps, "warmup_steps": 2},
            **sections,
        },
    )


def distill(method: str, teacher: Path, config: Path, *extra: str) -> int:
    command = ["distill", "--method", method, "--teacher", str(teacher), "--config", str(config)]
    return main([*command, "--quiet", *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny.zarr"
    assert (
        main(["collect", "--task", "pnp_milk", "--episodes", "2", "--out", str(out), "--quiet"])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def policies(tmp_path_factory, dataset) -> dict[str, Path]:
    """policy.pt of each method, trained or distilled for a few steps with the commands."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, schedule in [("flow", "flow"), ("edm", "edm"), ("ofp", "flow")]:
        config = train_config(root / f"{name}.yaml", dataset, POLICIES[name][0], schedule)
        assert main(["train", "--config", str(config), "--quiet"]) == 0
        paths[name] = root / name / "policy.pt"
    config = write_yaml(
        root / "distill.yaml",
        {
            "dataset": str(dataset),
            "output_dir": str(root / "distill"),
            "train": {**LOOP, "steps": 2},
            **DISTILL,
        },
    )
    for method, teacher in [("cp", "edm"), ("imle", "flow")]:
        assert distill(method, paths[teacher], config) == 0
        paths[method] = root / "distill" / method / "policy.pt"
    return paths


@pytest.fixture
def short_episodes(monkeypatch) -> None:
    """`onedp eval` end to end, but 2 s of an episode: these checks are of the wiring, not of
    the (untrained) policies' skill."""
    monkeypatch.setitem(TASKS, "pnp_milk", dataclasses.replace(TASKS["pnp_milk"], time_limit_s=2.0))


@pytest.mark.parametrize(
    ("name", "sampler", "nfe"),
    [
        ("flow", "euler50", 50),
        ("edm", "edm18", 35),
        ("ofp", "onestep", 1),
        ("cp", "onestep", 1),
        ("imle", "onestep", 1),
    ],
)
def test_each_policy_loads_and_runs_in_the_harness(
    policies, tmp_path, short_episodes, name, sampler, nfe
):
    method, model_class = POLICIES[name]
    payload, model = load_model(policies[name], (method,))
    assert type(model) is model_class and payload["method"] == method
    report = tmp_path / "eval.json"
    command = ["eval", "--task", "pnp_milk", "--policy", str(policies[name]), "--episodes", "1"]
    assert main([*command, "--quiet", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert (result["sampler"], result["nfe"], result["episodes"]) == (sampler, nfe, 1)


def observation(spec, seed: int) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = [
        (
            {c: rng.random(spec.image_shape(), dtype=np.float32) for c in spec.cameras},
            rng.random((1, spec.low_dim), dtype=np.float32),
        )
        for _ in range(spec.obs_horizon)
    ]
    return frames, rng.standard_normal(spec.noise_shape()).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "sampler", "roles"),
    [
        ("flow", "euler4", {"denoiser", "encoder"}),
        ("edm", "edm3", {"denoiser", "encoder"}),
        ("ofp", None, {"pipeline", "encoder", "head"}),
        ("cp", None, {"pipeline", "encoder", "head"}),
        ("cp", "cp3", {"pipeline", "encoder", "head"}),  # 3 jumps, the re-noising as an input
        ("imle", None, {"pipeline", "encoder", "head"}),
    ],
)
def test_export_matches_torch(policies, tmp_path, name, sampler, roles):
    onnx_path = tmp_path / f"{name}.onnx"
    command = ["export", "--checkpoint", str(policies[name]), "--onnx", str(onnx_path)]
    assert main([*command, *(["--sampler", sampler] if sampler else [])]) == 0
    reference = load_engine(policies[name], sampler=sampler, threads=1)
    engine = load_engine(onnx_path, threads=1)
    assert set(json.loads(onnx_path.with_suffix(".onnx.json").read_text())["graphs"]) == roles
    assert engine.spec == reference.spec
    frames, noise = observation(engine.spec, seed=0)
    # The same seeded stream for the noise the samplers draw (DDPM steps, cp3's re-noising).
    expected = reference.infer(frames, noise, torch.Generator().manual_seed(7))
    actual = engine.infer(frames, noise, torch.Generator().manual_seed(7))
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert expected.shape == (1, 16, 10)
    if "pipeline" in roles:  # the whole-pipeline graph takes the same inputs, stacked
        stacked = {
            f"{c}_rgb": np.stack([images[c][0] for images, _ in frames])[None]
            for c in engine.spec.cameras
        }
        stacked["low_dim"] = np.stack([state[0] for _, state in frames])[None]
        renoise = draw_renoise(engine.spec, torch.Generator().manual_seed(7))
        np.testing.assert_allclose(
            engine.run_pipeline(stacked, noise, renoise), expected, atol=1e-4
        )


def random_policy(path: Path, schedule: str) -> Path:
    """A teacher of the given schedule, random weights: what matters here is its kind."""
    model = DiffusionPolicy(ModelConfig(**{**TINY, "schedule": schedule}))
    method = "flow" if schedule == "flow" else "diffusion"
    save_checkpoint(path, model_payload(method, model))
    return path


@pytest.mark.parametrize(
    ("method", "schedule", "message"),
    [
        ("onedp-s", "flow", "flow.pt is a flow teacher; onedp-s distils ddpm or edm teachers"),
        ("cp", "ddpm", "ddpm.pt is a ddpm teacher; cp distils edm teachers"),
        ("imle", "ddpm", "ddpm.pt is a ddpm teacher; imle distils flow teachers"),
    ],
)
def test_wrong_teacher_is_refused(tmp_path, dataset, capsys, method, schedule, message):
    teacher = random_policy(tmp_path / f"{schedule}.pt", schedule)
    config = write_yaml(
        tmp_path / "distill.yaml", {"dataset": str(dataset), "output_dir": str(tmp_path / "out")}
    )
    assert distill(method, teacher, config) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("method", "schedule", "patch", "message"),
    [
        ("ofp", "edm", {}, "method 'ofp' needs model.schedule flow, got 'edm'"),
        ("diffusion", "flow", {}, "method 'diffusion' needs model.schedule ddpm or edm"),
        ("cp", "edm", {}, "method must be one of diffusion, flow, ofp, got 'cp'"),
        ("ofp", "flow", {"ofp": {"guidance_share": 2}}, "ofp: guidance_share and condition"),
    ],
)
def test_bad_train_method_is_named(tmp_path, dataset, capsys, method, schedule, patch, message):
    config = train_config(tmp_path / "bad.yaml", dataset, method, schedule)
    write_yaml(config, {**yaml.safe_load(config.read_text()), **patch})
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and message in err
    assert not (tmp_path / "bad").exists()


def test_a_teacher_starts_from_another_schedules_weights(tmp_path, dataset, policies, capsys):
    """The flow teacher may start from the EDM teacher's network (same network, another
    output); the lineage carries both phases. OFP, the method without a teacher, may not."""
    config = train_config(
        tmp_path / "flow.yaml", dataset, "flow", "flow", 2, init_from=str(policies["edm"])
    )
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    lineage = read_checkpoint(tmp_path / "flow" / "policy.pt")["lineage"]
    assert [(entry["method"], entry["steps"]) for entry in lineage] == [
        ("diffusion", 3),
        ("flow", 2),
    ]
    config = train_config(
        tmp_path / "ofp.yaml", dataset, "ofp", "flow", 2, init_from=str(policies["edm"])
    )
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    assert "method is 'diffusion', expected one of ofp" in capsys.readouterr().err
    assert not (tmp_path / "ofp").exists()


def test_samplers_follow_the_method(policies, tmp_path):
    for name, sampler, hint in [
        ("flow", "ddpm", "does not apply to a flow model with the flow schedule"),
        ("edm", "ddim4", "use edm18, edmN, edmsN"),
        ("imle", "cp3", "use onestep"),
        ("cp", "edm4", "use onestep, cpN"),
    ]:
        with pytest.raises(ConfigError, match=hint):
            load_engine(policies[name], sampler=sampler)
    one_jump = tmp_path / "cp.onnx"
    assert main(["export", "--checkpoint", str(policies["cp"]), "--onnx", str(one_jump)]) == 0
    with pytest.raises(EngineError, match="export the checkpoint again with --sampler cp3"):
        load_engine(one_jump, sampler="cp3")


def test_ofp_resume_matches_an_unbroken_run(tmp_path, dataset):
    # The run is cut by asking for 2 of its 4 steps; OFP's time contraction rho follows the
    # total, so it is held constant here (the warm-up covers the learning rate's steps 0-1).
    constant_rho = {"ofp": {"contraction_end": 1.0}}
    unbroken = train_config(tmp_path / "a.yaml", dataset, "ofp", "flow", 4, **constant_rho)
    assert main(["train", "--config", str(unbroken), "--quiet"]) == 0
    broken = train_config(tmp_path / "b.yaml", dataset, "ofp", "flow", 2, **constant_rho)
    assert main(["train", "--config", str(broken), "--quiet"]) == 0
    assert main(["train", "--config", str(broken), "--quiet"]) == 2  # exists: needs --resume
    last = tmp_path / "b" / "last.pt"
    assert main(["pack", "--policy", str(last), "--out", str(tmp_path / "x.pt")]) == 2
    train_config(broken, dataset, "ofp", "flow", 4, **constant_rho)
    assert main(["train", "--config", str(broken), "--resume", "--quiet"]) == 0
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=False) for run in "ab")
    assert a["step"] == b["step"] == 4 and set(a["loss_terms"]) == {"flow", "consistency"}
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    # The policy (the EMA of the weights) and the trainer's own target network theta-.
    for weights in (lambda run: run["ema"], lambda run: run["trainer"]["target"]):
        for key, value in weights(a).items():
            torch.testing.assert_close(weights(b)[key], value, rtol=1e-5, atol=1e-6)


def test_imle_resume_reuses_the_teacher_sets(policies, tmp_path, dataset):
    config = write_yaml(
        tmp_path / "distill.yaml",
        {
            "dataset": str(dataset),
            "output_dir": str(tmp_path),
            "train": {**LOOP, "steps": 2},
            **DISTILL,
        },
    )
    assert distill("imle", policies["flow"], config) == 0
    sets = tmp_path / "imle" / "teacher_sets.pt"
    drawn = sets.stat().st_mtime_ns
    windows = int(Dataset(dataset).episode_ends[-1])
    assert torch.load(sets, weights_only=False)["sets"].shape == (windows, 2, 16, 10)
    write_yaml(config, {**yaml.safe_load(config.read_text()), "train": {**LOOP, "steps": 4}})
    assert distill("imle", policies["flow"], config, "--resume") == 0
    assert sets.stat().st_mtime_ns == drawn


def test_report_methods_scores_each_row_on_both_clocks_and_resumes(
    policies, tmp_path, monkeypatch, capsys
):
    for task in ("pnp_milk", "pnp_milk_move"):
        monkeypatch.setitem(TASKS, task, dataclasses.replace(TASKS[task], time_limit_s=2.0))
    # A row may be an exported engine: its manifest carries the lineage.
    flow_onnx = tmp_path / "flow.onnx"
    assert main(["export", "--checkpoint", str(policies["flow"]), "--onnx", str(flow_onnx)]) == 0
    plan = write_yaml(
        tmp_path / "plan.yaml",
        {
            "task": "pnp_milk",
            "rows": [
                {"label": "CP-1", "policy": str(policies["cp"])},
                {"label": "CP-3", "policy": str(policies["cp"]), "sampler": "cp3"},
                {"label": "flow-2", "policy": str(flow_onnx), "sampler": "euler2"},
                {"label": "OneDP-S", "policy": str(tmp_path / "not-trained.pt")},
            ],
        },
    )
    out, table = tmp_path / "methods.json", tmp_path / "methods.md"
    command = ["report", "methods", "--plan", str(plan), "--episodes", "1", "--quiet"]
    assert main([*command, "--json", str(out), "--md", str(table)]) == 0
    rows = {row["label"]: row for row in json.loads(out.read_text())["rows"]}
    assert [rows[label]["nfe"] for label in ("CP-1", "CP-3", "flow-2")] == [1, 3, 2]
    for label in ("CP-1", "CP-3", "flow-2"):
        assert rows[label]["lockstep"]["successes"] in (0, 1)
        assert rows[label]["realtime_move"]["inference_ms_median"] > 0
    # Training cost: the EDM teacher's steps and the distillation's, from the lineage.
    assert rows["CP-1"]["training"]["phases"] == ["diffusion 3", "cp 2"]
    assert rows["CP-1"]["training"]["total_steps"] == 5
    assert rows["flow-2"]["training"]["phases"] == ["flow 3"]
    assert [rows[label]["backend"] for label in ("CP-1", "flow-2")] == ["torch", "onnxruntime"]
    assert not rows["OneDP-S"]["scored"] and "not trained" in rows["OneDP-S"]["note"]
    markdown = table.read_text()
    assert "| CP-3 | 3 |" in markdown and "| OneDP-S | | not trained here" in markdown
    assert "(onnxruntime) | 3 (flow 3) |" in markdown

    def no_evaluation(*args, **kwargs):
        raise AssertionError("--resume evaluated a row it already had")

    monkeypatch.setattr("onedp_control.report.evaluate", no_evaluation)
    assert main([*command, "--json", str(out), "--resume"]) == 0
    # A row pointed at another policy file is not the row scored before.
    moved = yaml.safe_load(plan.read_text())
    moved["rows"][0]["policy"] = str(tmp_path / "retrained.pt")
    write_yaml(plan, moved)
    assert main([*command, "--json", str(out), "--resume"]) == 0
    rows = {row["label"]: row for row in json.loads(out.read_text())["rows"]}
    assert not rows["CP-1"]["scored"] and rows["CP-3"]["scored"]
    bad = write_yaml(tmp_path / "bad.yaml", {"task": "pnp_milk", "rows": [{"lable": "x"}]})
    assert main(["report", "methods", "--plan", str(bad), "--quiet"]) == 2
    assert "bad.yaml: rows[0]" in capsys.readouterr().err
