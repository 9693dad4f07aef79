"""Noise schedules and samplers, checked against an oracle denoiser of a known distribution."""

import torch

from onedp_control.diffusion.schedules import DDPMSchedule, EDMSchedule

X0 = torch.tensor([[[0.3, -0.5, 0.8]]])  # a point mass: the exact denoiser is known


def oracle_eps(schedule: DDPMSchedule, calls: list):
    def net(x, level, cond):
        calls.append(1)
        alpha, sigma = schedule.alpha_sigma(level.long())
        return (x - alpha.reshape(-1, 1, 1) * X0) / sigma.reshape(-1, 1, 1)

    return net


def oracle_edm(schedule: EDMSchedule, calls: list):
    """A raw network F whose preconditioned output D(x; sigma) is exactly X0."""

    def net(x_in, c_noise, cond):
        calls.append(1)
        sigma = torch.exp(4 * c_noise).reshape(-1, 1, 1)
        sd = schedule.sigma_data
        x = x_in * (sigma**2 + sd**2).sqrt()
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        return (X0 - c_skip * x) / c_out

    return net


def test_ddpm_forward_process_is_variance_preserving():
    schedule = DDPMSchedule()
    alpha, sigma = schedule.alpha_sigma(torch.arange(100))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(100))
    assert torch.all(alpha[1:] < alpha[:-1])  # noisier with every step
    assert float(alpha[-1]) < 1e-3 and float(alpha[0]) > 0.99


def test_ddim_timesteps_cover_the_chain():
    schedule = DDPMSchedule()
    assert schedule.ddim_timesteps(100) == list(range(99, -1, -1))
    assert schedule.ddim_timesteps(10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert schedule.ddim_timesteps(1) == [99]


def test_samplers_recover_a_point_mass_with_the_oracle_and_count_nfe():
    schedule = DDPMSchedule()
    noise = torch.randn(4, 1, 3, generator=torch.Generator().manual_seed(0))
    for count in (100, 10):
        calls = []
        out = schedule.sample_ddim(oracle_eps(schedule, calls), noise, None, count)
        torch.testing.assert_close(out, X0.expand(4, 1, 3), atol=1e-4, rtol=0)
        assert len(calls) == count
    calls = []
    out = schedule.sample_ddpm(oracle_eps(schedule, calls), noise, None)
    torch.testing.assert_close(out, X0.expand(4, 1, 3), atol=1e-4, rtol=0)
    assert len(calls) == 100


def test_edm_sigma_grid_and_heun_sampler():
    schedule = EDMSchedule()
    sigmas = schedule.karras_sigmas(10)
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0.0
    torch.testing.assert_close(sigmas[0], torch.tensor(80.0))
    torch.testing.assert_close(sigmas[-2], torch.tensor(0.002))
    assert torch.all(sigmas[1:] < sigmas[:-1])
    calls = []
    noise = torch.randn(3, 1, 3, generator=torch.Generator().manual_seed(2))
    out = schedule.sample_heun(oracle_edm(schedule, calls), noise, None, 10)
    torch.testing.assert_close(out, X0.expand(3, 1, 3), atol=1e-4, rtol=0)
    assert len(calls) == 2 * 10 - 1


def test_losses_are_zero_for_the_oracle():
    ddpm, edm = DDPMSchedule(), EDMSchedule()
    generator = torch.Generator().manual_seed(3)
    assert float(ddpm.loss(oracle_eps(ddpm, []), X0.expand(8, 1, 3), None, generator)) < 1e-8
    assert float(edm.loss(oracle_edm(edm, []), X0.expand(8, 1, 3), None, generator)) < 1e-8


def test_stochastic_heun_recovers_a_point_mass_and_draws_fresh_noise():
    schedule = EDMSchedule()
    noise = torch.randn(3, 1, 3, generator=torch.Generator().manual_seed(2))
    calls = []
    out = schedule.sample_heun(
        oracle_edm(schedule, calls), noise, None, 10, True, torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(out, X0.expand(3, 1, 3), atol=1e-4, rtol=0)
    assert len(calls) == 2 * 10 - 1

    def recorded(net):
        """The noisy inputs the sampler shows the denoiser."""
        seen = []

        def wrapped(x_in, c_noise, cond):
            seen.append(x_in.clone())
            return net(x_in, c_noise, cond)

        return wrapped, seen

    runs = []
    for stochastic, seed in ((False, 0), (True, 5), (True, 5), (True, 6)):
        net, seen = recorded(oracle_edm(schedule, []))
        schedule.sample_heun(net, noise, None, 10, stochastic, torch.Generator().manual_seed(seed))
        runs.append(torch.stack(seen))
    ode, churned, same_seed, other_seed = runs
    assert not torch.allclose(ode, churned)  # churn adds noise on the way
    torch.testing.assert_close(churned, same_seed)  # drawn from the generator given
    assert not torch.allclose(churned, other_seed)
