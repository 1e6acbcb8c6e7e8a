"""The samplers end to end against the exact denoiser of Gaussian data.

For data x_0 ~ N(mu, s^2) (independent pixels) and x_t = a x_0 + sigma eps, with a = sqrt(alpha_bar_t)
and sigma = sqrt(1 - alpha_bar_t), the marginal is x_t ~ N(a mu, a^2 s^2 + sigma^2) and the
posterior mean is

    E[x_0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) * (x_t - a mu),

the best any network can do under the squared loss. Given it, a correct sampler returns samples
with the data's mean and (up to the discretisation error of its grid) its standard deviation; a
wrong coefficient, variance, grid or parameterisation moves them.
"""

import pytest
import torch
from torch import nn

from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.samplers import DDIM, DDPM, SPACINGS, ddim_invert, ddim_step, ddpm_step, sample

from conftest import network_output

T = 1000
MU = torch.tensor([-0.2, 0.0, 0.2, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
S = torch.tensor([0.3, 0.35, 0.25, 0.15], dtype=torch.float64).view(1, 1, 2, 2)  # >= 2.6 s inside +-1: clipping is rare
N = 20_000  # standard errors: a mean 0.35 / sqrt(N) = 0.0025, a std 1 / sqrt(2N) = 0.5% of it
MEAN_TOL = 0.01


class GaussianDenoiser(nn.Module):
    """The exact posterior-mean network for N(MU, S^2) data."""

    def __init__(self, d: Diffusion) -> None:
        super().__init__()
        self.d = d
        self.anchor = nn.Parameter(torch.zeros(()))  # samplers find the device through a parameter

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t, x = int(t[0]), x_t.double()
        a = self.d.alpha_bars[t].sqrt()
        x0 = MU + a * S**2 / (a**2 * S**2 + 1 - a**2) * (x - a * MU)
        return network_output(self.d, x, t, x0).float()


def draw_moments(prediction: str, sampler: DDPM | DDIM) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (mean, std) of N samples, always from the same noise."""
    d = Diffusion.from_schedule("linear", T, prediction=prediction)
    x = sample(GaussianDenoiser(d), d, (N, 1, 2, 2), sampler, cpu_generator(0), progress=False)
    return x.double().mean(0, keepdim=True), x.double().std(0, keepdim=True)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_recovers_gaussian_data_between_its_two_variances(prediction):
    """Ho et al. (2020, section 3.2): beta_tilde_t and beta_t bound the reverse variance from below
    and above. From the same noise, fixed-small gives a slightly narrower, fixed-large a slightly
    wider distribution; both have the data's mean."""
    mean_small, std_small = draw_moments(prediction, DDPM("fixed_small"))
    mean_large, std_large = draw_moments(prediction, DDPM("fixed_large"))
    for mean in (mean_small, mean_large):
        assert (mean - MU).abs().max() < MEAN_TOL
    assert (std_small < std_large).all()
    assert ((std_small / S) - 1).abs().max() < 0.04
    assert ((std_large / S) - 1).abs().max() < 0.04


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_on_the_full_grid_recovers_gaussian_data(prediction, eta):
    """All T steps: eta = 1 is DDPM with fixed-small variance, eta = 0 the deterministic sampler."""
    mean, std = draw_moments(prediction, DDIM(T, eta))
    assert (mean - MU).abs().max() < MEAN_TOL
    assert ((std / S) - 1).abs().max() < 0.02


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_in_100_steps_keeps_the_mean_and_narrows_the_spread_a_little(prediction, spacing, eta):
    """On a 100-step grid the mean stays exact and the spread falls short of the data's by at most
    20% (the posterior mean is a smoothed image: each long step loses part of the variance that
    the skipped steps would have restored; about 4-16% here, most for the narrowest pixel)."""
    mean, std = draw_moments(prediction, DDIM(100, eta, spacing))
    assert (mean - MU).abs().max() < MEAN_TOL
    assert (std < S * 1.01).all() and (std > 0.8 * S).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_clipping_acts_as_if_the_network_had_predicted_the_clipped_x0(prediction):
    d = Diffusion.from_schedule("linear", T, prediction=prediction)
    torch.manual_seed(0)
    x_t, noise = torch.randn(2, 4, 1, 8, 8).double()
    x0 = 3 * torch.randn(4, 1, 8, 8).double()  # mostly outside [-1, 1]
    t, t_prev = 500, 400
    wild, tamed = network_output(d, x_t, t, x0), network_output(d, x_t, t, x0.clamp(-1, 1))
    for variance in ("fixed_small", "fixed_large"):
        clipped = ddpm_step(d, wild, x_t, t, noise, clip_x0=True, variance=variance)[0]
        assert torch.allclose(clipped, ddpm_step(d, tamed, x_t, t, noise, clip_x0=False, variance=variance)[0])
        assert not torch.allclose(clipped, ddpm_step(d, wild, x_t, t, noise, clip_x0=False, variance=variance)[0])
    for eta in (0.0, 1.0):
        clipped = ddim_step(d, wild, x_t, t, t_prev, eta, noise, clip_x0=True)[0]
        assert torch.allclose(clipped, ddim_step(d, tamed, x_t, t, t_prev, eta, noise, clip_x0=False)[0])
        assert not torch.allclose(clipped, ddim_step(d, wild, x_t, t, t_prev, eta, noise, clip_x0=False)[0])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_inversion_maps_data_to_the_prior_and_decodes_back(prediction):
    """Decoding the inverted latents on the same grid returns the images, closer as the grid gets
    finer; on the full grid the latents of Gaussian data have the prior's moments (the first step
    of a coarse grid, taken with the network at t = 0, undershoots: 10 steps give std 0.6)."""
    d = Diffusion.from_schedule("linear", T, prediction=prediction)
    model = GaussianDenoiser(d)
    x0 = MU + S * torch.randn(4000, 1, 2, 2, generator=cpu_generator(0), dtype=torch.float64)
    errors = []
    for steps in (10, 50, 250, T):
        x_T = ddim_invert(model, d, x0.float(), steps, progress=False).double()
        back = sample(model, d, x_T, DDIM(steps, clip_x0=False), progress=False)
        errors.append((back.double() - x0).abs().mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 5e-3, errors
    assert x_T.mean(0).abs().max() < 0.05 and (x_T.std(0) - 1).abs().max() < 0.03
