"""Importance sampling of t (helpers.timesteps): the same objective in expectation, the variance-optimal
p(t) ∝ sqrt(E[L_t^2]) it converges to, and its place in the Trainer (resume, several processes)."""

from __future__ import annotations

import pytest
import torch

from helpers.timesteps import ImportanceTimesteps

T = 100


def loss_profile(t: torch.Tensor) -> torch.Tensor:
    """A made-up per-timestep loss, large at small t like a min-SNR eps loss's, never zero."""
    return 0.02 + torch.exp(-t.double() / 15)


def trained_sampler(bins: int = 7, steps: int = 400, seed: int = 0) -> ImportanceTimesteps:
    """A sampler that has seen ``steps`` batches whose losses are loss_profile(t) times unit-mean noise."""
    g = torch.Generator().manual_seed(seed)
    sampler = ImportanceTimesteps(T, bins=bins, warmup=5)
    for _ in range(steps):
        t, _ = sampler.sample(64, generator=g)
        sampler.update(t, loss_profile(t) * torch.empty(64, dtype=torch.float64).exponential_(generator=g))
    return sampler


def test_the_weighted_loss_has_the_uniform_expectation():
    """E_p[w(t) L(t)] = (1/T) sum_t L(t): the objective the model trains towards is unchanged."""
    sampler = trained_sampler()
    p = sampler.probabilities()
    assert p.max() / p.min() > 3, "the sampler should have moved far from uniform"
    t, w = sampler.sample(400_000, generator=torch.Generator().manual_seed(1))
    terms = w.double() * loss_profile(t)
    want = float(loss_profile(torch.arange(T)).mean())
    assert abs(float(terms.mean()) - want) < 4 * float(terms.std()) / len(terms) ** 0.5


def test_p_follows_the_root_mean_square_loss_and_lowers_the_variance():
    """After many batches, p(bin) = 0.9 sqrt(E[L^2]) / sum + 0.1 / bins (Nichol & Dhariwal 2021, §3.3),
    and the estimator's variance is below that of uniform t (computed exactly over t)."""
    sampler = trained_sampler(steps=1500)
    edges, t = sampler.edges, torch.arange(T)
    bin_of_t = torch.searchsorted(edges, t, right=True) - 1
    # E[L^2] with unit-mean exponential noise (E[n^2] = 2), averaged over each bin's t
    rms = torch.stack([(2 * loss_profile(t[bin_of_t == k]) ** 2).mean() for k in range(sampler.bins)]).sqrt()
    want = 0.9 * rms / rms.sum() + 0.1 / sampler.bins
    assert torch.allclose(sampler.probabilities().double(), want, rtol=0.15)
    # exact second moments of w(t) L(t) under p and under uniform t (same mean, so compare E[.^2])
    p_t = sampler.probabilities().double()[bin_of_t] / sampler.width.double()[bin_of_t]
    second_importance = float((p_t * (loss_profile(t) / (T * p_t)) ** 2).sum())
    second_uniform = float((loss_profile(t) ** 2).mean())
    assert second_importance < 0.8 * second_uniform


def test_p_is_uniform_until_every_bin_has_its_warmup_samples():
    sampler = ImportanceTimesteps(T, bins=4, warmup=3)
    sampler.update(torch.tensor([0, 1, 2, 30, 31, 32, 60, 61, 62, 90, 91]), torch.arange(1.0, 12.0))
    assert torch.equal(sampler.probabilities(), torch.full((4,), 0.25))
    sampler.update(torch.tensor([92]), torch.tensor([5.0]))
    assert not torch.allclose(sampler.probabilities(), torch.full((4,), 0.25))


def test_every_timestep_can_be_drawn_and_bins_cover_t_once():
    sampler = ImportanceTimesteps(T, bins=7)  # 7 does not divide 100: widths 14 or 15
    assert int(sampler.width.sum()) == T and sampler.edges[0] == 0 and sampler.edges[-1] == T
    t, w = sampler.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(T))
    assert torch.allclose(w, torch.ones_like(w) * 1.0, atol=0.08)  # uniform p: weights width * bins / T


@pytest.mark.parametrize("bins,uniform", [(0, 0.1), (T + 1, 0.1), (10, 0.0), (10, 1.5)])
def test_bad_settings_are_refused(bins, uniform):
    with pytest.raises(ValueError):
        ImportanceTimesteps(T, bins=bins, uniform=uniform)
