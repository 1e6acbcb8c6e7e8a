"""Flow matching (helpers.flow) against closed forms: Gaussian data, whose marginal velocity and
transport map are known, and the 2-D mixture of helpers.toy."""

import math

import pytest
import torch

from helpers.diffusion import Diffusion
from helpers.flow import FlowEuler, FlowHeun, FlowMatching, flow_times, straightness
from helpers.samplers import DDIM, DDPM, Trajectory, sample
from helpers.toy import GaussianMixture

M, S = 0.7, 0.4  # data x_0 ~ N(M, S^2) in every dimension


def gaussian_velocity(x, t):
    """E[eps - x_0 | x_t = x] for x_0 ~ N(M, S^2), written from the joint Gaussian of (x_0, eps, x_t):
    Cov(x_0, x_t) = (1 - t) S^2, Cov(eps, x_t) = t, Var(x_t) = (1 - t)^2 S^2 + t^2."""
    var = (1 - t) ** 2 * S**2 + t**2
    centred = x - (1 - t) * M
    return t / var * centred - (M + (1 - t) * S**2 / var * centred)


def as_model(velocity, time_scale=1000.0):
    """A 'network' (x_t, scaled t) -> velocity, as FlowMatching calls one."""
    return lambda x, scaled_t: velocity(x.double(), scaled_t.double().view(-1, *([1] * (x.ndim - 1))) / time_scale).float()


def toy_velocity(toy):
    """The toy's exact velocity as (x, t) with one t for the batch, t given per image."""
    return lambda x, t: toy.velocity(x, float(t.flatten()[0]))


def test_the_marginal_velocity_minimises_the_conditional_loss_at_its_closed_form_value():
    fm, g = FlowMatching(), torch.Generator().manual_seed(0)
    n, t = 400_000, 0.35
    x0 = M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    times = torch.full((n,), t)

    def loss(velocity):
        return fm.loss(as_model(velocity), x0, t=times, noise=noise).item()

    best = loss(gaussian_velocity)
    # the minimum is E Var(eps - x_0 | x_t) = Var(eps - x_0) - Cov(eps - x_0, x_t)^2 / Var(x_t)
    closed = (1 + S**2) - (t - (1 - t) * S**2) ** 2 / ((1 - t) ** 2 * S**2 + t**2)
    assert best == pytest.approx(closed, rel=0.01)
    for wrong in (lambda x, t: gaussian_velocity(x, t) + 0.05, lambda x, t: 1.05 * gaussian_velocity(x, t), lambda x, t: x - M):
        assert loss(wrong) > best + 1e-3


def test_the_toy_velocity_is_its_denoiser_seen_from_the_flow():
    toy, x = GaussianMixture.ring(), torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.1, 0.5, 0.9):  # x_t / (1 - t) = x_0 + t / (1 - t) eps: u = (x_t - E[x_0 | x_t]) / t
        assert torch.allclose(toy.velocity(x, t), (x - toy(x / (1 - t), t / (1 - t))) / t, atol=1e-10)
    assert torch.allclose(toy.velocity(x, 1.0), x - toy.means.mean(0), atol=1e-12), "at t = 1, u = x - E[x_0]"
    assert torch.allclose(toy.velocity(x, 0.0), -x, atol=1e-12), "at t = 0, u = E[eps] - x"


@pytest.mark.parametrize("sampler_cls, order", [(FlowEuler, 1), (FlowHeun, 2)])
def test_the_samplers_transport_noise_to_the_gaussian_at_their_order(sampler_cls, order):
    fm, z = FlowMatching(), torch.randn(4096, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    exact = M + S * z  # the flow's ODE maps x_1 = z to x_0 = M + S z (x_t's law stays Gaussian along it)
    model = as_model(gaussian_velocity)
    errors = [(sample(model, fm, z, sampler_cls(n), progress=False, clamp=False) - exact).abs().max().item() for n in (16, 32, 64)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(r - order) < 0.2 for r in rates), (errors, rates)
    x = sample(model, fm, z, sampler_cls(64), progress=False, clamp=False)
    assert abs(x.mean().item() - M) < 0.02 and abs(x.std().item() - S) < 0.02


def test_velocity_v_and_the_predictions_convert_exactly():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64), torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
    alpha = torch.rand(8, generator=g, dtype=torch.float64).clamp(0.05, 0.95).sqrt()
    sigma = (1 - alpha**2).sqrt()
    a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    x_vp, v = a * x0 + s * eps, a * eps - s * x0
    u = FlowMatching.velocity_from_v(x_vp, v, alpha, sigma)
    assert torch.allclose(u, eps - x0, atol=1e-6)
    assert torch.allclose(FlowMatching.v_from_velocity(x_vp, u, alpha, sigma), v, atol=1e-6)
    x_flow, t = FlowMatching.from_vp(x_vp, alpha, sigma)  # the same point of the same path, in the flow's time
    assert torch.allclose(x_flow, FlowMatching().interpolate(x0, t, eps), atol=1e-6)
    assert torch.allclose(FlowMatching.x0_from_velocity(x_flow, t, u), x0, atol=1e-6)
    assert torch.allclose(FlowMatching.eps_from_velocity(x_flow, t, u), eps, atol=1e-6)


def test_a_diffusion_models_probability_flow_is_the_flow_under_a_change_of_time():
    """DDIM (eta = 0) on a VP model and Euler on the flow built from its v agree as the steps shrink."""
    d = Diffusion.from_schedule("cosine", T=1000, prediction="v")
    toy = GaussianMixture.ring(k=3, radius=1.0, std=0.3)

    def v_model(x, t):  # the exact v of the toy under d
        ab = d.alpha_bars[t.long()].view(-1, 1)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        x0 = toy(x.double() / alpha, float((sigma / alpha)[0]))
        return ((x.double() - alpha * x0) / sigma * alpha - sigma * x0).float()

    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(4))
    vp = sample(v_model, d, z, DDIM(1000, clip_x0=False), progress=False, clamp=False)
    flow = sample(as_model(toy_velocity(toy)), FlowMatching(), z, FlowHeun(200), progress=False, clamp=False)
    assert (vp - flow).abs().mean() < 0.02


def test_time_sampling_follows_its_law():
    g = torch.Generator().manual_seed(5)
    uniform = FlowMatching().sample_t(100_000, g)
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean().item() - 0.5) < 0.005
    logit = FlowMatching("logit_normal", logit_mean=0.5, logit_std=1.2).sample_t(100_000, g)
    below = (logit < torch.sigmoid(torch.tensor(0.5 + 1.2))).float().mean().item()  # P(n < 1) = Phi(1)
    assert abs(below - 0.8413) < 0.005


def test_the_network_sees_scaled_time_and_the_loss_checks_shapes():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    fm = FlowMatching(time_scale=1000.0)
    x0 = torch.randn(4, 1, 8, 8)
    fm.loss(model, x0, t=torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.equal(seen[-1], torch.tensor([0.0, 250.0, 500.0, 1000.0]))
    with pytest.raises(ValueError, match="returned shape"):
        fm.loss(lambda x, t: x[:, :, :4], x0)


def test_a_flow_model_refuses_the_diffusion_samplers_and_the_reverse():
    fm, d = FlowMatching(), Diffusion.from_schedule("linear", T=10)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for sampler in (DDPM(), DDIM(5)):
        with pytest.raises(ValueError, match="flow-matching model predicts a velocity"):
            sample(model, fm, (2, 1, 4, 4), sampler, progress=False)
    with pytest.raises(ValueError, match="FlowEuler or FlowHeun"):
        sample(model, d, (2, 1, 4, 4), FlowEuler(4), progress=False)


def test_flow_times_and_the_shift():
    assert torch.allclose(flow_times(4), torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=torch.float64))
    shifted = flow_times(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > flow_times(4)[1:-1]).all(), "a shift > 1 stays at high t longer"
    with pytest.raises(ValueError, match="steps"):
        FlowEuler(0)


def test_straightness_of_a_line_a_parabola_and_an_euler_path():
    times = torch.linspace(1, 0, 1001, dtype=torch.float64)
    line = (times[:, None, None] * torch.tensor([[2.0, -1.0]], dtype=torch.float64))
    assert straightness(line, times).abs().max() < 1e-20
    parabola = torch.stack([times, times**2], dim=-1)[:, None, :]  # x(t) = (t, t^2): S = int_0^1 (0 + (2t - 1)^2) dt / 2 = 1/6
    assert straightness(parabola, times).item() == pytest.approx(1 / 6, rel=1e-3)


def test_reflow_couples_deterministically_and_lowers_the_transport_cost():
    """The ODE's pairs (eps, x0_hat) are a function of eps, and rectification does not raise a convex
    transport cost (Liu et al. 2023, Theorem 3.5): E||x0_hat - eps||^2 below the independent coupling's."""
    toy, fm = GaussianMixture.ring(), FlowMatching()
    model = as_model(toy_velocity(toy))
    g = torch.Generator().manual_seed(6)
    eps = torch.randn(4096, 2, generator=g)
    record = Trajectory()
    paired = sample(model, fm, eps, FlowHeun(50), progress=False, clamp=False, callback=record)
    assert torch.equal(paired, sample(model, fm, eps, FlowHeun(50), progress=False, clamp=False))
    independent = toy.sample(4096, g).float()
    assert ((paired - eps) ** 2).sum(1).mean() < 0.9 * ((independent - eps) ** 2).sum(1).mean()
    # the exact flow of an independent coupling bends: its path is measurably not straight
    path = torch.cat([record.x_t, paired[None]])
    assert straightness(path, flow_times(50)).mean() > 0.05
