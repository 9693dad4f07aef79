"""Every one-step method on the two-mode task of test_two_modes.py, side by side: the share of
samples through each gap (mode coverage) and through either (validity). `pytest -s` prints the
table.

The task, its scoring, the DDPM teacher (an MLP) and the OneDP-S and regression settings are
those of test_two_modes.py. The rivals need what that MLP lacks, a global condition input:
Consistency Policy's and OFP's second time enters the network through it (two_time.py) and
OFP's learned null condition replaces it. Their networks are therefore `ConditionedMLP`, the
same small MLP reading a condition vector; the toy has one observation, a fixed feature vector.
As in test_two_modes.py, learning rates are raised (10x the papers' for CP and IMLE; the toy
teacher's for OFP, trained from scratch like a teacher) so that each method trains in seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_two_modes import ToyConfig, ToyPolicy, expert_samples, score
from test_two_modes import teacher as ddpm_teacher  # noqa: F401 (a fixture, used by name)
from torch import nn

from onedp_control.diffusion.schedules import EDMSchedule, FlowSchedule, Schedule
from onedp_control.nn.unet1d import SinusoidalEmbedding
from onedp_control.policies import consistency, imle, ofp
from onedp_control.policies.onedp import OneDPConfig, OneDPDistiller, generate, generator_noise
from onedp_control.policies.two_time import SecondTimeEmbedding, warm_start

COND_DIM = 8
OBSERVATION = torch.randn(COND_DIM, generator=torch.Generator().manual_seed(42))
SAMPLES = 1000  # scored samples per method
BOTH_MODES = 0.3  # a method keeps both modes when each gap gets at least this share ...
VALID = 0.9  # ... and is valid when at least this share goes through a gap


class ConditionedMLP(nn.Module):
    """test_two_modes' MLP denoiser (same width and depth) with a global condition among its
    inputs, and the level through the U-Net's sinusoidal embedding."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.level = SinusoidalEmbedding(16)
        self.net = nn.Sequential(
            nn.Linear(2 + 16 + COND_DIM, width),
            nn.Mish(),
            nn.Linear(width, width),
            nn.Mish(),
            nn.Linear(width, width),
            nn.Mish(),
            nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(level, dtype=torch.float32).expand(x.shape[0])
        return self.net(torch.cat([x[:, 0], self.level(level), cond], dim=-1))[:, None]


class ConditionedToyPolicy(nn.Module):
    """DenoisingPolicy-shaped: schedule, unet, config, encode."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.unet = ConditionedMLP()
        self.schedule = schedule
        self.config = ToyConfig()

    def encode(self, batch: dict) -> torch.Tensor:
        return batch["cond"]


class TwoTimeToyPolicy(ConditionedToyPolicy):
    """A TwoTimePolicy in miniature (Consistency Policy's student)."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self.second_time = SecondTimeEmbedding(16, COND_DIM)


class GuidedTwoTimeToyPolicy(TwoTimeToyPolicy):
    """A OneStepFlowPolicy in miniature."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self.null_condition = nn.Parameter(torch.zeros(COND_DIM))


def observations(count: int) -> torch.Tensor:
    return OBSERVATION.expand(count, COND_DIM)


def noise(seed: int, *shape: int) -> torch.Tensor:
    """SAMPLES draws of shape (*shape, 1, 2): initial noise, or CP's re-noising (shape N - 1)."""
    return torch.randn(SAMPLES, *shape, 1, 2, generator=torch.Generator().manual_seed(seed))


def train_conditioned_teacher(schedule: Schedule, steps: int = 1000) -> ConditionedToyPolicy:
    """As test_two_modes' teacher fixture, on the conditioned network."""
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    policy = ConditionedToyPolicy(schedule)
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = schedule.loss(policy.unet, expert_samples(256, rng), observations(256), rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def ddpm_rows(teacher: ToyPolicy) -> dict[str, tuple[int, torch.Tensor]]:
    """The DDPM teacher, its one-step DDIM, and the two students of test_two_modes."""
    rng = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ddpm = teacher.schedule.sample_ddpm(teacher.unet, noise(1), None, rng)
        ddim = teacher.schedule.sample_ddim(teacher.unet, noise(2), None, 1)
        targets = teacher.schedule.sample_ddpm(
            teacher.unet, torch.randn(2000, 1, 2, generator=rng), None, rng
        )
    regression = nn.Sequential(nn.Linear(1, 64), nn.Mish(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(regression.parameters(), lr=1e-2)
    observation = torch.zeros(2000, 1)
    for _ in range(300):
        loss = torch.mean((regression(observation) - targets[:, 0]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    config = OneDPConfig(method="onedp-s", lr_generator=1e-4, lr_score=2e-3)
    distiller = OneDPDistiller(teacher, config)
    batch = {"action": torch.zeros(256, 1, 2), "cond": None}
    for _ in range(2500):
        distiller.step(batch, rng)
    with torch.no_grad():
        z = generator_noise(distiller.generator, config, SAMPLES, rng)
        return {
            "teacher DDPM": (100, ddpm),
            "teacher DDIM-1": (1, ddim),
            "regression": (1, regression(observation[:SAMPLES])[:, None]),
            "OneDP-S": (1, generate(distiller.generator, config, None, z)),
        }


def distil_consistency(
    teacher: ConditionedToyPolicy, config: consistency.ConsistencyConfig, steps: int
) -> TwoTimeToyPolicy:
    student = TwoTimeToyPolicy(teacher.schedule)
    warm_start(student, teacher)
    distiller = consistency.ConsistencyDistiller(teacher, student, config)
    rng = torch.Generator().manual_seed(4)
    for _ in range(steps):
        distiller.step({"action": expert_samples(256, rng), "cond": observations(256)}, rng)
    return distiller.student.eval()


def consistency_rows() -> dict[str, tuple[int, torch.Tensor]]:
    """CP as shipped by its authors (C1's settings), and its CTM part alone from sigma_max noise
    (the ODE's own initial variance), to tell the CTM distillation from C1's two settings that
    pull the one-step jump to the mean (see test_consistency_policy)."""
    teacher = train_conditioned_teacher(EDMSchedule())
    shipped = consistency.ConsistencyConfig(lr=1e-3)
    ctm_only = dataclasses.replace(shipped, dsm_weight=0.0, initial_noise_scale=80.0)
    cp = distil_consistency(teacher, shipped, 300)
    cp_ctm = distil_consistency(teacher, ctm_only, 300)
    cond = observations(SAMPLES)
    with torch.no_grad():
        return {
            "teacher EDM Heun-18": (
                35,
                teacher.schedule.sample_heun(teacher.unet, noise(5), cond, 18),
            ),
            "CP-1": (1, consistency.generate(cp, shipped, cond, noise(6))),
            "CP-3": (3, consistency.generate(cp, shipped, cond, noise(6), noise(7, 2))),
            "CP-1, CTM only, z*80": (1, consistency.generate(cp_ctm, ctm_only, cond, noise(6))),
        }


def flow_rows() -> dict[str, tuple[int, torch.Tensor]]:
    """The flow teacher (Euler-50) and IMLE set distillation from it."""
    teacher = train_conditioned_teacher(FlowSchedule())
    config = imle.IMLEConfig(lr=1e-3)
    rng = torch.Generator().manual_seed(8)
    cond = observations(16)  # 16 observations a batch: 16 teacher sets of N = 16
    teacher_sets = imle.teacher_set(teacher, config, cond, rng)
    distiller = imle.IMLEDistiller(teacher, config)
    for _ in range(200):
        distiller.step({"teacher_set": teacher_sets, "cond": cond}, rng)
    cond = observations(SAMPLES)
    with torch.no_grad():
        euler = teacher.schedule.sample_euler(teacher.unet, noise(9), cond, 50)
        return {
            "teacher flow Euler-50": (50, euler),
            "IMLE-1": (1, imle.generate(distiller.student.eval(), config, cond, noise(10))),
        }


def one_step_flow_rows() -> dict[str, tuple[int, torch.Tensor]]:
    """OFP from scratch, sampled with one jump and with four."""
    torch.manual_seed(0)
    steps = 1200
    trainer = ofp.OneStepFlowTrainer(
        GuidedTwoTimeToyPolicy(FlowSchedule()), ofp.OFPConfig(), steps, lr=2e-3
    )
    rng = torch.Generator().manual_seed(11)
    for _ in range(steps):
        trainer.step({"action": expert_samples(256, rng), "cond": observations(256)}, rng)
    model, cond = trainer.model.eval(), observations(SAMPLES)
    with torch.no_grad():
        return {
            "OFP-1": (1, ofp.generate(model, cond, noise(12))),
            "OFP-4": (4, ofp.generate(model, cond, noise(12), steps=4)),
        }


@pytest.fixture(scope="module")
def results(ddpm_teacher) -> dict[str, tuple[int, float, float, float]]:  # noqa: F811
    """method -> (network evaluations per sample, left share, right share, valid share)."""
    rows = {
        **ddpm_rows(ddpm_teacher),
        **consistency_rows(),
        **flow_rows(),
        **one_step_flow_rows(),
    }
    return {method: (nfe, *score(samples)) for method, (nfe, samples) in rows.items()}


def test_table(results):
    lines = [f"{'method':<22} {'NFE':>4} {'left':>6} {'right':>6} {'valid':>6}"]
    for method, (nfe, left, right, valid) in results.items():
        lines.append(f"{method:<22} {nfe:>4} {left:>6.3f} {right:>6.3f} {valid:>6.3f}")
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize(
    "method",
    [
        "teacher DDPM",
        "OneDP-S",
        "teacher EDM Heun-18",
        "teacher flow Euler-50",
        "IMLE-1",
    ],
)
def test_keeps_both_modes(results, method):
    _, left, right, valid = results[method]
    assert left >= BOTH_MODES and right >= BOTH_MODES, (left, right)
    assert valid >= VALID, valid


def test_one_step_baselines_fail_as_in_the_papers(results):
    assert results["teacher DDIM-1"][3] < 0.5  # the OneDP paper's Table 1
    assert results["regression"][3] < 0.1  # averages the two answers into the obstacle


def test_consistency_policy(results):
    # CP-1 as shipped lands on the mean, through the obstacle. Two of C1's settings cause it on
    # a two-mode task: its DSM term trains the sigma_max -> sigma_min jump itself towards
    # E[x0 | x_sigma] (the average of the modes at high noise), and its "reduced initial
    # variance" (z ~ N(0, I) at sigma = 80) feeds the jump inputs 80 times closer together than
    # the ODE's, so they all land near one point. Not a failure of the test's budget: the CTM
    # term alone, from the ODE's own sigma_max noise, keeps both modes after as many steps.
    assert results["CP-1"][3] < 0.1
    _, left, right, valid = results["CP-1, CTM only, z*80"]
    assert left >= BOTH_MODES and right >= BOTH_MODES and valid >= 0.7, (left, right, valid)
    # CP-3's re-noising at sigma 12 and 0.9 lets the later jumps pick a mode: about half valid.
    _, left, right, valid = results["CP-3"]
    assert left >= 0.2 and right >= 0.2 and valid >= 0.4, (left, right, valid)


def test_one_step_flow_policy(results):
    # OFP-1 does not reach the bar in this budget: from scratch, with no teacher ODE to copy, its
    # one-step jump keeps both modes but puts many samples between them. Over training seeds it
    # ends 1200 steps at 0.3 to 0.8 valid (this seed: about 0.3), and improves slowly (this
    # seed: 0.6 after 4000 steps). Four jumps of the same network are nearly all valid.
    _, left, right, valid = results["OFP-1"]
    assert left >= 0.1 and right >= 0.1 and valid >= 0.25, (left, right, valid)
    _, left, right, valid = results["OFP-4"]
    assert left >= BOTH_MODES and right >= BOTH_MODES and valid >= 0.85, (left, right, valid)
