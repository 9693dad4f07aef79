"""`onedp train --config FILE`: train the Diffusion Policy teacher.

AdamW with linear warm-up and cosine decay, an exponential moving average of the weights (the
EMA weights are the policy), a progress bar, a checkpoint every `checkpoint_every` steps
(`last.pt`, resumable, plus `policy.pt`, the EMA policy alone) and the loss curve as
`loss.png`; TensorBoard scalars when asked for. `init_from` starts a new phase (fresh optimiser
and schedule) from an earlier policy file. A resumed run continues the same random
streams, so it matches an unbroken one.
"""

from __future__ import annotations

import copy
import math
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
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 2
    tensorboard: bool = False


@dataclass(frozen=True)
class TrainConfig:
    dataset: str  # relative paths are relative to the working directory
    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    # A policy file of the same architecture to start from (its weights and normalizer), with
    # a fresh optimiser and learning-rate schedule: a second training phase, unlike --resume.
    init_from: str | None = None


def ema_decay(step: int, power: float, max_decay: float) -> float:
    """Diffusion Policy's EMA warm-up: 0 at the start, approaching `max_decay`."""
    return min(max_decay, max(0.0, 1 - (1 + step) ** -power))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.mul_(decay).add_(param.detach(), alpha=1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def open_tensorboard(enabled: bool, out: Path):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard is true but the tensorboard package is not installed "
            "(./setup.sh installs it with: .venv/bin/pip install -e '.[tensorboard]')"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def init_weights(model: DiffusionPolicy, source: Path, where: str) -> None:
    _, start = load_model(source, ("diffusion",))
    if start.config != model.config:
        raise ConfigError(f"{where}: init_from {source} has a different model configuration")
    model.load_state_dict(start.state_dict())


def train(config_path: Path, resume: bool = False, progress: bool = True) -> Path:
    cfg = load_config(config_path, TrainConfig)
    cfg.model.validate(str(config_path))
    opt_cfg = cfg.train
    out = Path(cfg.output_dir)
    last = out / "last.pt"
    check_resumable(last, resume)
    torch.set_num_threads(opt_cfg.threads)
    torch.manual_seed(opt_cfg.seed)

    windows = TrainingWindows(Dataset(cfg.dataset), cfg.model)
    model = DiffusionPolicy(cfg.model)
    windows.fit_normalizer(model.normalizer)
    if cfg.init_from is not None and not resume:
        init_weights(model, Path(cfg.init_from), str(config_path))
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opt_cfg.warmup_steps, opt_cfg.steps)
    )
    rng = np.random.default_rng(opt_cfg.seed)
    generator = torch.Generator().manual_seed(opt_cfg.seed)
    step, losses = 0, []
    if resume:
        state = read_checkpoint(last)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        generator.set_state(state["torch_rng"])
        step, losses = state["step"], list(state["losses"])

    writer = open_tensorboard(opt_cfg.tensorboard, out)
    bar = tqdm(total=opt_cfg.steps, initial=step, desc="train", unit="step", disable=not progress)
    model.train()
    while step < opt_cfg.steps:
        batch = windows.batch(
            rng.integers(0, len(windows), opt_cfg.batch_size), model.normalizer, rng
        )
        loss = model.loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema_update(ema, model, ema_decay(step, opt_cfg.ema_power, opt_cfg.ema_max_decay))
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if writer is not None:
            writer.add_scalar("loss", losses[-1], step)
        if step % opt_cfg.checkpoint_every == 0 or step == opt_cfg.steps:
            save_checkpoint(
                last,
                model_payload(
                    "diffusion",
                    model,
                    {
                        "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "numpy_rng": rng.bit_generator.state,
                        "torch_rng": generator.get_state(),
                        "step": step,
                        "losses": losses,
                        "train_config": str(config_path),
                    },
                ),
            )
            save_checkpoint(out / "policy.pt", model_payload("diffusion", ema, {"step": step}))
            plot_losses({"loss": losses}, out / "loss.png", f"teacher ({cfg.model.schedule})")
    bar.close()
    if writer is not None:
        writer.close()
    return out / "policy.pt"
