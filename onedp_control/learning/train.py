"""`onedp train --config FILE`: train a teacher, or a one-step policy that needs none.

The config's `method` says which: `diffusion` (Diffusion Policy, `model.schedule` ddpm or edm),
`flow` (the flow-matching teacher, schedule flow, policies/flow.py) or `ofp` (the One-Step Flow
Policy trained from scratch, schedule flow, policies/ofp.py, settings in the `ofp` section).

AdamW with linear warm-up and cosine decay, an exponential moving average of the weights (the
EMA weights are the policy), a progress bar, a checkpoint every `checkpoint_every` steps
(`last.pt`, resumable, plus `policy.pt`, the EMA policy alone) and the loss curve as
`loss.png`; TensorBoard scalars when asked for. `init_from` starts a new phase (fresh optimiser
and schedule) from an earlier policy file, also a teacher's of another schedule. A resumed run
continues the same random streams, so it matches an unbroken one.

`train.device: cuda` trains on a GPU: the batches are still cut from the dataset on the CPU,
one step ahead in a worker thread, so that the GPU does not wait for them. Each step's batch
draws from its own stream, seeded by (seed, step), so prefetching changes no result and a
resumed run needs only the step to continue the same batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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
from onedp_control.learning.data import TrainingWindows, dataset_label, open_datasets
from onedp_control.learning.plot import plot_losses
from onedp_control.policies.diffusion import DiffusionPolicy, ModelConfig
from onedp_control.policies.ofp import METHOD as OFP
from onedp_control.policies.ofp import OFPConfig, OneStepFlowPolicy, OneStepFlowTrainer
from onedp_control.policies.onedp import METHODS as ONEDP_METHODS


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
    device: str = "cpu"  # or "cuda": where the network trains (the batches are cut on the CPU)


@dataclass(frozen=True)
class TrainConfig:
    # A path or a list of paths, relative to the working directory; a list is one pool.
    dataset: str | tuple[str, ...]
    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    method: str = "diffusion"  # diffusion | flow (teachers) | ofp (one-step, no teacher)
    ofp: OFPConfig = field(default_factory=OFPConfig)
    # A policy file of the same method and architecture to start from (its weights and
    # normalizer), with a fresh optimiser and learning-rate schedule: a second training phase,
    # unlike --resume.
    init_from: str | None = None


# The schedules each method trains on.
TRAIN_METHODS = {"diffusion": ("ddpm", "edm"), "flow": ("flow",), OFP: ("flow",)}
TEACHERS = ("diffusion", "flow")


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


def check_method(cfg: TrainConfig, where: str) -> None:
    """The method is known, runs on the configured schedule, and its own section is valid."""
    if cfg.method not in TRAIN_METHODS:
        raise ConfigError(
            f"{where}: method must be one of {', '.join(TRAIN_METHODS)}, got '{cfg.method}'"
        )
    schedules = TRAIN_METHODS[cfg.method]
    if cfg.model.schedule not in schedules:
        raise ConfigError(
            f"{where}: method '{cfg.method}' needs model.schedule {' or '.join(schedules)}, got "
            f"'{cfg.model.schedule}' (a flow-matching teacher is method: flow, schedule: flow)"
        )
    if cfg.method == OFP:
        cfg.ofp.validate(f"{where}:ofp")


# Teachers share one network and differ only in what its output means (noise, denoised
# actions or velocity), so one teacher's weights can start another's training: the rival
# teachers of the methods table start from the DDPM teacher's 21,000 steps of visual features
# instead of spending CPU hours relearning them (the lineage keeps those steps on their bill).
# A OneDP generator is its teacher's network fine-tuned at one noise level, so it can start a
# DDPM/EDM teacher again: a teacher whose file is lost is recovered from a shipped student by a
# short denoising phase (models/pnp_milk/README.md), its lineage keeping the student's steps.
# OFP starts from nothing: the method's point is that it needs no teacher.
WARM_START_SOURCES = {"diffusion": TEACHERS + ONEDP_METHODS, "flow": TEACHERS, OFP: (OFP,)}


def init_weights(model: DiffusionPolicy, source: Path, method: str, where: str) -> list[dict]:
    """Loads the weights of `source` into `model`; returns the lineage of `source`."""
    payload, start = load_model(source, WARM_START_SOURCES[method])
    if replace(start.config, schedule=model.config.schedule) != model.config:
        raise ConfigError(
            f"{where}: init_from {source} has a different model configuration (only the "
            "schedule may differ)"
        )
    model.load_state_dict(start.state_dict())
    return training_lineage(payload, source)


def teacher_step(
    model: DiffusionPolicy,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    generator: torch.Generator,
) -> dict[str, float]:
    """One iteration of a teacher: its schedule's denoising (or flow-matching) loss."""
    loss = model.loss(batch, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach())}


def ofp_total(terms: dict[str, float], config: OFPConfig) -> float:
    """OFP's objective L_flow + lambda_c L_sc + lambda_g L_sg from the trainer's terms (a batch
    too small for a term's share has no such term)."""
    weights = {
        "flow": 1.0,
        "consistency": config.consistency_weight,
        "guidance": config.guidance_weight,
    }
    return sum(weights[name] * value for name, value in terms.items())


def training_device(name: str, method: str, where: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if method not in TEACHERS:  # OFP's trainer draws its times on the CPU
            raise ConfigError(f"{where}: train.device 'cuda' trains teachers only, not '{method}'")
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: train.device is 'cuda' but torch sees no CUDA device")
        return torch.device("cuda")
    raise ConfigError(f"{where}: train.device must be 'cpu' or 'cuda', got '{name}'")


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        key: to_device(value, device) if isinstance(value, dict) else value.to(device)
        for key, value in batch.items()
    }


def prefetched(cut: Callable[[int], dict], first: int, end: int) -> Iterator[dict]:
    """cut(step) for the steps first .. end - 1, in order, each one cut in a worker thread while
    the caller uses the one before. Closing the iterator waits for the batch in flight."""
    if first >= end:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(cut, first)
        for step in range(first, end):
            batch = upcoming.result()
            if step + 1 < end:
                upcoming = pool.submit(cut, step + 1)
            yield batch


def train(config_path: Path, resume: bool = False, progress: bool = True) -> Path:
    cfg = load_config(config_path, TrainConfig)
    cfg.model.validate(str(config_path))
    check_method(cfg, str(config_path))
    method, opt_cfg = cfg.method, cfg.train
    out = Path(cfg.output_dir)
    last = out / "last.pt"
    check_resumable(last, resume)
    device = training_device(opt_cfg.device, method, str(config_path))
    torch.set_num_threads(opt_cfg.threads)
    torch.manual_seed(opt_cfg.seed)

    windows = TrainingWindows(open_datasets(cfg.dataset, str(config_path)), cfg.model)
    model_class = OneStepFlowPolicy if method == OFP else DiffusionPolicy
    model = model_class(cfg.model)
    windows.fit_normalizer(model.normalizer)
    earlier_phases: list[dict] = []
    if cfg.init_from is not None and not resume:
        earlier_phases = init_weights(model, Path(cfg.init_from), method, str(config_path))
    # On the device before the optimiser exists, so that its state (and a resumed one's) lives
    # there too.
    model.to(device)
    # The policy is this EMA of the weights; OFP's trainer keeps its own target network too.
    ema = copy.deepcopy(model).requires_grad_(False)
    trainer = None
    if method == OFP:
        trainer = OneStepFlowTrainer(
            model, cfg.ofp, opt_cfg.steps, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
        )
        optimizer = trainer.optimizer
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opt_cfg.warmup_steps, opt_cfg.steps)
    )
    generator = torch.Generator().manual_seed(opt_cfg.seed)
    # "loss" is what is optimised; OFP adds its terms beside it.
    step, history = 0, {"loss": []}
    if resume:
        state = read_checkpoint(last)
        if state["method"] != method:
            raise ConfigError(
                f"{last}: a {state['method']} run; {config_path} trains method '{method}'"
            )
        if trainer is not None:
            trainer.load_state_dict(state["trainer"])
            history.update({name: list(values) for name, values in state["loss_terms"].items()})
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["torch_rng"])
        step, history["loss"] = state["step"], list(state["losses"])
        if "lineage" in state:
            earlier_phases = state["lineage"][:-1]
        elif cfg.init_from is not None:  # a run begun before lineages were recorded
            source = Path(cfg.init_from)
            earlier_phases = training_lineage(read_checkpoint(source), source)

    # The batches are normalised on the CPU, with the (possibly resumed) model's normalizer.
    normalizer = copy.deepcopy(model.normalizer).cpu()

    def cut_batch(batch_step: int) -> dict:
        batch_rng = np.random.default_rng([opt_cfg.seed, batch_step])
        indices = batch_rng.integers(0, len(windows), opt_cfg.batch_size)
        return windows.batch(indices, normalizer, batch_rng)

    writer = open_tensorboard(opt_cfg.tensorboard, out)
    bar = tqdm(total=opt_cfg.steps, initial=step, desc=method, unit="step", disable=not progress)
    model.train()
    for cut in prefetched(cut_batch, step, opt_cfg.steps):
        batch = to_device(cut, device)
        if trainer is not None:
            terms = trainer.step(batch, generator)
            terms = {"loss": ofp_total(terms, cfg.ofp), **terms}
        else:
            terms = teacher_step(model, optimizer, batch, generator)
        scheduler.step()
        ema_update(ema, model, ema_decay(step, opt_cfg.ema_power, opt_cfg.ema_max_decay))
        step += 1
        for name, value in terms.items():
            history.setdefault(name, []).append(value)
            if writer is not None:
                writer.add_scalar(name, value, step)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(history['loss'][-50:]):.4f}")
        if step % opt_cfg.checkpoint_every == 0 or step == opt_cfg.steps:
            lineage = [
                *earlier_phases,
                lineage_entry(
                    method, config_path, dataset_label(cfg.dataset), step, opt_cfg.batch_size
                ),
            ]
            if trainer is not None:
                training_state = {
                    "trainer": trainer.state_dict(),
                    "loss_terms": {k: v for k, v in history.items() if k != "loss"},
                }
            else:
                training_state = {"optimizer": optimizer.state_dict()}
            save_checkpoint(
                last,
                model_payload(
                    method,
                    model,
                    {
                        "ema": ema.state_dict(),
                        **training_state,
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": generator.get_state(),
                        "step": step,
                        "losses": history["loss"],
                        "train_config": str(config_path),
                        "lineage": lineage,
                    },
                ),
            )
            settings = {OFP: asdict(cfg.ofp)} if method == OFP else {}
            save_checkpoint(
                out / "policy.pt",
                model_payload(method, ema, {"step": step, "lineage": lineage, **settings}),
            )
            title = f"teacher ({cfg.model.schedule})" if trainer is None else "One-Step Flow Policy"
            plot_losses(history, out / "loss.png", title)
    bar.close()
    if writer is not None:
        writer.close()
    return out / "policy.pt"
