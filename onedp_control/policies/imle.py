"""IMLE set distillation of a flow teacher into a one-step generator (Flow2One, Dong et al.
2026, arXiv 2603.09415; seed 002). Only the abstract and summaries are public
(shared/reference/one_step_methods.md, section 2); the paper's equations are not, so the loss
below is the reference's formalisation after MoFlow [R2], with RS-IMLE [R1] defaults.

- Teacher set (offline oracle): for each observation o, N chunks tau_i from the flow teacher
  sampled with 50 Euler steps (flow.sample_set), computed once before training and fed in the
  batch as `teacher_set` (B, N, T, D).
- Student: x_j = G_phi(z_j, o), z_j ~ N(0, I) chunk-shaped, j = 1..M, one network evaluation
  each. G_phi is the teacher's network (encoders + U-Net, warm-started from the teacher, as
  OneDP does) read at the fixed time t_g = 0 as the flow denoiser:
  G(z, o) = z + (1 - t_g) v_phi(z, t_g | o).
- Loss, bidirectional Chamfer between the two sets, d = Euclidean distance over the flattened
  normalised chunk:
  L = w_cov (1/N) sum_i min_j d(tau_i, x_j)   (coverage: every teacher mode has a hypothesis)
    + w_fid (1/M) sum_j min_i d(x_j, tau_i)   (fidelity: every hypothesis is near a teacher
      chunk, so no averaged chunks), w_cov = w_fid = 1 as MoFlow.
- Inference: one noise, one chunk (1 NFE), no selection.
- AdamW, lr 1e-4, weight decay 1e-6 (RS-IMLE [R1]).

Choices where the sources are silent: N = M = 16 (RS-IMLE draws 20 per condition); plain, not
squared, L2 (as RS-IMLE); matching within each observation's sets, not pooled over the batch;
the demonstration chunk is not added to the teacher set; no epsilon-rejection (RS-IMLE's
rejection serves coverage, which the coverage term already asks for); no MoFlow outer min over
several candidate sets; no teacher-set refresh; the warm start and t_g = 0, where the network's
input is exactly the flow's noise end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from onedp_control.errors import ConfigError
from onedp_control.policies.flow import TEACHER_STEPS, sample_set
from onedp_control.policies.onedp import DenoisingPolicy

METHOD = "imle"


@dataclass(frozen=True)
class IMLEConfig:
    teacher_set_size: int = 16  # N teacher chunks per observation
    hypotheses: int = 16  # M student chunks per observation and step
    teacher_steps: int = TEACHER_STEPS
    generator_time: float = 0.0  # t_g
    coverage_weight: float = 1.0
    fidelity_weight: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-6

    def validate(self, where: str) -> None:
        if min(self.teacher_set_size, self.hypotheses, self.teacher_steps) < 1:
            raise ConfigError(f"{where}: set sizes and teacher_steps must be >= 1")
        if not 0 <= self.generator_time < 1:
            raise ConfigError(f"{where}: generator_time must be in [0, 1)")
        if min(self.coverage_weight, self.fidelity_weight) < 0 or self.lr <= 0:
            raise ConfigError(f"{where}: weights must be >= 0 and lr > 0")


def generate(
    student: DenoisingPolicy, config: IMLEConfig, cond: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """One network evaluation: noise z (B, T, D) and condition -> normalised chunk."""
    t = torch.full((z.shape[0],), config.generator_time)
    return student.schedule.x0(student.unet, z, t, cond)


def teacher_set(
    teacher: DenoisingPolicy,
    config: IMLEConfig,
    cond: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The offline oracle's set for each condition: (B, N, T, D)."""
    return sample_set(teacher, cond, config.teacher_set_size, config.teacher_steps, generator)


def chamfer(
    hypotheses: torch.Tensor, teacher_chunks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(coverage, fidelity) of hypotheses (B, M, T, D) against teacher chunks (B, N, T, D)."""
    distance = torch.cdist(teacher_chunks.flatten(2), hypotheses.flatten(2))  # (B, N, M)
    coverage = distance.min(dim=2).values.mean()
    fidelity = distance.min(dim=1).values.mean()
    return coverage, fidelity


class IMLEDistiller:
    """The one-step student, warm-started from the flow teacher, and one training iteration on
    a batch that carries its observations' teacher sets."""

    def __init__(self, teacher: DenoisingPolicy, config: IMLEConfig) -> None:
        if teacher.schedule.kind != "flow":
            raise ConfigError(f"IMLE distils a flow teacher, not a {teacher.schedule.kind} one")
        self.config = config
        self.student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def step(self, batch: dict, rng: torch.Generator | None = None) -> dict[str, float]:
        cfg = self.config
        teacher_chunks = batch["teacher_set"]
        size, _, horizon, action_dim = teacher_chunks.shape
        cond = self.student.encode(batch).repeat_interleave(cfg.hypotheses, dim=0)
        z = torch.randn((size * cfg.hypotheses, horizon, action_dim), generator=rng)
        hypotheses = generate(self.student, cfg, cond, z).reshape(
            size, cfg.hypotheses, horizon, action_dim
        )
        coverage, fidelity = chamfer(hypotheses, teacher_chunks)
        loss = cfg.coverage_weight * coverage + cfg.fidelity_weight * fidelity
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"coverage": float(coverage.detach()), "fidelity": float(fidelity.detach())}

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
