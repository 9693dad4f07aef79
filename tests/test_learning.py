"""The learning stack end to end on a tiny model: shapes, normaliser, checkpoints, resume,
config errors, distillation, and the learned policy in the world."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from onedp_control.cli import main
from onedp_control.config import load_config
from onedp_control.dataset import Dataset
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import load_model, read_checkpoint, save_checkpoint
from onedp_control.learning.data import TrainingWindows
from onedp_control.learning.train import TrainConfig, prefetched
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig, Normalizer, Sampler
from onedp_control.policies.learned import load_policy
from tests.conftest import TINY_MODEL_FIELDS as TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny.zarr"
    assert (
        main(["collect", "--task", "pnp_milk", "--episodes", "2", "--out", str(out), "--quiet"])
        == 0
    )
    return out


def write_config(path: Path, dataset: Path, out: Path, steps: int, **extra) -> Path:
    config = {
        "dataset": str(dataset),
        "output_dir": str(out),
        "model": TINY,
        "train": {
            "steps": steps,
            "batch_size": 4,
            "checkpoint_every": 2,
            "warmup_steps": 2,
            "threads": 1,
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_eval(policy: Path, *extra: str) -> int:
    """`onedp eval` on one pnp_milk episode."""
    return main(["eval", "--task", "pnp_milk", "--policy", str(policy), "--episodes", "1", *extra])


def tiny_model() -> DiffusionPolicy:
    config = load_config_from_dict(TINY)
    return DiffusionPolicy(config)


def load_config_from_dict(values: dict) -> ModelConfig:
    from onedp_control.config import from_dict

    return from_dict(ModelConfig, values, "test")


def test_window_shapes_and_padding(dataset):
    config = load_config_from_dict(TINY)
    windows = TrainingWindows([Dataset(dataset)], config)
    model = DiffusionPolicy(config)
    windows.fit_normalizer(model.normalizer)
    first = np.array([0, len(windows) - 1])
    batch = windows.batch(first, model.normalizer, np.random.default_rng(0))
    assert batch["images"]["front"].shape == (2, 2, 3, 32, 44)
    assert batch["low_dim"].shape == (2, 2, 10)
    assert batch["action"].shape == (2, 16, 10)
    assert float(batch["action"].abs().max()) <= 1.0 + 1e-5
    # Step 0 repeats its own frame as the older one; the last step repeats its final action.
    torch.testing.assert_close(batch["low_dim"][0, 0], batch["low_dim"][0, 1])
    torch.testing.assert_close(batch["action"][1, -1], batch["action"][1, 1])
    cond = model.encode(batch)
    assert cond.shape == (2, 2 * model.encoder.frame_dim)
    assert model.unet(batch["action"], torch.tensor([3.0, 7.0]), cond).shape == (2, 16, 10)


def test_several_datasets_are_one_pool_of_episodes(dataset):
    config = load_config_from_dict(TINY)
    one = TrainingWindows([Dataset(dataset)], config)
    two = TrainingWindows([Dataset(dataset), Dataset(dataset)], config)
    assert len(two) == 2 * len(one) and len(two.ends) == 2 * len(one.ends)
    model = DiffusionPolicy(config)
    two.fit_normalizer(model.normalizer)
    # The second dataset's first step starts an episode: it repeats its own frame, not the
    # first dataset's last one.
    batch = two.batch(np.array([len(one)]), model.normalizer, None)
    torch.testing.assert_close(batch["low_dim"][0, 0], batch["low_dim"][0, 1])


def test_normalizer_round_trip():
    normalizer = Normalizer(3, 3)
    values = torch.tensor([[0.0, 1.0, 0.5], [2.0, 1.001, -0.5], [1.0, 1.0005, 0.0]])
    normalizer.fit("action", values)
    normalized = normalizer.normalize("action", values)
    assert float(normalized[:, 0].min()) == -1.0 and float(normalized[:, 0].max()) == 1.0
    assert float(normalized[:, 1].abs().max()) < 0.1  # a near-constant dimension stays small
    torch.testing.assert_close(normalizer.unnormalize("action", normalized), values)


def test_sampler_names():
    assert Sampler.parse("ddpm").nfe == 100
    assert Sampler.parse("ddim10").nfe == 10
    assert Sampler.parse("edm10").nfe == 19
    assert Sampler.parse("onestep").nfe == 1
    for bad in ("ddim", "ddim0", "heun", "ddpm5x"):
        with pytest.raises(ConfigError, match="--sampler"):
            Sampler.parse(bad)


def test_checkpoint_round_trip_and_architecture_mismatch(tmp_path):
    model = tiny_model()
    path = tmp_path / "policy.pt"
    save_checkpoint(
        path,
        {
            "method": "diffusion",
            "model_config": dataclasses.asdict(model.config),
            "model": model.state_dict(),
        },
    )
    _, loaded = load_model(path, ("diffusion",))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    payload = read_checkpoint(path)
    payload["model_config"]["down_dims"] = [16, 32, 64]
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in payload.items() if k != "format"})
    with pytest.raises(ConfigError, match=r"other\.pt: weights do not fit the architecture"):
        load_model(other, ("diffusion",))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"truncated\.pt: not a readable checkpoint"):
        load_model(truncated, ("diffusion",))
    with pytest.raises(ConfigError, match="method is 'diffusion'"):
        load_model(path, ("onedp-s",))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": {**TINY, "widht": 3}}, "model: unknown key 'widht'"),
        ({"train": {"steps": "many"}}, "train.steps: expected an integer"),
        ({"model": {**TINY, "schedule": "ddim"}}, "schedule must be 'ddpm' or 'edm'"),
        ({"dataset": None}, "dataset: expected a string"),
        ({"dataset": []}, "dataset: the list is empty"),
        ({"train": {"device": "tpu"}}, "train.device must be 'cpu' or 'cuda', got 'tpu'"),
        (
            {"method": "ofp", "model": {**TINY, "schedule": "flow"}, "train": {"device": "cuda"}},
            "train.device 'cuda' trains teachers only, not 'ofp'",
        ),
    ],
)
def test_bad_config_is_named(tmp_path, dataset, patch, message, capsys):
    path = write_config(tmp_path / "bad.yaml", dataset, tmp_path / "out", 2)
    values = yaml.safe_load(path.read_text())
    values.update(patch)
    path.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_training_on_cuda_without_a_gpu_is_refused_by_name(tmp_path, dataset, capsys):
    path = write_config(tmp_path / "gpu.yaml", dataset, tmp_path / "out", 2)
    values = yaml.safe_load(path.read_text())
    values["train"]["device"] = "cuda"
    path.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gpu.yaml: train.device is 'cuda' but torch sees no CUDA device" in err


def test_prefetched_batches_come_in_step_order_and_stop_at_the_end():
    cut_steps = []

    def cut(step: int) -> dict:
        cut_steps.append(step)
        return {"step": step}

    assert [batch["step"] for batch in prefetched(cut, 3, 7)] == [3, 4, 5, 6]
    assert list(prefetched(cut, 7, 7)) == []  # a finished run cuts nothing more
    assert cut_steps == [3, 4, 5, 6]


def test_resumed_run_matches_an_unbroken_one(tmp_path, dataset):
    unbroken = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a", 4)
    assert main(["train", "--config", str(unbroken), "--quiet"]) == 0
    broken = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b", 2)
    assert main(["train", "--config", str(broken), "--quiet"]) == 0
    assert main(["train", "--config", str(broken), "--quiet"]) == 2  # exists: needs --resume
    write_config(broken, dataset, tmp_path / "b", 4)
    assert main(["train", "--config", str(broken), "--resume", "--quiet"]) == 0
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    # The lineage survives the resume: one phase of 4 steps, either way.
    assert [e["steps"] for e in a["lineage"]] == [e["steps"] for e in b["lineage"]] == [4]
    second = write_config(
        tmp_path / "c.yaml", dataset, tmp_path / "c", 2, init_from=str(tmp_path / "a/policy.pt")
    )
    assert main(["train", "--config", str(second), "--quiet"]) == 0
    lineage = read_checkpoint(tmp_path / "c" / "policy.pt")["lineage"]
    assert [(e["method"], e["steps"], e["config"]) for e in lineage] == [
        ("diffusion", 4, str(unbroken)),
        ("diffusion", 2, str(second)),
    ]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, dataset) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    config = write_config(root / "teacher.yaml", dataset, root / "run", 4)
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    return root / "run" / "policy.pt"


def run_distill(
    out: Path, dataset, teacher: Path, method: str, steps: int, resume: bool = False, **extra
) -> int:
    """`onedp distill` of the tiny teacher for `steps` steps into `out` (with `resume`: the run
    there continued to `steps`); `dataset` is a config's `dataset:` (a path or a list of
    paths)."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "distill.yaml"
    train = {"steps": steps, "batch_size": 4, "checkpoint_every": steps, "threads": 1}
    config.write_text(
        yaml.safe_dump({"dataset": dataset, "output_dir": str(out), "train": train, **extra})
    )
    arguments = ["--method", method, "--teacher", str(teacher), "--config", str(config)]
    return main(["distill", *arguments, *(["--resume"] if resume else []), "--quiet"])


@pytest.mark.parametrize(("method", "draws"), [("onedp-s", 1), ("onedp-d", 1), ("onedp-s", 3)])
def test_distillation_writes_a_one_step_policy_that_runs(tmp_path, dataset, teacher, method, draws):
    onedp = {"draws": draws}
    assert run_distill(tmp_path, str(dataset), teacher, method, 3, onedp=onedp) == 0
    policy_path = tmp_path / method / "policy.pt"
    teacher_weights = read_checkpoint(teacher)["model"]
    student = read_checkpoint(policy_path)
    assert student["method"] == method
    changed = [
        k
        for k, v in student["model"].items()
        if v.dtype.is_floating_point and not torch.equal(v, teacher_weights[k])
    ]
    assert changed, "distillation must move the generator away from the teacher"
    assert [(e["method"], e["steps"]) for e in student["lineage"]] == [
        ("diffusion", 4),
        (method, 3),
    ], "the student's lineage counts the teacher's training too"
    report = tmp_path / "eval.json"
    assert run_eval(policy_path, "--json", str(report), "--quiet") == 0
    result = json.loads(report.read_text())
    assert result["sampler"] == "onestep" and result["nfe"] == 1 and result["episodes"] == 1


def test_a_resumed_distillation_matches_an_unbroken_one(tmp_path, dataset, teacher):
    """The shipped OneDP-S was distilled in two calls (`--resume` with more steps): with the
    Adam states and the random streams restored, the generator and its score network end as
    one call leaves them."""
    onedp = {"onedp": {"draws": 2}}
    assert run_distill(tmp_path / "a", str(dataset), teacher, "onedp-s", 4, **onedp) == 0
    assert run_distill(tmp_path / "b", str(dataset), teacher, "onedp-s", 2, **onedp) == 0
    assert run_distill(tmp_path / "b", str(dataset), teacher, "onedp-s", 4, True, **onedp) == 0
    a, b = (read_checkpoint(tmp_path / run / "onedp-s" / "last.pt") for run in "ab")
    assert a["step"] == b["step"] == 4
    for name, losses in a["losses"].items():
        np.testing.assert_allclose(b["losses"][name], losses, rtol=1e-5)
    for part in ("generator", "score"):
        for key, value in a["distiller"][part].items():
            torch.testing.assert_close(b["distiller"][part][key], value, rtol=1e-5, atol=1e-6)
    assert [e["steps"] for e in b["lineage"]] == [4, 4]  # the teacher's phase, then one of 4


def test_a_teacher_starts_again_from_its_one_step_student(tmp_path, dataset, teacher):
    """A lost teacher is recovered from a shipped student: the generator is the teacher's network,
    so a denoising phase can start from it, and the lineage bills every step before it."""
    assert run_distill(tmp_path, str(dataset), teacher, "onedp-d", 2) == 0
    student = tmp_path / "onedp-d" / "policy.pt"
    recovery = write_config(
        tmp_path / "recover.yaml", dataset, tmp_path / "r", 2, init_from=str(student)
    )
    assert main(["train", "--config", str(recovery), "--quiet"]) == 0
    recovered = read_checkpoint(tmp_path / "r" / "policy.pt")
    assert recovered["method"] == "diffusion"
    assert [(e["method"], e["steps"]) for e in recovered["lineage"]] == [
        ("diffusion", 4),
        ("onedp-d", 2),
        ("diffusion", 2),
    ]
    assert run_eval(tmp_path / "r" / "policy.pt", "--sampler", "ddim2", "--quiet") == 0


def test_distillation_refuses_bad_onedp_settings(tmp_path, dataset, teacher, capsys):
    config = tmp_path / "distill.yaml"
    config.write_text(
        yaml.safe_dump(
            {"dataset": str(dataset), "output_dir": str(tmp_path / "out"), "onedp": {"draws": 0}}
        )
    )
    arguments = ["--teacher", str(teacher), "--config", str(config), "--quiet"]
    assert main(["distill", "--method", "onedp-s", *arguments]) == 2
    assert "distill.yaml:onedp: draws must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_policys_rollouts_are_collected_and_distilled_on(tmp_path, dataset, teacher, capsys):
    """`onedp collect --policy` records the states a learned policy visits; a distillation
    config may list that dataset beside the demonstrations."""
    rollouts = tmp_path / "rollouts.zarr"
    collect = ["collect", "--task", "pnp_milk", "--episodes", "1", "--out", str(rollouts)]
    policy = ["--policy", str(teacher), "--sampler", "ddim2", "--quiet"]
    assert main([*collect, *policy, "--perturb"]) == 2
    assert "--perturb perturbs the scripted expert" in capsys.readouterr().err
    assert main([*collect, *policy, "--keep-failures"]) == 0
    recorded = Dataset(rollouts)
    assert recorded.attrs["source"] == f"onedp collect (rollouts of {teacher}:ddim2)"
    assert len(recorded.episode_ends) == 1
    assert run_distill(tmp_path, [str(dataset), str(rollouts)], teacher, "onedp-d", 1) == 0
    lineage = read_checkpoint(tmp_path / "onedp-d" / "policy.pt")["lineage"]
    assert lineage[-1]["dataset"] == f"{dataset}, {rollouts}"


def test_teacher_samplers_run_in_the_world(tmp_path, teacher, capsys):
    report = tmp_path / "eval.json"
    assert run_eval(teacher, "--sampler", "ddim2", "--json", str(report), "--quiet") == 0
    assert json.loads(report.read_text())["nfe"] == 2
    assert run_eval(teacher, "--sampler", "onestep") == 2
    assert "does not apply to a diffusion model" in capsys.readouterr().err


def test_features_of_a_frame_are_computed_once(world, teacher):
    policy = load_policy(teacher, "ddim1")
    calls = []
    for encoder in policy.engine.model.encoder.encoders.values():
        encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    policy.reset()
    frames = [world.reset(0)]
    for _ in range(3):
        world.hold()
        frames.append(world.observe())
    for index in range(1, 4):
        chunk = policy.predict_chunk(frames[index - 1 : index + 1])
        assert chunk.shape == (15, 10)
    # 4 distinct frames x 2 cameras, each encoded once, though 3 calls saw 6 frames.
    assert sum(calls) == 8


def test_config_loader_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match=r"x\.yaml: not valid YAML"):
        load_config(path, TrainConfig)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", TrainConfig)


def test_packed_policy_is_smaller_and_acts_the_same(tmp_path, teacher, world, capsys):
    packed = tmp_path / "packed.pt"
    assert main(["pack", "--policy", str(teacher), "--out", str(packed)]) == 0
    assert packed.stat().st_size < 0.7 * teacher.stat().st_size
    observation = world.reset(0)
    chunks = [
        load_policy(path, "ddim2").predict_chunk([observation] * 2) for path in (teacher, packed)
    ]
    np.testing.assert_allclose(chunks[0], chunks[1], atol=2e-2)
    last = teacher.parent / "last.pt"
    assert main(["pack", "--policy", str(last), "--out", str(tmp_path / "x.pt")]) == 2
    assert "not a policy file" in capsys.readouterr().err
