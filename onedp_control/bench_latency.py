"""`onedp bench latency`: what one step buys, measured in one run on one machine.

For each model size (the CPU size trained here and the paper's size; `--quick`: CPU size only,
fewer runs) a model with random weights is exported (latency does not depend on the weights)
and timed on the same backend:

- observation encoding: one frame (what the run-time encodes per step, with the feature cache)
  and a whole observation (obs_horizon frames, no cache);
- one generator step (one network evaluation);
- action generation from the encoded observation to the chunk with 1 (OneDP), 10 (DDIM) and
  100 (DDPM) network evaluations, through the shared samplers;
- the whole pipeline (observation encoding + generation);
- torch eager against ONNX Runtime for the one-step pipeline, and TensorRT FP16 where a GPU
  and TensorRT are present (otherwise skipped, with the reason).

Median / p90 / p99 over the runs, warm-up excluded. Each size runs in its own process, so its
peak resident memory (`peak_rss_mb`, whole process: Python, torch, both backends) is its own.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from onedp_control.engines import load_engine
from onedp_control.engines.base import Engine, EngineError, percentiles
from onedp_control.engines.export import export_onnx
from onedp_control.learning.checkpoint import model_payload, save_checkpoint
from onedp_control.policies.diffusion import PAPER_MODEL, DiffusionPolicy, ModelConfig
from onedp_control.policies.onedp import OneDPConfig

SIZES = {"cpu": ModelConfig(), "paper": PAPER_MODEL}
# Timed runs per measurement: (one-step and encoding, DDIM-10, DDPM-100).
RUNS = {"quick": (20, 5, 2), "cpu": (200, 40, 10), "paper": (100, 20, 5)}
WARMUP = 3


def _time(fn, runs: int) -> dict:
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)


def _frames(engine: Engine, rng: np.random.Generator) -> list:
    spec = engine.spec
    images = {c: rng.random(spec.image_shape(), dtype=np.float32) for c in spec.cameras}
    return [(images, rng.random((1, spec.low_dim), dtype=np.float32))] * spec.obs_horizon


def _write_models(config: ModelConfig, directory: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = DiffusionPolicy(config)
    teacher = directory / "teacher.pt"
    student = directory / "onedp_s.pt"
    save_checkpoint(teacher, model_payload("diffusion", model))
    onedp = {"onedp": dataclasses.asdict(OneDPConfig())}
    save_checkpoint(student, model_payload("onedp-s", model, onedp))
    paths = {"torch_onestep": student, "torch_teacher": teacher}
    paths["ort_onestep"] = directory / "onedp_s.onnx"
    paths["ort_teacher"] = directory / "teacher.onnx"
    export_onnx(student, paths["ort_onestep"])
    export_onnx(teacher, paths["ort_teacher"])
    return paths


def measure_backend(
    by_nfe: dict[str, Engine], frames: list, noise: np.ndarray, generator, runs: dict[str, int]
) -> dict:
    one_step = by_nfe["1"]
    images, low_dim = frames[0]
    features = np.concatenate([one_step.encode_frame(i, s) for i, s in frames], axis=-1)
    return {
        "encode_frame": _time(lambda: one_step.encode_frame(images, low_dim), runs["1"]),
        "encode_observation": _time(
            lambda: [one_step.encode_frame(i, s) for i, s in frames], runs["1"]
        ),
        "generation": {
            nfe: _time(lambda e=engine: e.generate(features, noise, generator), runs[nfe])
            for nfe, engine in by_nfe.items()
        },
        "pipeline": {
            nfe: _time(lambda e=engine: e.infer(frames, noise, generator), runs[nfe])
            for nfe, engine in by_nfe.items()
        },
    }


def measure_size(size: str, quick: bool, threads: int) -> dict:
    """One model size, all backends; runs in a child process (see module docstring)."""
    torch.set_num_threads(threads)
    one_runs, ddim_runs, ddpm_runs = RUNS["quick" if quick else size]
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="onedp-bench-") as tmp:
        paths = _write_models(SIZES[size], Path(tmp))
        engines = {
            "onnxruntime": {
                "1": load_engine(paths["ort_onestep"], threads=threads),
                "10": load_engine(paths["ort_teacher"], sampler="ddim10", threads=threads),
                "100": load_engine(paths["ort_teacher"], sampler="ddpm", threads=threads),
            },
            "torch": {
                "1": load_engine(paths["torch_onestep"], threads=threads),
                "10": load_engine(paths["torch_teacher"], sampler="ddim10", threads=threads),
                "100": load_engine(paths["torch_teacher"], sampler="ddpm", threads=threads),
            },
        }
        spec = engines["onnxruntime"]["1"].spec
        frames = _frames(engines["onnxruntime"]["1"], rng)
        noise = rng.standard_normal(spec.noise_shape()).astype(np.float32)
        runs = {"1": one_runs, "10": ddim_runs, "100": ddpm_runs}
        backends = {
            backend: measure_backend(by_nfe, frames, noise, generator, runs)
            for backend, by_nfe in engines.items()
        }
        backends["tensorrt"] = _tensorrt(paths["ort_onestep"], Path(tmp), frames, noise, one_runs)
        parameters = sum(p.numel() for p in DiffusionPolicy(SIZES[size]).parameters())
    return {
        "size": size,
        "model": {
            "image_size": list(SIZES[size].image_size),
            "vision_width": SIZES[size].vision_width,
            "down_dims": list(SIZES[size].down_dims),
            "step_embed_dim": SIZES[size].step_embed_dim,
            "parameters_millions": round(parameters / 1e6, 2),
        },
        "backends": backends,
        "ratios": ratios(backends),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _tensorrt(onnx_path: Path, tmp: Path, frames: list, noise: np.ndarray, runs: int) -> dict:
    from onedp_control.engines.tensorrt_backend import build_engine

    try:
        engine_path = tmp / "onedp_s.engine"
        build_engine(onnx_path, engine_path, fp16=True)
        engine = load_engine(engine_path)
    except EngineError as error:
        return {"skipped": str(error)}
    return {"fp16": True, "pipeline": {"1": _time(lambda: engine.infer(frames, noise), runs)}}


def ratios(backends: dict) -> dict:
    """Median-time ratios; generation is from encoded observation to chunk."""
    ort, eager = backends["onnxruntime"], backends["torch"]

    def median(entry: dict) -> float:
        return entry["median_ms"]

    return {
        "ratio_ddpm100_vs_1step": median(ort["generation"]["100"]) / median(ort["generation"]["1"]),
        "ratio_ddim10_vs_1step": median(ort["generation"]["10"]) / median(ort["generation"]["1"]),
        "ratio_pipeline_ddpm100_vs_1step": median(ort["pipeline"]["100"])
        / median(ort["pipeline"]["1"]),
        "ratio_torch_vs_ort": median(eager["pipeline"]["1"]) / median(ort["pipeline"]["1"]),
    }


def control_rates(backends: dict) -> dict:
    """The chunk rate each method allows: 1000 / p99 of its whole pipeline, per backend."""
    rates = {}
    for backend, result in backends.items():
        for nfe, entry in result.get("pipeline", {}).items():
            rates[f"{backend}_{nfe}nfe_hz"] = round(1000.0 / entry["p99_ms"], 1)
    return rates


def bench_latency(quick: bool = False, threads: int | None = None) -> dict:
    threads = threads or os.cpu_count() or 1
    sizes = ["cpu"] if quick else ["cpu", "paper"]
    context = multiprocessing.get_context("spawn")
    results = {}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for size in sizes:
            results[size] = pool.apply(measure_size, (size, quick, threads))
    headline = results["paper" if "paper" in results else "cpu"]
    for result in results.values():
        result["control_rates"] = control_rates(result["backends"])
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": threads,
        "quick": quick,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "ratios_from": headline["size"],
        **{key: round(value, 2) for key, value in headline["ratios"].items()},
        "sizes": results,
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"Latency benchmark, {report['date']}, {report['machine']}, {report['threads']} threads, "
        f"torch {report['torch']}, ONNX Runtime {report['onnxruntime']}"
        + (" (quick)" if report["quick"] else ""),
        "",
        "| size | backend | measure | median ms | p90 ms | p99 ms |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        for backend, entry in result["backends"].items():
            if "skipped" in entry:
                lines.append(f"| {size} | {backend} | skipped: {entry['skipped']} | | | |")
                continue
            rows = [(n, entry[n]) for n in ("encode_frame", "encode_observation") if n in entry]
            rows += [(f"generation, {n} NFE", v) for n, v in entry.get("generation", {}).items()]
            rows += [(f"pipeline, {n} NFE", v) for n, v in entry["pipeline"].items()]
            lines += [
                f"| {size} | {backend} | {name} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} "
                f"| {v['p99_ms']:.2f} |"
                for name, v in rows
            ]
    lines += ["", "| size | ratio | value | goal |", "| --- | --- | ---: | ---: |"]
    goals = {
        "ratio_ddpm100_vs_1step": ">= 90",
        "ratio_ddim10_vs_1step": ">= 9",
        "ratio_pipeline_ddpm100_vs_1step": ">= 40",
        "ratio_torch_vs_ort": ">= 1.5",
    }
    for size, result in report["sizes"].items():
        for key, value in result["ratios"].items():
            lines.append(f"| {size} | {key} | {value:.1f} | {goals[key]} |")
    lines += ["", "| size | parameters (M) | peak RSS (MB) | one-step ORT chunk rate (Hz, p99) |"]
    lines.append("| --- | ---: | ---: | ---: |")
    for size, result in report["sizes"].items():
        rate = result["control_rates"].get("onnxruntime_1nfe_hz")
        lines.append(
            f"| {size} | {result['model']['parameters_millions']} | {result['peak_rss_mb']} "
            f"| {rate} |"
        )
    return "\n".join(lines) + "\n"
