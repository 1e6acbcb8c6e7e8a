"""The one sampler protocol: every sampler of the course runs through ``samplers.sample``, reports
every step as the same dict, samples where x_T lives, and leaves latents unclamped when asked.
Multistep consistency sampling is checked end to end on the exact consistency map of Gaussian data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers.autoencoder import Autoencoder
from helpers.consistency import MultistepConsistency, c_out, c_skip
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.latent import draw_images
from helpers.samplers import DDIM, DDPM, Trajectory, sample
from helpers.solvers import Solver, karras_sigmas

from conftest import network_output, random_unet

SAMPLERS = [DDPM(), DDIM(5), DDIM(5, eta=1.0), Solver("euler", 4), Solver("heun", 5), Solver("dpmpp-2m", 4), Solver("euler-a", 4), Solver("pc", 5), MultistepConsistency(3)]
KEYS = {"i", "steps", "t", "sigma", "x_t", "x0"}


@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
def test_every_sampler_reports_the_same_dict_at_each_of_its_steps(sampler):
    d = Diffusion.from_schedule("linear", 50)
    steps = []
    x = sample(random_unet(), d, (2, 1, 16, 16), sampler, cpu_generator(0), callback=steps.append, progress=False, clamp=False)
    assert [set(s) for s in steps] == [KEYS] * sampler.num_steps(d)
    assert [s["i"] for s in steps] == list(range(len(steps))) and {s["steps"] for s in steps} == {len(steps)}
    for s in steps:
        assert s["x_t"].shape == s["x0"].shape == x.shape
    # the noise levels each sampler visits, worked out here from its own definition
    if isinstance(sampler, (DDPM, DDIM)):
        want_t = sampler.timesteps(d.T)
        want_sigma = [float(((1 - d.alpha_bars[t]) / d.alpha_bars[t]).sqrt()) for t in want_t]
    else:
        lo, hi = float(d.sigmas[0]), float(d.sigmas[-1])
        if isinstance(sampler, Solver):
            want_sigma = karras_sigmas(sampler.steps, lo, hi, sampler.rho)[:-1].tolist()
        else:
            want_sigma = [hi, *karras_sigmas(sampler.nfe + 1, lo, hi)[1 : sampler.nfe].tolist()]
        log = d.sigmas.log()  # the fractional timestep: linear in log sigma between table entries
        want_t = [float(torch.from_numpy(np.interp(np.log([s]), log.numpy(), np.arange(d.T)))) for s in want_sigma]
    assert [s["sigma"] for s in steps] == pytest.approx(want_sigma, rel=1e-9)
    assert [s["t"] for s in steps] == pytest.approx(want_t, abs=1e-6)


@pytest.mark.parametrize("sampler", [DDIM(5), Solver("euler", 4), Solver("dpmpp-2m", 4), MultistepConsistency(2)], ids=str)
def test_the_last_reported_x0_is_the_sample_of_a_deterministic_sampler(sampler):
    """DDIM's last step lands on alpha_bar = 1, an ODE step to sigma = 0 lands on D, a consistency
    sample is f's last output: in each the sample is the x0 the last report carried."""
    d = Diffusion.from_schedule("linear", 50)
    traj = Trajectory()
    x = sample(random_unet(), d, (2, 1, 16, 16), sampler, cpu_generator(0), callback=traj, progress=False, clamp=False)
    torch.testing.assert_close(traj.x0[-1], x)
    assert len(traj.t) == len(traj.sigma) == sampler.num_steps(d)


def test_sampling_runs_where_x_T_lives_and_needs_no_weights():
    """The device comes from x_T; a model without parameters (an analytic denoiser) samples too."""
    d = Diffusion.from_schedule("linear", 20)

    def zero_eps(x_t, t):  # a plain function, not a module
        return torch.zeros_like(x_t)

    x_T = torch.randn(3, 1, 4, 4, generator=cpu_generator(0), device="cpu").to("meta")
    assert sample(zero_eps, d, x_T, DDIM(4), progress=False).device.type == "meta"
    x = sample(zero_eps, d, (3, 1, 4, 4), DDIM(4), cpu_generator(0), progress=False)
    assert x.device.type == "cpu" and x.shape == (3, 1, 4, 4)


class Latents(nn.Module):
    """A 'network' whose denoised guess is a constant far outside [-1, 1] (as latents can be)."""

    def __init__(self, d: Diffusion, value: float) -> None:
        super().__init__()
        self.d, self.value = d, value
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        return network_output(self.d, x_t.double(), int(t[0]), torch.full_like(x_t.double(), self.value)).float()


@pytest.mark.parametrize("sampler", [DDIM(4, clip_x0=False), Solver("heun", 5), MultistepConsistency(1), MultistepConsistency(2)], ids=str)
def test_latents_stay_unclamped_for_every_sampler_and_decode(sampler):
    """clamp=False reaches every sampler (a latent consistency model used to raise TypeError here)."""
    d = Diffusion.from_schedule("linear", 50)
    z = sample(Latents(d, 3.0), d, (2, 4, 4, 4), sampler, cpu_generator(0), progress=False, clamp=False)
    assert z.min() > 2.0, "latents beyond the pixel range survive"
    ae = Autoencoder(image_size=16, in_channels=1, ch=8, latent_channels=4)
    images = draw_images(Latents(d, 3.0), d, ae, 2, sampler, cpu_generator(0))
    assert images.shape == (2, 1, 16, 16)


MU, S = 0.3, 0.5  # data x_0 ~ N(MU, S^2) in every pixel


class ExactConsistencyNet(nn.Module):
    """An eps-network whose ``ConsistencyFunction`` is the exact consistency map of N(MU, S^2) data.

    Along a probability-flow ODE path of Gaussian data, x_sigma - MU scales with sqrt(S^2 + sigma^2),
    so the path's point at sigma_min is f*(x, sigma) = MU + sqrt(S^2 + sigma_min^2) / sqrt(S^2 + sigma^2) (x - MU).
    ConsistencyFunction computes f = c_skip x + c_out F with F = (D - c_skip^0 x) / c_out^0 and
    D = x - sigma eps_hat; this net returns the eps_hat that makes f = f*. Valid at the table's
    sigmas (the timestep it is given is exact there)."""

    def __init__(self, d: Diffusion) -> None:
        super().__init__()
        self.d = d
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        t = int(t[0])
        sigma, sigma_min = float(self.d.sigmas[t]), float(self.d.sigmas[0])
        x = x_t.double() * math.sqrt(1 + sigma**2)
        f = MU + math.sqrt(S**2 + sigma_min**2) / math.sqrt(S**2 + sigma**2) * (x - MU)
        denoised = c_skip(sigma, 0.0) * x + c_out(sigma, 0.0) * (f - c_skip(sigma, sigma_min) * x) / c_out(sigma, sigma_min)
        return ((x - denoised) / sigma).float()


def test_two_step_consistency_sampling_reinjects_noise_to_the_right_level():
    """From N(0, I), f at sigma_max gives N(MU, S^2 + sigma_min^2); noise of variance tau^2 - sigma_min^2
    brings it to the marginal at tau, N(MU, S^2 + tau^2), and f maps that back to N(MU, S^2 + sigma_min^2).
    Without the fresh noise (or with the wrong amount) the second step shrinks the spread by
    sqrt((S^2 + sigma_min^2) / (S^2 + tau^2)) instead."""
    d = Diffusion.from_schedule("linear", 1000)
    tau = float(d.sigmas[500])
    n = 20_000
    x = sample(ExactConsistencyNet(d), d, (n, 1, 2, 2), MultistepConsistency(2, sigmas=(tau,)), cpu_generator(0), progress=False, clamp=False).double()
    want_std = math.sqrt(S**2 + float(d.sigmas[0]) ** 2)
    # standard errors with 80,000 values: mean 0.5 / 283 = 0.0018, std 0.25%; the start's
    # N(0, 1 + sigma_max^2) instead of N(MU, S^2 + sigma_max^2) moves the mean by MU S / sigma_max = 0.001
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(want_std, rel=0.02)
