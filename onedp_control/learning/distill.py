"""`onedp distill --method onedp-s|onedp-d|cp|imle --teacher CKPT --config FILE`.

Distils a teacher's policy file into a one-step policy on the teacher's dataset:

- `onedp-s` / `onedp-d` (policies/onedp.py): a DDPM or EDM teacher; the generator (and, for
  OneDP-S, the generator score network) warm-started from it, Algorithm 1 of the OneDP paper;
- `cp` (policies/consistency.py): an EDM teacher; a two-time student warm-started from it, the
  CTM + DSM loss of Consistency Policy;
- `imle` (policies/imle.py): a flow teacher; a student warm-started from it, matched to a set of
  teacher chunks per observation. The sets are drawn once before the loop (one per training
  window, centre crop) and cached as `<output_dir>/imle/teacher_sets.pt`, so a resumed run
  reuses them.

Writes, into `<output_dir>/<method>/`, `last.pt` (resumable) and `policy.pt` (the student alone:
what `onedp eval` loads) every `checkpoint_every` steps, and the loss curves as `loss.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from onedp_control.config import load_config
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import (
    check_resumable,
    lineage_entry,
    load_model,
    model_payload,
    read_checkpoint,
    save_checkpoint,
    training_lineage,
)
from onedp_control.learning.data import (
    TrainingWindows,
    dataset_label,
    dataset_paths,
    open_datasets,
)
from onedp_control.learning.plot import plot_losses
from onedp_control.policies import consistency, imle, onedp
from onedp_control.policies.consistency import ConsistencyConfig, ConsistencyDistiller
from onedp_control.policies.diffusion import DiffusionPolicy
from onedp_control.policies.imle import IMLEConfig, IMLEDistiller
from onedp_control.policies.onedp import OneDPConfig, OneDPDistiller
from onedp_control.policies.two_time import TwoTimePolicy, warm_start

# The teacher schedules each method distils. OneDP's generator level and input treat anything
# that is not DDPM as EDM, so a flow teacher is refused rather than misread.
TEACHER_SCHEDULES = {
    **{method: ("ddpm", "edm") for method in onedp.METHODS},
    consistency.METHOD: ("edm",),
    imle.METHOD: ("flow",),
}
METHODS = tuple(TEACHER_SCHEDULES)
MethodSettings = OneDPConfig | ConsistencyConfig | IMLEConfig


@dataclass(frozen=True)
class DistillLoopConfig:
    steps: int = 800
    batch_size: int = 64
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class DistillConfig:
    dataset: str | tuple[str, ...]  # a path or a list of paths (one pool)
    output_dir: str
    onedp: OneDPConfig = field(default_factory=OneDPConfig)
    cp: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    imle: IMLEConfig = field(default_factory=IMLEConfig)
    train: DistillLoopConfig = field(default_factory=DistillLoopConfig)


class Distiller(Protocol):
    def step(self, batch: dict, rng: torch.Generator | None = None) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def method_settings(cfg: DistillConfig, method: str, where: Path) -> tuple[str, MethodSettings]:
    """The method's config section (its key in the file and in policy.pt), validated."""
    if method in onedp.METHODS:
        settings = dataclasses.replace(cfg.onedp, method=method)
        key = "onedp"
    else:
        key = method
        settings = getattr(cfg, key)
    settings.validate(f"{where}:{key}")
    return key, settings


def check_teacher(teacher: DiffusionPolicy, method: str, path: Path) -> None:
    schedules = TEACHER_SCHEDULES[method]
    kind = teacher.schedule.kind
    if kind not in schedules:
        raise ConfigError(
            f"--teacher: {path} is a {kind} teacher; {method} distils "
            f"{' or '.join(schedules)} teachers"
        )


def make_distiller(
    method: str, settings: MethodSettings, teacher: DiffusionPolicy
) -> tuple[Distiller, DiffusionPolicy]:
    """The method's distiller and the student network it trains (what policy.pt holds)."""
    if method in onedp.METHODS:
        distiller = OneDPDistiller(teacher, settings)
        return distiller, distiller.generator
    if method == consistency.METHOD:
        student = TwoTimePolicy(teacher.config)
        warm_start(student, teacher)
        return ConsistencyDistiller(teacher, student, settings), student
    distiller = IMLEDistiller(teacher, settings)
    return distiller, distiller.student


def imle_teacher_sets(
    teacher: DiffusionPolicy,
    teacher_path: Path,
    config: IMLEConfig,
    windows: TrainingWindows,
    cfg: DistillConfig,
    cache: Path,
    progress: bool,
) -> torch.Tensor:
    """The teacher's set for every training window (centre crop): (windows, N, T, D), read from
    `cache` when it was drawn from the same teacher file, dataset and settings, else drawn
    (len(windows) * N * teacher_steps network evaluations) and cached."""
    loop = cfg.train
    source = {
        "teacher_sha256": hashlib.sha256(teacher_path.read_bytes()).hexdigest(),
        "dataset": [str(Path(path).resolve()) for path in dataset_paths(cfg.dataset)],
        "windows": len(windows),
        "teacher_set_size": config.teacher_set_size,
        "teacher_steps": config.teacher_steps,
        "seed": loop.seed,
    }
    if cache.exists():
        cached = read_checkpoint(cache)
        if cached["source"] == source:
            return cached["sets"]
    # Its own random stream: the training stream is then the same whether the sets were drawn
    # now or read from the cache, and does not replay the sets' noise.
    generator = torch.Generator().manual_seed(loop.seed + 1)
    sets = []
    evaluations = config.teacher_set_size * config.teacher_steps
    with tqdm(
        total=len(windows) * evaluations,
        desc="imle teacher sets",
        unit="nfe",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        for start in range(0, len(windows), loop.batch_size):
            indices = np.arange(start, min(start + loop.batch_size, len(windows)))
            batch = windows.batch(indices, teacher.normalizer, None)
            with torch.no_grad():
                cond = teacher.encode(batch)
                sets.append(imle.teacher_set(teacher, config, cond, generator))
            bar.update(len(indices) * evaluations)
    stacked = torch.cat(sets)
    save_checkpoint(cache, {"source": source, "sets": stacked})
    return stacked


def distill(
    config_path: Path, method: str, teacher_path: Path, resume: bool = False, progress: bool = True
) -> Path:
    cfg = load_config(config_path, DistillConfig)
    if method not in METHODS:
        raise ConfigError(f"--method: unknown method '{method}' (known: {', '.join(METHODS)})")
    key, settings = method_settings(cfg, method, config_path)
    teacher_payload, teacher = load_model(teacher_path, ("diffusion", "flow"))
    teacher_lineage = training_lineage(teacher_payload, teacher_path)
    check_teacher(teacher, method, teacher_path)
    out = Path(cfg.output_dir) / method
    last = out / "last.pt"
    check_resumable(last, resume)
    loop = cfg.train
    torch.set_num_threads(loop.threads)
    torch.manual_seed(loop.seed)
    windows = TrainingWindows(open_datasets(cfg.dataset, str(config_path)), teacher.config)
    distiller, student = make_distiller(method, settings, teacher)
    teacher_sets = None
    if method == imle.METHOD:
        cache = out / "teacher_sets.pt"
        teacher_sets = imle_teacher_sets(
            teacher, teacher_path, settings, windows, cfg, cache, progress
        )
    rng = np.random.default_rng(loop.seed)
    generator = torch.Generator().manual_seed(loop.seed)
    step, history = 0, {}
    if resume:
        state = read_checkpoint(last)
        distiller.load_state_dict(state["distiller"])
        rng.bit_generator.state = state["numpy_rng"]
        generator.set_state(state["torch_rng"])
        step, history = state["step"], state["losses"]

    bar = tqdm(total=loop.steps, initial=step, desc=method, unit="step", disable=not progress)
    while step < loop.steps:
        indices = rng.integers(0, len(windows), loop.batch_size)
        batch = windows.batch(indices, teacher.normalizer, rng)
        if teacher_sets is not None:
            batch["teacher_set"] = teacher_sets[torch.from_numpy(indices)]
        for name, value in distiller.step(batch, generator).items():
            history.setdefault(name, []).append(value)
        step += 1
        bar.update(1)
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            extra = {
                key: dataclasses.asdict(settings),
                "teacher": str(teacher_path),
                "lineage": [
                    *teacher_lineage,
                    lineage_entry(
                        method, config_path, dataset_label(cfg.dataset), step, loop.batch_size
                    ),
                ],
            }
            save_checkpoint(
                last,
                {
                    "method": method,
                    "distiller": distiller.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": generator.get_state(),
                    "step": step,
                    "losses": history,
                    **extra,
                },
            )
            save_checkpoint(
                out / "policy.pt", model_payload(method, student, {"step": step, **extra})
            )
            plot_losses(history, out / "loss.png", f"{method} distillation")
    bar.close()
    return out / "policy.pt"
