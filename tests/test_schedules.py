import math

import pytest
import torch

from helpers.diffusion import Diffusion
from helpers.schedules import make_betas


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_are_float64_in_unit_interval_with_decreasing_alpha_bar(name):
    betas = make_betas(name, 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert bool(((betas > 0) & (betas < 1)).all())
    ab = torch.cumprod(1 - betas, 0)
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must fall strictly"
    assert ab[0] > 0.99 and ab[-1] < 1e-3  # starts near the data, ends near pure noise


def test_linear_schedule_is_ddpm_at_t_1000():
    betas = make_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert torch.allclose(betas[1:] - betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_linear_schedule_scales_with_T_so_the_end_stays_noise():
    ab_end = {T: torch.cumprod(1 - make_betas("linear", T), 0)[-1].item() for T in (100, 1000)}
    assert ab_end[100] < 1e-4 and ab_end[1000] < 1e-4


def test_cosine_schedule_matches_its_defining_formula():
    T, s = 1000, 0.008
    ab = torch.cumprod(1 - make_betas("cosine", T), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    uncapped = make_betas("cosine", T) < 0.999
    assert torch.allclose(ab[uncapped], expected[uncapped], rtol=1e-10, atol=1e-14)
    assert make_betas("cosine", T).max().item() == pytest.approx(0.999)  # the cap bites at the end


def test_sigmoid_schedule_matches_its_defining_formula():
    T = 1000
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([(sig(3) - sig((t + 1) / T * 6 - 3)) / (sig(3) - sig(-3)) for t in range(T)], dtype=torch.float64)
    ab = torch.cumprod(1 - make_betas("sigmoid", T), 0)
    ok = make_betas("sigmoid", T) < 0.999
    assert torch.allclose(ab[ok], expected[ok], rtol=1e-9, atol=1e-12)


def test_unknown_schedule_and_bad_T_are_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'; choose linear, cosine, sigmoid"):
        make_betas("cosin")
    with pytest.raises(ValueError, match="T must be an integer"):
        make_betas("linear", 1)


def test_linear_schedule_and_posterior_variance_against_plain_python():
    """DDPM's schedule (Ho et al. 2020, section 4: beta from 1e-4 to 0.02 in T = 1000 linear steps)
    and beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (their eq. 7), computed
    with Python floats, one step at a time."""
    T = 1000
    betas = [1e-4 + (0.02 - 1e-4) * t / (T - 1) for t in range(T)]
    alpha_bars, running = [], 1.0
    for b in betas:
        running *= 1 - b
        alpha_bars.append(running)
    tilde = [(1 - alpha_bars[t - 1]) / (1 - alpha_bars[t]) * betas[t] for t in range(1, T)]
    d = Diffusion(make_betas("linear", T))
    assert torch.allclose(d.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(d.posterior_variance[1:], torch.tensor(tilde, dtype=torch.float64), rtol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_snr_falls_from_clean_to_pure_noise(name):
    d = Diffusion.from_schedule(name, 1000)
    assert bool((d.snr[1:] < d.snr[:-1]).all())
    assert d.snr[0] > 1e3 and d.snr[-1] < 1e-3, "t = 0 is almost the image, t = T - 1 almost pure noise"
