"""Flow matching (helpers.flow) against closed forms: Gaussian data, whose marginal velocity and
transport map are known, and the 2-D mixture of helpers.toy."""

import math

import pytest
import torch

from helpers.diffusion import Diffusion
from helpers.flow import FlowEuler, FlowHeun, FlowMatching, flow_times, reflow_pairs, straightness
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
    """The ODE's pairs (eps, x0_hat) are a function of eps, whatever the batching, and rectification
    does not raise a convex transport cost (Liu et al. 2023, Theorem 3.5): E||x0_hat - eps||^2 below
    the independent coupling's."""
    toy, fm = GaussianMixture.ring(), FlowMatching()
    model = as_model(toy_velocity(toy))
    g = torch.Generator().manual_seed(6)
    eps = torch.randn(4096, 2, generator=g)
    pairs = reflow_pairs(model, fm, eps, FlowHeun(50), batch_size=1024, clamp=False, progress=False)
    paired, noise = pairs.tensors
    assert torch.equal(noise, eps)
    assert torch.equal(paired, reflow_pairs(model, fm, eps, FlowHeun(50), batch_size=4096, clamp=False, progress=False).tensors[0])
    independent = toy.sample(4096, g).float()
    assert ((paired - eps) ** 2).sum(1).mean() < 0.9 * ((independent - eps) ** 2).sum(1).mean()


def _paths(velocity, eps, steps=20):
    record = Trajectory()
    end = sample(velocity, FlowMatching(), eps, FlowEuler(steps), progress=False, clamp=False, callback=record)
    return straightness(torch.cat([record.x_t, end[None]]), flow_times(steps))


def test_a_flow_trained_on_reflow_pairs_has_straighter_paths():
    """1-rectified flow: the toy's exact velocity, whose paths bend. 2-rectified: a small network
    regressed on that flow's pairs (eps, x0_hat), whose paths come out nearly straight; trained on
    the same x0_hat with fresh noise instead, the paths bend like the first flow's."""
    toy, fm = GaussianMixture.ring(), FlowMatching()
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(4096, 2, generator=g)
    x0_hat, eps = reflow_pairs(as_model(toy_velocity(toy)), fm, eps, FlowHeun(50), batch_size=4096, clamp=False, progress=False).tensors

    def fit(noise_of):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(), torch.nn.Linear(128, 2))
        model = lambda x, scaled_t: net(torch.cat([x, scaled_t.view(-1, 1) / fm.time_scale], 1))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(1500):
            i = torch.randint(0, len(eps), (512,), generator=g)
            loss = fm.loss(model, x0_hat[i], t=fm.sample_t(512, g), noise=noise_of(i))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return lambda x, scaled_t: model(x, scaled_t).detach()

    first = _paths(as_model(toy_velocity(toy)), eps[:512]).mean()
    rectified = _paths(fit(lambda i: eps[i]), eps[:512]).mean()
    unpaired = _paths(fit(lambda i: torch.randn(len(i), 2, generator=g)), eps[:512]).mean()
    assert rectified < 0.25 * first, (rectified, first)
    assert unpaired > 0.5 * first, (unpaired, first)


def test_a_reflow_run_takes_each_images_noise_from_its_pair():
    """With coupling="reflow" the Trainer's step regresses on (x0_hat, eps) as the dataset pairs them:
    its per-image losses are the flow loss with that eps (computed here on the weights before the step);
    fresh noise would give other losses. A conditional model is refused (pairs carry no labels)."""
    from torch.utils.data import TensorDataset

    from helpers.config import TrainConfig
    from helpers.training import Trainer
    from helpers.unet import UNet

    fm = FlowMatching(coupling="reflow")
    assert FlowMatching.from_config(fm.config()).coupling == "reflow"
    g = torch.Generator().manual_seed(8)
    x0_hat, eps = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, torch.randn(8, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    unet = dict(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4)
    trainer = Trainer(UNet(**unet), fm, TensorDataset(x0_hat, eps), TrainConfig(steps=1, batch_size=8, lr=1e-3), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses, t, _, _ = trainer.train_step(x0_hat, eps)
    reference = UNet(**unet)
    reference.load_state_dict(before)
    with torch.no_grad():
        want = fm.loss(reference, x0_hat, t=t, noise=eps, reduction="none")
    assert torch.allclose(losses, want, atol=1e-6)
    with pytest.raises(ValueError, match="carry no labels"):
        Trainer(UNet(**unet, num_classes=10), fm, TensorDataset(x0_hat, eps), TrainConfig(steps=1, batch_size=8, lr=1e-3), progress=False)


@pytest.mark.parametrize("sampler_cls", [FlowEuler, FlowHeun])
def test_the_samplers_spend_their_nfe_and_never_evaluate_at_t_zero(sampler_cls):
    """A logit-normal model has almost never seen t = 0: no sampler calls the network there (Heun's last
    step is Euler's, Karras et al. 2022, algorithm 1), and each makes exactly ``nfe`` calls."""
    times = []
    model = lambda x, scaled_t: (times.append(float(scaled_t[0]) / 1000), torch.zeros_like(x))[1]  # noqa: E731
    for steps in (1, 2, 5):
        times.clear()
        sampler = sampler_cls(steps)
        sample(model, FlowMatching(), torch.zeros(2, 3), sampler, progress=False, clamp=False)
        assert len(times) == sampler.nfe and min(times) > 0, (steps, times)
