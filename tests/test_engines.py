"""Export and inference engines: ONNX round trip and parity with torch, the FP16 graph built
for TensorRT, loading errors, input checks, and the latency benchmark's quick mode.

Tolerances: ONNX Runtime float32 against torch, 1e-4 on de-normalised actions (metres, 6-D
rotation); the float16 graph against torch, 1e-2 (measured ~2.5e-3 on the pnp_milk model)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onedp_control.cli import main
from onedp_control.engines import load_engine
from onedp_control.engines.base import EngineError, EngineInputError, manifest_path
from onedp_control.engines.export import export_onnx, graph_path
from onedp_control.engines.tensorrt_backend import prepare_build
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import model_payload, save_checkpoint
from onedp_control.policies.diffusion import DiffusionPolicy
from onedp_control.policies.learned import LearnedPolicy
from onedp_control.policies.onedp import OneDPConfig
from tests.conftest import TINY_MODEL as TINY

STATE = np.array([[0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.08]], np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A random-weight one-step model and teacher (parity does not need trained weights),
    with a fitted-looking normaliser, as checkpoints and as ONNX exports."""
    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    model = DiffusionPolicy(TINY)
    model.normalizer.fit("action", torch.rand(64, 10) * 0.5)
    model.normalizer.fit("low_dim", torch.rand(64, 10) * 0.5)
    paths = {"student_pt": root / "student.pt", "teacher_pt": root / "teacher.pt"}
    onedp = {"onedp": dataclasses.asdict(OneDPConfig())}
    save_checkpoint(paths["student_pt"], model_payload("onedp-s", model, onedp))
    save_checkpoint(paths["teacher_pt"], model_payload("diffusion", model))
    paths["student_onnx"] = root / "student.onnx"
    paths["teacher_onnx"] = root / "teacher.onnx"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(paths["student_pt"]),
                "--onnx",
                str(paths["student_onnx"]),
            ]
        )
        == 0
    )
    export_onnx(paths["teacher_pt"], paths["teacher_onnx"], "ddim4")
    return paths


def observation(engine, seed: int = 0) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = engine.spec
    frames = [
        ({c: rng.random(spec.image_shape(), dtype=np.float32) for c in spec.cameras}, STATE)
        for _ in range(spec.obs_horizon)
    ]
    return frames, rng.standard_normal(spec.noise_shape()).astype(np.float32)


def stacked(frames: list) -> dict[str, np.ndarray]:
    """Split-graph frames as the whole-pipeline graph's (1, To, ...) inputs."""
    feeds = {
        f"{c}_rgb": np.stack([images[c][0] for images, _ in frames])[None]
        for c in ("front", "wrist")
    }
    feeds["low_dim"] = np.stack([state[0] for _, state in frames])[None]
    return feeds


def test_export_writes_checked_graphs_and_a_manifest(models):
    manifest = json.loads(manifest_path(models["student_onnx"]).read_text())
    assert manifest["opset"] >= 17 and set(manifest["graphs"]) == {"pipeline", "encoder", "head"}
    for role, graph in manifest["graphs"].items():
        path = graph_path(models["student_onnx"], role)
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == [i["name"] for i in graph["inputs"]]
        assert [o.name for o in model.graph.output] == [graph["outputs"][0]["name"]]
    assert manifest["graphs"]["pipeline"]["inputs"][0] == {
        "name": "front_rgb",
        "shape": [1, 2, 3, 32, 44],
        "dtype": "float32",
        "meaning": "front camera frames, oldest first",
    }
    teacher = json.loads(manifest_path(models["teacher_onnx"]).read_text())
    assert set(teacher["graphs"]) == {"denoiser", "encoder"} and teacher["spec"]["nfe"] == 4


@pytest.mark.parametrize("kind,sampler", [("student", None), ("teacher", "ddim4")])
def test_onnxruntime_matches_torch(models, kind, sampler):
    reference = load_engine(models[f"{kind}_pt"], sampler=sampler, threads=1)
    engine = load_engine(models[f"{kind}_onnx"], sampler=sampler, threads=1)
    assert (reference.backend, engine.backend) == ("torch", "onnxruntime")
    frames, noise = observation(engine)
    expected = reference.infer(frames, noise)
    np.testing.assert_allclose(engine.infer(frames, noise), expected, atol=1e-4)
    assert expected.shape == (1, 16, 10)
    assert engine.latency()["encode_frame"]["runs"] == 2


def test_whole_pipeline_graph_matches_the_split_graphs(models):
    engine = load_engine(models["student_onnx"], threads=1)
    frames, noise = observation(engine, seed=1)
    np.testing.assert_allclose(
        engine.run_pipeline(stacked(frames), noise), engine.infer(frames, noise), atol=1e-5
    )


def test_learned_policy_is_the_same_on_every_backend(models, world):
    first = world.reset(0)
    world.hold()
    history = [first, world.observe()]
    chunks = [
        LearnedPolicy(load_engine(models[key], threads=1), seed=3).predict_chunk(history)
        for key in ("student_pt", "student_onnx")
    ]
    assert chunks[0].shape == (15, 10)
    np.testing.assert_allclose(chunks[0], chunks[1], atol=1e-4)


def test_fp16_graph_for_tensorrt_is_static_and_close(models, tmp_path):
    graphs = prepare_build(models["student_onnx"], tmp_path, fp16=True)
    assert set(graphs) == {"pipeline", "encoder", "head"}
    reference = load_engine(models["student_pt"], threads=1)
    frames, noise = observation(reference, seed=2)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(graphs["pipeline"]), options)
    assert {i.type for i in session.get_inputs()} == {"tensor(float)"}
    half = session.run(None, {**stacked(frames), "noise": noise})[0]
    np.testing.assert_allclose(half, reference.infer(frames, noise), atol=1e-2)


def test_tensorrt_builds_and_matches_torch(models, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT needs an NVIDIA GPU (./setup.sh --gpu)")
    from onedp_control.engines.tensorrt_backend import build_engine, gpu_name

    try:
        gpu_name()
    except EngineError as error:
        pytest.skip(f"no GPU: {error}")
    engine_path = tmp_path / "student.engine"
    metadata = build_engine(models["student_onnx"], engine_path, fp16=True)
    assert metadata["tensorrt"]["version"] == trt.__version__
    engine = load_engine(engine_path)
    reference = load_engine(models["student_pt"])
    frames, noise = observation(reference)
    np.testing.assert_allclose(
        engine.infer(frames, noise), reference.infer(frames, noise), atol=1e-2
    )


def test_loading_errors_name_the_file(models, tmp_path):
    with pytest.raises(EngineError, match="no such file"):
        load_engine(tmp_path / "missing.onnx")
    with pytest.raises(EngineError, match="unknown model file type"):
        load_engine(tmp_path / "model.tflite")
    with pytest.raises(EngineError, match=r"runs \.engine files"):
        load_engine(models["student_onnx"], backend="tensorrt")
    # A truncated graph beside its manifest.
    broken = tmp_path / "student.onnx"
    for role in ("pipeline", "encoder", "head"):
        shutil.copy(graph_path(models["student_onnx"], role), graph_path(broken, role))
    shutil.copy(manifest_path(models["student_onnx"]), manifest_path(broken))
    head = graph_path(broken, "head")
    head.write_bytes(head.read_bytes()[:1000])
    with pytest.raises(EngineError, match=r"student\.head\.onnx: ONNX Runtime cannot load it"):
        load_engine(broken)
    manifest_path(broken).write_text("{")
    with pytest.raises(EngineError, match=r"student\.onnx\.json: not valid JSON"):
        load_engine(broken)
    truncated = tmp_path / "student.pt"
    truncated.write_bytes(models["student_pt"].read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"student\.pt: not a readable checkpoint"):
        load_engine(truncated)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_tensorrt_engine_without_tensorrt_is_refused_clearly(models, tmp_path):
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"not an engine")
    metadata = json.loads(manifest_path(models["student_onnx"]).read_text())
    manifest_path(engine).write_text(json.dumps({**metadata, "tensorrt": {"version": "x"}}))
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        load_engine(engine)


@pytest.mark.parametrize("backend_key", ["student_pt", "student_onnx"])
def test_bad_inputs_are_refused_before_the_network(models, backend_key):
    engine = load_engine(models[backend_key], threads=1)
    frames, noise = observation(engine)
    images, state = frames[0]
    with pytest.raises(EngineInputError, match=r"input 'front_rgb': shape \(1, 3, 10, 10\)"):
        engine.encode_frame({**images, "front": np.zeros((1, 3, 10, 10), np.float32)}, state)
    with pytest.raises(EngineInputError, match="input 'wrist_rgb': missing"):
        engine.encode_frame({"front": images["front"]}, state)
    bad_state = state.copy()
    bad_state[0, 2] = np.nan
    with pytest.raises(EngineInputError, match="input 'low_dim': contains NaN"):
        engine.encode_frame(images, bad_state)
    with pytest.raises(EngineInputError, match="input 'noise'"):
        engine.infer(frames, np.full(noise.shape, np.inf, np.float32))
    with pytest.raises(EngineInputError, match="expected obs_horizon 2"):
        engine.infer(frames[:1], noise)
    assert engine.infer(frames, noise).shape == (1, 16, 10)  # still usable afterwards


def test_bench_latency_quick(tmp_path):
    out = tmp_path / "latency.json"
    assert (
        main(
            [
                "bench",
                "latency",
                "--quick",
                "--threads",
                "1",
                "--json",
                str(out),
                "--md",
                str(tmp_path / "l.md"),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    for key in (
        "ratio_ddpm100_vs_1step",
        "ratio_ddim10_vs_1step",
        "ratio_pipeline_ddpm100_vs_1step",
        "ratio_torch_vs_ort",
    ):
        assert report[key] > 1
    cpu = report["sizes"]["cpu"]
    assert "skipped" in cpu["backends"]["tensorrt"] or "pipeline" in cpu["backends"]["tensorrt"]
    assert cpu["peak_rss_mb"] > 0
