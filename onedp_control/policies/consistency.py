"""Consistency Policy (Prasad et al. 2024), the CTM variant: the baseline of the OneDP paper's
Table 2. Distils an EDM teacher into a student that jumps along the teacher's probability-flow
ODE from any time t to any earlier time s, and samples in 1 or N jumps.

What is implemented follows the authors' code as summarised in
shared/reference/one_step_methods.md, section 3 ([C1]); the paper numbers only the total loss
(Eq. 8, alpha CTM + beta DSM).

- Time grid: N = 80 bins of the Karras schedule between sigma_max = 80 and sigma_min = 0.02,
  rho = 7, bin 0 = sigma_max; bin 80 stands for sigma_min again (the jump to the data).
- Student (CTM parameterisation with boundary scalings, sigma_d = 0.5 from the teacher):
  g(x, t, s) = c_skip(t) x + c_out(t) F(c_in(t) x, t, s),
  c_skip = sigma_d^2 / ((t - sigma_min)^2 + sigma_d^2),
  c_out = (t - sigma_min) sigma_d / sqrt(t^2 + sigma_d^2), c_in = 1 / sqrt(t^2 + sigma_d^2),
  G(x, t, s) = (s / t) x + (1 - s / t) g(x, t, s), so that G(x, sigma_min, sigma_min) = x.
  F is the teacher's U-Net (warm-started, encoders included) with s entering through the
  second-time embedding of two_time.py; both times in the teacher's units c_noise = ln(sigma)/4
  (C1 uses 250 ln(sigma); the shared U-Net keeps the teacher's convention).
- CTM loss: bins t ~ U{0..79}, s ~ U{t..80}, u ~ U{t..s} capped at t + K (K = 1);
  x_t = x0 + sigma_t eps; x_u = the frozen teacher's Heun solution from sigma_t to sigma_u,
  one bin per step; pred = G-(G(x_t, t, s), s, sigma_min),
  target = G-(G-(x_u, u, s), s, sigma_min) with G- the target copy; the gradient reaches the
  student through the inner G, across the outer G-'s frozen weights (CTM, Kim et al. 2023).
  G- <- mu G- + (1 - mu) G after each step, mu = 0 as shipped: a stop-gradient copy.
- DSM loss: half the batch with sigma = rho-interpolation of xi ~ U[0, 0.7] (the noisy end),
  half with ln sigma ~ N(-1.2, 1.2^2); weight (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 on
  d(G(x_sigma, sigma, sigma_min), x0).
- Distance d: C1's pseudo-Huber applied to the *elementwise squared* error e,
  mean(sqrt(e^2 + delta^2) - delta), delta = 0.00054 sqrt(horizon * action_dim) (C1's automatic
  delta, 0.00683 for 16x10); this is C1's code as found, not the usual Huber on |error|.
- Total: 1 * CTM + 1 * DSM. AdamW, lr 1e-4, betas (0.95, 0.999), weight decay 1e-6; the
  observation encoder frozen, as C1 does.
- Sampling. 1 step: x = z ~ N(0, I), deliberately *not* scaled by sigma_max (C1's "reduced
  initial sample variance"), chunk = clamp(G(x, 80, sigma_min), -1, 1). N steps: chain bins,
  for N = 3 C1's [0, 27, 54] read as bins, as its README does (its code re-noises at sigma 27
  and 54 literally); after each jump the chunk is re-noised to the next chain bin's sigma with
  fresh noise, x = chunk + sigma eps', and jumps to sigma_min again, clamped.

Choices where the sources are silent or the project differs:
- How s enters F (two_time.py), and the c_noise units above.
- DSM sigmas from the log-normal half are clamped to [sigma_min, sigma_max], where the CTM
  scalings are defined (c_out < 0 below sigma_min).
- The chain bins for any N are k * (bins + 1) // N, the even partition that gives C1's
  [0, 27, 54] for N = 3 (C1 calls its times a heuristic).
- The initial noise scale is a setting (`initial_noise_scale`, 1 as in C1; sigma_max = 80 is
  the ODE's own), since it trades diversity for precision.
- A deliberate difference from C1's code: it computes both outer jumps G-(., s, sigma_min)
  under `torch.no_grad()`, which detaches `pred`, so its CTM term passes no gradient and its
  student learns from DSM alone. We let the gradient through, as CTM and the reference read it.
- Consequence of C1's settings, measured on the two-mode toy (tests/test_two_modes_methods.py):
  DSM pulls G(x, sigma_max, sigma_min) towards E[x0 | x] (the average of the modes) and the
  reduced initial variance collapses the jump's inputs, so CP-1 lands between the modes; the
  CTM term alone from sigma_max noise keeps them. The defaults stay C1's: this is the baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from onedp_control.errors import ConfigError
from onedp_control.policies.onedp import DenoisingPolicy
from onedp_control.policies.two_time import TwoTimeModel, two_time_output, update_target

METHOD = "cp"


@dataclass(frozen=True)
class ConsistencyConfig:
    sigma_min: float = 0.02
    sigma_max: float = 80.0
    rho: float = 7.0
    bins: int = 80
    teacher_steps: int = 1  # K: teacher Heun steps per target (C1's ode_steps_max)
    ctm_weight: float = 1.0  # alpha of Eq. 8
    dsm_weight: float = 1.0  # beta of Eq. 8
    dsm_noisy_share: float = 0.5  # share of the DSM batch drawn from the noisy end ...
    dsm_noisy_end: float = 0.7  # ... xi ~ U[0, this] on the rho-interpolation
    huber_scale: float = 0.00054  # delta = this * sqrt(horizon * action_dim); 0 gives MSE
    target_decay: float = 0.0  # mu of the target copy G-
    initial_noise_scale: float = 1.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    freeze_encoder: bool = True

    def validate(self, where: str) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"{where}: need 0 < sigma_min < sigma_max")
        if self.bins < 2 or self.teacher_steps < 1:
            raise ConfigError(f"{where}: bins must be >= 2 and teacher_steps >= 1")
        if min(self.ctm_weight, self.dsm_weight, self.huber_scale) < 0:
            raise ConfigError(f"{where}: loss weights and huber_scale must be >= 0")
        if not 0 <= self.dsm_noisy_share <= 1 or not 0 <= self.dsm_noisy_end <= 1:
            raise ConfigError(f"{where}: dsm_noisy_share and dsm_noisy_end must be in [0, 1]")
        if not 0 <= self.target_decay < 1:
            raise ConfigError(f"{where}: target_decay must be in [0, 1)")
        if self.initial_noise_scale <= 0 or self.lr <= 0:
            raise ConfigError(f"{where}: initial_noise_scale and lr must be > 0")


def rho_sigmas(config: ConsistencyConfig, fraction: torch.Tensor) -> torch.Tensor:
    """Karras' rho-interpolation: fraction 0 -> sigma_max, 1 -> sigma_min."""
    inv_rho = 1 / config.rho
    high, low = config.sigma_max**inv_rho, config.sigma_min**inv_rho
    return (high + fraction * (low - high)) ** config.rho


def bin_sigmas(config: ConsistencyConfig) -> torch.Tensor:
    """(bins + 1,) sigmas: bin 0 = sigma_max ... bin bins - 1 = sigma_min, bin bins = sigma_min."""
    grid = rho_sigmas(config, torch.arange(config.bins) / (config.bins - 1))
    return torch.cat([grid, grid[-1:]])


def chain_sigmas(config: ConsistencyConfig, steps: int) -> torch.Tensor:
    bins = [k * (config.bins + 1) // steps for k in range(steps)]
    return bin_sigmas(config)[bins]


def jump(
    student: TwoTimeModel,
    config: ConsistencyConfig,
    x: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_s: torch.Tensor,
    cond: torch.Tensor,
) -> torch.Tensor:
    """G(x, t, s): the student's estimate of the ODE solution at sigma_s from x at sigma_t."""
    sd = student.schedule.sigma_data
    t, s = sigma_t.reshape(-1, 1, 1), sigma_s.reshape(-1, 1, 1)
    c_skip = sd**2 / ((t - config.sigma_min) ** 2 + sd**2)
    c_out = (t - config.sigma_min) * sd / (t**2 + sd**2).sqrt()
    c_in = 1 / (t**2 + sd**2).sqrt()
    # Both times in the teacher's level units, c_noise = ln(sigma) / 4 (EDMSchedule.x0).
    raw = two_time_output(student, c_in * x, sigma_t.log() / 4, sigma_s.log() / 4, cond)
    g = c_skip * x + c_out * raw
    return (s / t) * x + (1 - s / t) * g


def generate(
    student: TwoTimeModel,
    config: ConsistencyConfig,
    cond: torch.Tensor,
    z: torch.Tensor,
    renoise: torch.Tensor | None = None,
) -> torch.Tensor:
    """CP-1 from noise z (B, T, D); CP-N with renoise (B, N - 1, T, D), the fresh noise of each
    re-noising. One network evaluation per jump; deterministic given its inputs, so that it
    exports as one graph."""
    # A plain int, also while tracing for export (the chain is unrolled into the graph).
    steps = 1 if renoise is None else 1 + int(renoise.shape[1])
    sigma_min = torch.full((z.shape[0],), config.sigma_min)
    x = config.initial_noise_scale * z
    for index, sigma in enumerate(chain_sigmas(config, steps)):
        if index:
            x = x + sigma * renoise[:, index - 1]
        level = torch.full((z.shape[0],), float(sigma))
        x = jump(student, config, x, level, sigma_min, cond).clamp(-1, 1)
    return x


def pseudo_huber(squared_error: torch.Tensor, delta: float) -> torch.Tensor:
    """C1's distance, elementwise (see the module docstring); delta = 0 is the squared error,
    returned as such since sqrt(e^2) has no gradient at e = 0 (the target equals the prediction
    where u = t)."""
    if delta == 0:
        return squared_error
    return torch.sqrt(squared_error**2 + delta**2) - delta


def teacher_ode(
    teacher: DenoisingPolicy,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    start: torch.Tensor,
    stop: torch.Tensor,
    cond,
    steps: int,
) -> torch.Tensor:
    """Heun's method from bin `start` to bin `stop` (per row, stop - start <= steps), one bin per
    step; rows whose step is empty (equal sigmas) are left as they are."""
    schedule = teacher.schedule
    for offset in range(steps):
        here = torch.minimum(start + offset, stop)
        sigma, sigma_next = sigmas[here], sigmas[torch.minimum(here + 1, stop)]
        slope = (x - schedule.x0(teacher.unet, x, sigma, cond)) / sigma.reshape(-1, 1, 1)
        step = (sigma_next - sigma).reshape(-1, 1, 1)
        guess = x + step * slope
        denoised = schedule.x0(teacher.unet, guess, sigma_next, cond)
        slope_next = (guess - denoised) / sigma_next.reshape(-1, 1, 1)
        stepped = x + step * 0.5 * (slope + slope_next)
        x = torch.where((sigma_next < sigma).reshape(-1, 1, 1), stepped, x)
    return x


class ConsistencyDistiller:
    """Holds the frozen EDM teacher, the student and its target copy G-, and performs one
    training iteration (CTM + DSM). The student is a TwoTimePolicy (or toy) built by the caller
    and warm-started from the teacher (two_time.warm_start)."""

    def __init__(
        self, teacher: DenoisingPolicy, student: TwoTimeModel, config: ConsistencyConfig
    ) -> None:
        if teacher.schedule.kind != "edm":
            raise ConfigError(
                f"Consistency Policy needs an EDM teacher, not {teacher.schedule.kind}"
            )
        self.config = config
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student.train().requires_grad_(True)
        if config.freeze_encoder:  # C1 freezes the observation encoder of the student
            for name, parameter in student.named_parameters():
                if name.startswith("encoder."):
                    parameter.requires_grad_(False)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad],
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        elements = student.config.horizon * student.config.action_dim
        self.delta = config.huber_scale * elements**0.5
        self.sigmas = bin_sigmas(config)

    def _bins(self, size: int, rng: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """t ~ U{0..bins-1}, s ~ U{t..bins}, u ~ U{t..s} capped at t + K."""
        bins = self.config.bins
        t = torch.randint(0, bins, (size,), generator=rng)
        s = t + (torch.rand(size, generator=rng) * (bins + 1 - t)).long()
        u = t + (torch.rand(size, generator=rng) * (s - t + 1)).long()
        return t, s, torch.minimum(u, t + self.config.teacher_steps)

    def _dsm_sigmas(self, size: int, rng: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        noisy = round(size * cfg.dsm_noisy_share)
        xi = torch.rand(noisy, generator=rng) * cfg.dsm_noisy_end
        log_normal = self.teacher.schedule.sample_levels(size - noisy, rng)
        sigma = torch.cat([rho_sigmas(cfg, xi), log_normal])
        return sigma.clamp(cfg.sigma_min, cfg.sigma_max)

    def step(self, batch: dict, rng: torch.Generator | None = None) -> dict[str, float]:
        cfg = self.config
        x0 = batch["action"]
        size = x0.shape[0]
        sigma_min = torch.full((size,), cfg.sigma_min)
        cond = self.student.encode(batch)
        if cfg.freeze_encoder:  # then teacher, student and target share the teacher's encoder
            cond_teacher = cond_target = cond.detach()
        else:
            with torch.no_grad():
                cond_teacher, cond_target = self.teacher.encode(batch), self.target.encode(batch)

        t, s, u = self._bins(size, rng)
        sigma_t, sigma_s, sigma_u = self.sigmas[t], self.sigmas[s], self.sigmas[u]
        x_t = x0 + sigma_t.reshape(-1, 1, 1) * torch.randn(x0.shape, generator=rng)
        with torch.no_grad():
            x_u = teacher_ode(self.teacher, x_t, self.sigmas, t, u, cond_teacher, cfg.teacher_steps)
            target = jump(
                self.target,
                cfg,
                jump(self.target, cfg, x_u, sigma_u, sigma_s, cond_target),
                sigma_s,
                sigma_min,
                cond_target,
            )
        inner = jump(self.student, cfg, x_t, sigma_t, sigma_s, cond)
        pred = jump(self.target, cfg, inner, sigma_s, sigma_min, cond_target)
        ctm = pseudo_huber((pred - target) ** 2, self.delta).mean()

        sigma = self._dsm_sigmas(size, rng)
        x_sigma = x0 + sigma.reshape(-1, 1, 1) * torch.randn(x0.shape, generator=rng)
        denoised = jump(self.student, cfg, x_sigma, sigma, sigma_min, cond)
        sd = self.student.schedule.sigma_data
        weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1)
        dsm = (weight * pseudo_huber((denoised - x0) ** 2, self.delta)).mean()

        loss = cfg.ctm_weight * ctm + cfg.dsm_weight * dsm
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        update_target(self.target, self.student, cfg.target_decay)
        return {"ctm": float(ctm.detach()), "dsm": float(dsm.detach())}

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
