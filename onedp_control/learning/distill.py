"""`onedp distill --method onedp-s|onedp-d --teacher CKPT --config FILE`.

Warm-starts the generator (and, for OneDP-S, the generator score network) from the teacher's
policy file and runs Algorithm 1 of the OneDP paper on the teacher's dataset. Writes, into
`<output_dir>/<method>/`, `last.pt` (resumable) and `policy.pt` (the generator alone: what
`onedp eval` loads) every `checkpoint_every` steps, and the loss curves as `loss.png`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from onedp_control.config import load_config
from onedp_control.dataset import Dataset
from onedp_control.errors import ConfigError
from onedp_control.learning.checkpoint import (
    check_resumable,
    load_model,
    model_payload,
    read_checkpoint,
    save_checkpoint,
)
from onedp_control.learning.data import TrainingWindows
from onedp_control.learning.plot import plot_losses
from onedp_control.policies.onedp import METHODS, OneDPConfig, OneDPDistiller


@dataclass(frozen=True)
class DistillLoopConfig:
    steps: int = 800
    batch_size: int = 64
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class DistillConfig:
    dataset: str
    output_dir: str
    onedp: OneDPConfig = field(default_factory=OneDPConfig)
    train: DistillLoopConfig = field(default_factory=DistillLoopConfig)


def distill(
    config_path: Path, method: str, teacher_path: Path, resume: bool = False, progress: bool = True
) -> Path:
    cfg = load_config(config_path, DistillConfig)
    if method not in METHODS:
        raise ConfigError(f"--method: unknown method '{method}' (known: {', '.join(METHODS)})")
    onedp_cfg = dataclasses.replace(cfg.onedp, method=method)
    onedp_cfg.validate(f"{config_path}:onedp")
    out = Path(cfg.output_dir) / method
    last = out / "last.pt"
    check_resumable(last, resume)
    _, teacher = load_model(teacher_path, ("diffusion",))
    loop = cfg.train
    torch.set_num_threads(loop.threads)
    torch.manual_seed(loop.seed)
    windows = TrainingWindows(Dataset(cfg.dataset), teacher.config)
    distiller = OneDPDistiller(teacher, onedp_cfg)
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
        batch = windows.batch(
            rng.integers(0, len(windows), loop.batch_size), teacher.normalizer, rng
        )
        for name, value in distiller.step(batch, generator).items():
            history.setdefault(name, []).append(value)
        step += 1
        bar.update(1)
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            extra = {"onedp": dataclasses.asdict(onedp_cfg), "teacher": str(teacher_path)}
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
                out / "policy.pt",
                model_payload(method, distiller.generator, {"step": step, **extra}),
            )
            plot_losses(history, out / "loss.png", f"{method} distillation")
    bar.close()
    return out / "policy.pt"
