"""The 2-D Gaussian mixture of notebook 09: its score is the gradient of its log density, its
denoiser obeys Tweedie's formula, and it reduces to the single Gaussian's closed form."""

import math

import pytest
import torch

from helpers.device import cpu_generator
from helpers.solvers import karras_sigmas, sample_heun
from helpers.toy import GaussianMixture

MIX = GaussianMixture(torch.tensor([[-1.0, 0.5], [2.0, -1.0], [0.0, 2.5]]), torch.tensor([0.3, 0.6, 0.2]), torch.tensor([1.0, 2.0, 0.5]))


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_is_the_gradient_of_the_log_density(sigma):
    x = torch.randn(64, 2, generator=cpu_generator(0), dtype=torch.float64).mul(2).requires_grad_()
    (grad,) = torch.autograd.grad(MIX.log_prob(x, sigma).sum(), x)
    assert torch.allclose(MIX.score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_denoiser_obeys_tweedie(sigma):
    """E[x_0 | x] computed from the components' posterior means equals x + sigma^2 grad log p(x)."""
    x = torch.randn(64, 2, generator=cpu_generator(1), dtype=torch.float64).mul(2)
    assert torch.allclose(MIX(x, sigma), x + sigma**2 * MIX.score(x, sigma), rtol=1e-9, atol=1e-12)


def test_density_integrates_to_one_and_matches_samples():
    sigma, h = 0.4, 0.05
    grid = torch.arange(-6, 6, h, dtype=torch.float64)
    xy = torch.cartesian_prod(grid, grid)
    p = MIX.log_prob(xy, sigma).exp()
    assert float(p.sum() * h * h) == pytest.approx(1.0, abs=1e-4)
    x = MIX.sample(200_000, cpu_generator(2)) + sigma * torch.randn(200_000, 2, generator=cpu_generator(3), dtype=torch.float64)
    mean = (p[:, None] * xy).sum(0) * h * h
    assert torch.allclose(x.mean(0), mean, atol=0.01)  # the sampler draws from the density it scores


def test_one_component_is_the_gaussian_closed_form():
    mu, s, sigma = torch.tensor([[0.5, -0.3]]), 0.7, 1.3
    one = GaussianMixture(mu, torch.tensor([s]))
    x = torch.randn(16, 2, generator=cpu_generator(4), dtype=torch.float64)
    assert torch.allclose(one(x, sigma), mu + s**2 / (s**2 + sigma**2) * (x - mu), atol=1e-12)
    log_p = -((x - mu) ** 2).sum(1) / (2 * (s**2 + sigma**2)) - math.log(2 * math.pi * (s**2 + sigma**2))
    assert torch.allclose(one.log_prob(x, sigma), log_p.double(), atol=1e-12)


def test_the_probability_flow_ode_carries_the_prior_to_the_mixture():
    """Heun on the exact denoiser, from N(0, sigma_max^2 I): the samples land in the components in their weights."""
    ring = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    sigma_max = 40.0
    x = sigma_max * torch.randn(20_000, 2, generator=cpu_generator(5), dtype=torch.float64)
    x = sample_heun(ring, x, karras_sigmas(40, 0.002, sigma_max))
    nearest = torch.cdist(x, ring.means).argmin(1)
    assert torch.bincount(nearest, minlength=4).double().div(len(x)).sub(0.25).abs().max() < 0.02
    assert (x - ring.means[nearest]).pow(2).sum(1).mean().sqrt() == pytest.approx(0.2 * math.sqrt(2), rel=0.05)


def test_bad_components_are_refused():
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"means \[K, D\]"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3))
