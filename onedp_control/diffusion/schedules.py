"""Noise schedules and samplers, shared by every method (teachers, OneDP, and the rivals).

A schedule wraps a raw network `net(x, level, cond)` into a denoiser and owns everything that
depends on the parameterisation:

- `DDPMSchedule`: discrete time, K = 100 steps, squared-cosine betas, epsilon prediction,
  loss weight lambda(k) = 1; the network's level input is the timestep k. Samplers: ancestral
  DDPM (all K steps) and DDIM (eta = 0, any number of steps).
- `EDMSchedule`: continuous sigma, Karras et al. 2022 preconditioning with sigma_d = 0.5,
  x0 prediction, loss weight (sigma^2 + sigma_d^2) / (sigma * sigma_d)^2, log-normal training
  sigmas; the network's level input is c_noise = ln(sigma) / 4. Samplers: Heun's second-order
  method on the Karras sigma grid (2N - 1 network evaluations for N steps), deterministic, or
  stochastic with churn (Karras et al. 2022, Algorithm 2).
- `FlowSchedule`: conditional flow matching on the straight path (Lipman et al. 2023; rectified
  flow, Liu et al. 2023), velocity prediction, uniform training times; the network's level
  input is 100 t. Sampler: Euler with k steps (k network evaluations).

All expose the forward process x_k = alpha_k x0 + sigma_k eps (EDM: alpha = 1; flow:
alpha = t, sigma = 1 - t), `eps(...)` (the noise the denoiser believes was added, which gives
the score -eps / sigma_k, Eq. 1 of the OneDP paper) and `x0(...)`, so distillation methods are
written once for all.

Everything works in the normalised action space, where the data lies in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# net(x, level, cond) -> raw network output, x: (B, T, D), level: (B,), cond: anything.
Network = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class DDPMSchedule:
    steps: int = 100
    clip_sample: bool = True  # clip the x0 estimate to [-1, 1] while sampling, as DP does

    def __post_init__(self) -> None:
        # Squared-cosine betas (Nichol & Dhariwal 2021), capped at 0.999, as Diffusion Policy.
        s = 0.008
        t = torch.arange(self.steps + 1, dtype=torch.float64) / self.steps
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=0.999)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        object.__setattr__(self, "betas", betas.float())

    kind = "ddpm"

    # ------------------------------------------------------------------ forward process
    def alpha_sigma(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alphas_cumprod.to(k.device)[k.long()]
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def diffuse(
        self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = self.alpha_sigma(k)
        return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise, sigma

    def sample_levels(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        low: int = 0,
        high: int | None = None,
    ) -> torch.Tensor:
        high = self.steps - 1 if high is None else high
        return torch.randint(low, high + 1, (batch,), generator=generator)

    # ------------------------------------------------------------------ denoiser
    def eps(self, net: Network, x: torch.Tensor, k: torch.Tensor, cond) -> torch.Tensor:
        return net(x, k.float(), cond)

    def x0(self, net: Network, x: torch.Tensor, k: torch.Tensor, cond) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(k)
        return (x - _expand(sigma, x) * self.eps(net, x, k, cond)) / _expand(alpha, x)

    def loss(self, net: Network, x0: torch.Tensor, cond, generator=None) -> torch.Tensor:
        """Denoising score matching, lambda(k) = 1."""
        k = self.sample_levels(x0.shape[0], generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        xk, _ = self.diffuse(x0, k, noise)
        return torch.mean((self.eps(net, xk, k, cond) - noise) ** 2)

    # ------------------------------------------------------------------ samplers
    def sample_ddpm(self, net: Network, noise: torch.Tensor, cond, generator=None) -> torch.Tensor:
        """Ancestral sampling through all K steps (K network evaluations)."""
        x = noise
        for k in range(self.steps - 1, -1, -1):
            level = torch.full((x.shape[0],), k, dtype=torch.long)
            alpha_bar = self.alphas_cumprod[k]
            alpha_bar_prev = self.alphas_cumprod[k - 1] if k > 0 else torch.tensor(1.0)
            beta = self.betas[k]
            x0 = self.x0(net, x, level, cond)
            if self.clip_sample:
                x0 = x0.clamp(-1, 1)
            # Posterior q(x_{k-1} | x_k, x0) of Ho et al. 2020, Eq. 7.
            mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 + (
                (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
            ) * x
            if k > 0:
                variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
                x = mean + variance.clamp(min=1e-20).sqrt() * torch.randn(
                    x.shape, generator=generator
                ).to(x)
            else:
                x = mean
        return x

    def ddim_timesteps(self, count: int) -> list[int]:
        """`count` timesteps evenly spaced from K-1 down ("trailing" spacing, Lin et al. 2024),
        so that even one step starts from the noisiest level rather than from k = 0."""
        if not 1 <= count <= self.steps:
            raise ValueError(f"DDIM steps must be in [1, {self.steps}], got {count}")
        return [round(self.steps - index * self.steps / count) - 1 for index in range(count)]

    def sample_ddim(self, net: Network, noise: torch.Tensor, cond, count: int) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) with `count` network evaluations."""
        x = noise
        timesteps = self.ddim_timesteps(count)
        for index, k in enumerate(timesteps):
            level = torch.full((x.shape[0],), k, dtype=torch.long)
            eps = self.eps(net, x, level, cond)
            alpha_bar = self.alphas_cumprod[k]
            x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
            if self.clip_sample:
                x0 = x0.clamp(-1, 1)
                eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
            prev = timesteps[index + 1] if index + 1 < len(timesteps) else None
            alpha_bar_prev = self.alphas_cumprod[prev] if prev is not None else torch.tensor(1.0)
            x = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps
        return x


# The noise levels at which the stochastic Heun sampler churns (Karras et al. 2022 use
# S_tmin = 0.05, S_tmax = 50 for ImageNet-64).
CHURN_SIGMA_MIN = 0.05
CHURN_SIGMA_MAX = 50.0


@dataclass(frozen=True)
class EDMSchedule:
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    kind = "edm"

    # ------------------------------------------------------------------ forward process
    def alpha_sigma(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(sigma), sigma

    def diffuse(
        self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x0 + _expand(sigma, x0) * noise, sigma

    def sample_levels(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Log-normal training sigmas."""
        return torch.exp(self.p_mean + self.p_std * torch.randn(batch, generator=generator))

    # ------------------------------------------------------------------ denoiser
    def x0(self, net: Network, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        sd = self.sigma_data
        s = _expand(sigma, x)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * net(c_in * x, sigma.log() / 4, cond)

    def eps(self, net: Network, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        return (x - self.x0(net, x, sigma, cond)) / _expand(sigma, x)

    def loss(self, net: Network, x0: torch.Tensor, cond, generator=None) -> torch.Tensor:
        sigma = self.sample_levels(x0.shape[0], generator).to(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        xk, _ = self.diffuse(x0, sigma, noise)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return torch.mean(_expand(weight, x0) * (self.x0(net, xk, sigma, cond) - x0) ** 2)

    # ------------------------------------------------------------------ sampler
    def karras_sigmas(self, count: int) -> torch.Tensor:
        """`count` sigmas from sigma_max to sigma_min, then 0."""
        if count < 1:
            raise ValueError(f"EDM steps must be >= 1, got {count}")
        ramp = torch.linspace(0, 1, count) if count > 1 else torch.zeros(1)
        inv_rho = 1 / self.rho
        sigmas = (
            self.sigma_max**inv_rho + ramp * (self.sigma_min**inv_rho - self.sigma_max**inv_rho)
        ) ** self.rho
        return torch.cat([sigmas, torch.zeros(1)])

    def sample_heun(
        self,
        net: Network,
        noise: torch.Tensor,
        cond,
        count: int,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Heun's 2nd-order solver: 2 * count - 1 network evaluations. Deterministic (the ODE),
        or `stochastic`: Algorithm 2 of Karras et al. 2022, which before each step raises the
        noise level by the factor 1 + gamma and adds the matching fresh noise: fresh noise on
        the way, as in ancestral DDPM, where our DDPM teacher's deterministic DDIM lands between
        modes and its DDPM does not. gamma = sqrt(2) - 1 (the most Algorithm 2 allows) for sigma
        in [CHURN_SIGMA_MIN, CHURN_SIGMA_MAX], S_noise = 1."""
        sigmas = self.karras_sigmas(count)
        x = noise * sigmas[0]
        for index in range(count):
            sigma, sigma_next = sigmas[index], sigmas[index + 1]
            if stochastic and CHURN_SIGMA_MIN <= sigma <= CHURN_SIGMA_MAX:
                raised = sigma * math.sqrt(2)
                fresh = torch.randn(x.shape, generator=generator).to(x)
                x = x + (raised**2 - sigma**2).sqrt() * fresh
                sigma = raised
            level = torch.full((x.shape[0],), float(sigma))
            slope = (x - self.x0(net, x, level, cond)) / sigma
            x_next = x + (sigma_next - sigma) * slope
            if sigma_next > 0:
                level_next = torch.full((x.shape[0],), float(sigma_next))
                slope_next = (x_next - self.x0(net, x_next, level_next, cond)) / sigma_next
                x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
            x = x_next
        return x.clamp(-1, 1)


@dataclass(frozen=True)
class FlowSchedule:
    """Straight-path flow matching with t = 0 at the noise and t = 1 at the data (the
    convention of Lipman et al. 2023, pi0 and the One-Step Flow Policy, so that OFP's equations
    read as published): x_t = t x0 + (1 - t) eps, velocity target dx_t/dt = x0 - eps.

    In the shared notation alpha_t = t and sigma_t = 1 - t, and a velocity v gives the denoiser's
    x0 = x_t + (1 - t) v and eps = x_t - t v. The network sees the level 100 t, the range of
    the DDPM timesteps the U-Net's sinusoidal step embedding is sized for (a choice: the flow
    papers feed t or 1000 t)."""

    level_scale: float = 100.0

    kind = "flow"

    # ------------------------------------------------------------------ forward process
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t, 1 - t

    def diffuse(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = self.alpha_sigma(t)
        return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise, sigma

    def sample_levels(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training times, as conditional flow matching (Lipman et al. 2023)."""
        return torch.rand(batch, generator=generator)

    # ------------------------------------------------------------------ denoiser
    def velocity(self, net: Network, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return net(x, t * self.level_scale, cond)

    def x0(self, net: Network, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return x + _expand(1 - t, x) * self.velocity(net, x, t, cond)

    def eps(self, net: Network, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return x - _expand(t, x) * self.velocity(net, x, t, cond)

    def loss(self, net: Network, x0: torch.Tensor, cond, generator=None) -> torch.Tensor:
        """Conditional flow matching: || v(x_t, t) - (x0 - eps) ||^2, uniformly weighted."""
        t = self.sample_levels(x0.shape[0], generator).to(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        xt, _ = self.diffuse(x0, t, noise)
        return torch.mean((self.velocity(net, xt, t, cond) - (x0 - noise)) ** 2)

    # ------------------------------------------------------------------ sampler
    def sample_euler(self, net: Network, noise: torch.Tensor, cond, count: int) -> torch.Tensor:
        """Euler's method from t = 0 to 1 in `count` equal steps (`count` network evaluations);
        the chunk is clamped to the data range at the end, as the Heun sampler does."""
        if count < 1:
            raise ValueError(f"Euler steps must be >= 1, got {count}")
        x = noise
        for index in range(count):
            t = torch.full((x.shape[0],), index / count, device=x.device)
            x = x + self.velocity(net, x, t, cond) / count
        return x.clamp(-1, 1)


Schedule = DDPMSchedule | EDMSchedule | FlowSchedule


def make_schedule(kind: str) -> Schedule:
    if kind == "ddpm":
        return DDPMSchedule()
    if kind == "edm":
        return EDMSchedule()
    if kind == "flow":
        return FlowSchedule()
    raise ValueError(f"unknown noise schedule '{kind}' (known: ddpm, edm, flow)")
