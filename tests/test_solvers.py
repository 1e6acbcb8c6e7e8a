"""The sigma-space solvers against closed forms of Gaussian data.

For x_0 ~ N(mu, s^2) and x = x_0 + sigma eps, the exact denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2)
(x - mu), and the probability-flow ODE dx/dsigma = (x - D) / sigma has the solution
x(sigma) - mu = (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2): it scales the distance to
the mean by the ratio of the marginal standard deviations.
"""

import math

import pytest
import torch

from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.samplers import sample
from helpers.solvers import (
    SOLVERS,
    Denoiser,
    Solver,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_pc,
    sample_reverse_diffusion,
)

from test_samplers_analytic import MU, S, T, GaussianDenoiser

M, SD = 0.3, 0.5  # the 1-D data of the order tests


def exact_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return M + SD**2 / (SD**2 + sigma**2) * (x - M)


def flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The exact probability-flow ODE solution of the 1-D Gaussian data."""
    return M + (x - M) * math.sqrt(SD**2 + sigma_to**2) / math.sqrt(SD**2 + sigma_from**2)


class Counting:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def test_karras_grid_spans_sigma_max_to_min_evenly_in_sigma_to_the_one_over_rho():
    sigmas = karras_sigmas(10, 0.01, 80.0, rho=7.0)
    assert len(sigmas) == 11 and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.01)
    steps = sigmas[:-1] ** (1 / 7)
    assert torch.allclose(steps.diff(), steps.diff()[0].expand(9))  # evenly spaced in sigma^(1/rho)
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, rho=1.0)[:-1], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, 80.0, 0.01)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_of_a_ddpm_model_is_the_posterior_mean_of_x0_plus_sigma_eps(prediction):
    """The exact DDPM network for Gaussian data, wrapped, is the exact VE denoiser at each table
    sigma: scaling in by 1/sqrt(1 + sigma^2), t from sigma, and the output back to x_0 are right."""
    d = Diffusion.from_schedule("linear", T, prediction=prediction)
    denoiser = Denoiser(GaussianDenoiser(d), d)
    x = torch.randn(8, 1, 2, 2, generator=cpu_generator(0), dtype=torch.float64)
    for t in (0, 10, 300, 999):
        sigma = float(d.sigmas[t])
        assert d.timestep_of_sigma(sigma) == pytest.approx(t, abs=1e-6)
        x_ve = x * math.sqrt(1 + sigma**2)
        want = MU + S**2 / (S**2 + sigma**2) * (x_ve - MU)
        assert torch.allclose(denoiser(x_ve.float(), sigma).double(), want, rtol=1e-4, atol=1e-4 * max(1.0, sigma)), t


@pytest.mark.parametrize(("solver", "order"), [(sample_euler, 1), (sample_heun, 2), (sample_dpmpp_2m, 2)])
def test_ode_solvers_converge_at_their_order(solver, order):
    """Halving the steps of a Karras grid (sigma 80 -> 0.05) divides the error at the end by 2^order."""
    x_T = M + torch.linspace(-3, 3, 101, dtype=torch.float64) * math.sqrt(SD**2 + 80.0**2)
    errors = []
    for n in (32, 64, 128):
        sigmas = karras_sigmas(n, 0.05, 80.0)[:-1]  # stop at sigma_min, where the exact answer is known
        errors.append((solver(exact_denoiser, x_T.clone(), sigmas) - flow(x_T, 80.0, 0.05)).abs().max().item())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(abs(math.log2(r) - order) < 0.15 for r in ratios), (errors, ratios)


def test_probability_flow_maps_the_data_to_the_prior_and_back():
    """Up the ODE, data N(M, SD^2) becomes N(M, SD^2 + sigma_max^2), the marginal at sigma_max; down
    again, each point returns to where it started."""
    x0 = M + SD * torch.randn(50_000, generator=cpu_generator(1), dtype=torch.float64)
    up = karras_sigmas(200, 1e-3, 80.0).flip(0)[1:]  # 1e-3 .. 80, ascending
    x_max = sample_heun(exact_denoiser, x0.clone(), up)
    assert x_max.mean().item() == pytest.approx(x0.mean().item(), abs=0.01 * 80)
    assert x_max.std().item() == pytest.approx(x0.std().item() * math.sqrt(SD**2 + 80.0**2) / math.sqrt(SD**2 + 1e-6), rel=1e-3)
    back = sample_heun(exact_denoiser, x_max, up.flip(0))
    assert (back - x0).abs().max() < 1e-3


def test_pc_with_no_corrector_steps_is_its_predictor_and_corrector_steps_cost_one_nfe_each():
    sigmas = karras_sigmas(12, 0.05, 80.0)
    x_T = 80.0 * torch.randn(256, generator=cpu_generator(2), dtype=torch.float64)
    predictor = sample_reverse_diffusion(exact_denoiser, x_T.clone().view(-1, 1), sigmas, cpu_generator(3))
    pc0 = sample_pc(exact_denoiser, x_T.clone().view(-1, 1), sigmas, corrector_steps=0, generator=cpu_generator(3))
    assert torch.equal(pc0, predictor)
    counting = Counting(exact_denoiser)
    pc2 = sample_pc(counting, x_T.clone().view(-1, 1), sigmas, corrector_steps=2, generator=cpu_generator(3))
    assert counting.calls == 12 + 2 * 11 and not torch.equal(pc2, predictor)


@pytest.mark.parametrize(("name", "corrector_steps"), [(name, 1) for name in sorted(SOLVERS)] + [("pc", 2)])
@pytest.mark.parametrize("nfe", [5, 10, 20])
def test_solvers_spend_their_nfe_budget_exactly(name, corrector_steps, nfe):
    """Heun's last step, to sigma = 0, is Euler (one call), so n steps cost 2n - 1; PC's corrector
    does not run at sigma = 0. A budget is never exceeded and no whole step is left unspent."""
    d = Diffusion.from_schedule("linear", T)
    model = GaussianDenoiser(d)
    calls = []
    counted = torch.nn.Module()
    counted.anchor = model.anchor
    counted.forward = lambda x, t: (calls.append(1), model(x, t))[1]
    solver = Solver(name, nfe, corrector_steps=corrector_steps)
    sample(counted, d, (4, 1, 2, 2), solver, cpu_generator(0), progress=False)
    step_cost = {"heun": 2, "pc": 1 + corrector_steps}.get(name, 1)
    assert len(calls) == solver.spent and nfe - step_cost < len(calls) <= nfe


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_recovers_gaussian_data_from_a_ddpm_model(name):
    """End to end through the wrapper: 200 NFE on the exact DDPM network give the data's per-pixel
    mean and standard deviation (within 4.5%: Euler-ancestral, first order and stochastic, is the
    slowest to converge, 3.8% low here; at 40 NFE PC's 20 steps are still 30% too wide)."""
    d = Diffusion.from_schedule("linear", T)
    x = sample(GaussianDenoiser(d), d, (20_000, 1, 2, 2), Solver(name, 200), cpu_generator(0), progress=False).double()
    assert (x.mean(0, keepdim=True) - MU).abs().max() < 0.01
    assert ((x.std(0, keepdim=True) - S) / S).abs().max() < 0.045, x.std(0)


def test_solver_settings_are_checked():
    with pytest.raises(ValueError, match="unknown solver"):
        Solver("rk4", 10)
    with pytest.raises(ValueError, match="nfe"):
        Solver("heun", 0)
    with pytest.raises(ValueError, match="corrector_steps"):
        Solver("pc", 10, corrector_steps=-1)
    assert Solver("heun", 10).steps == 5 and Solver("pc", 10, corrector_steps=1).steps == 5 and Solver("euler", 10).steps == 10
