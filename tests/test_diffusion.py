import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers.diffusion import Diffusion
from helpers.unet import UNet

from conftest import SMALL_UNET

T = 1000


@pytest.fixture(params=["linear", "cosine", "sigmoid"])
def d(request):
    return Diffusion.from_schedule(request.param, T)


def _t(*values):
    return torch.tensor(values, dtype=torch.long)


def test_q_sample_has_the_closed_form_moments():
    # x_t | x_0 ~ N(sqrt(ab) x_0, (1 - ab) I). N = 200,000 draws per pixel; tolerance 5 standard errors.
    d = Diffusion.from_schedule("linear", T)
    torch.manual_seed(0)
    n, t = 200_000, 300
    x0 = torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64).repeat(n, 1)
    x_t = d.q_sample(x0, torch.full((n,), t), torch.randn_like(x0))
    ab = d.alpha_bars[t].item()
    mean_se = ((1 - ab) / n) ** 0.5
    assert torch.allclose(x_t.mean(0), ab**0.5 * x0[0], atol=5 * mean_se)
    var_se = (1 - ab) * (2 / n) ** 0.5
    assert torch.allclose(x_t.var(0), torch.full((3,), 1 - ab, dtype=torch.float64), atol=5 * var_se)


def test_iterating_one_step_kernels_equals_the_one_shot_jump_exactly_in_moments(d):
    # q_step is affine in (x, eps): propagating N(m, v) through it step by step must give the
    # one-shot moments of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t).
    m, v = torch.tensor([0.7], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    for t in range(T):
        tt = torch.tensor([t])
        gain, noise_scale = d.q_step(one, tt, zero), d.q_step(zero, tt, one)
        m, v = d.q_step(m, tt, zero), gain**2 * v + noise_scale**2
        assert m.item() == pytest.approx(d.sqrt_alpha_bars[t].item() * 0.7, rel=1e-9, abs=1e-12)
        assert v.item() == pytest.approx(1 - d.alpha_bars[t].item(), rel=1e-9)


def test_iterated_chain_agrees_in_distribution_with_the_jump():
    # 50 steps of q(x_t | x_{t-1}) from x_0 against one q_sample; N = 100,000; 5 standard errors.
    d = Diffusion.from_schedule("linear", T)
    torch.manual_seed(1)
    n, steps = 100_000, 50
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    x = x0.clone()
    for t in range(steps):
        x = d.q_step(x, torch.full((n,), t), torch.randn_like(x))
    jump = d.q_sample(x0, torch.full((n,), steps - 1), torch.randn_like(x0))
    var = 1 - d.alpha_bars[steps - 1].item()
    assert abs(x.mean() - jump.mean()).item() < 5 * (2 * var / n) ** 0.5
    assert abs(x.var() - jump.var()).item() < 5 * var * (4 / n) ** 0.5
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(x.flatten().quantile(quantiles), jump.flatten().quantile(quantiles), atol=0.01)


def test_posterior_matches_bayes_rule_for_gaussians(d):
    # prior q(x_{t-1}|x_0) = N(sqrt(ab_{t-1}) x_0, 1 - ab_{t-1}); likelihood q(x_t|x_{t-1}) = N(sqrt(a_t) x_{t-1}, beta_t)
    torch.manual_seed(2)
    t = _t(1, 10, 200, 500, 999)
    x0 = torch.randn(5, 1, dtype=torch.float64)
    x_t = torch.randn(5, 1, dtype=torch.float64)
    mean, var = d.q_posterior(x0, x_t, t)
    ab_prev, a, b = d.alpha_bars[t - 1][:, None], d.alphas[t][:, None], d.betas[t][:, None]
    precision = 1 / (1 - ab_prev) + a / b
    expected_mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + a.sqrt() * x_t / b) / precision
    assert torch.allclose(var.reshape(-1, 1), 1 / precision, rtol=1e-10)
    assert torch.allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)


def test_posterior_at_t0_is_the_data_with_zero_variance(d):
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean, var = d.q_posterior(x0, x_t, _t(0, 0))
    assert torch.allclose(mean, x0) and bool((var == 0).all())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_round_trips_between_eps_x0_and_v(d, prediction):
    d.prediction = prediction
    torch.manual_seed(3)
    x0 = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = _t(0, 1, 250, 500, 900, 999)
    x_t = d.q_sample(x0, t, eps)
    out = d.target(x0, t, eps)
    assert torch.allclose(d.predict_x0(x_t, t, out), x0, atol=1e-9)
    assert torch.allclose(d.predict_eps(x_t, t, out), eps, atol=1e-9 if prediction != "x0" else 1e-6)
    assert torch.allclose(d.eps_from_x0(x_t, t, x0), eps, atol=1e-6)


def test_v_is_the_rotation_of_eps_and_x0_and_its_ends():
    d = Diffusion.from_schedule("cosine", T, prediction="v")
    x0, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    t = _t(0, T - 1)
    v = d.target(x0, t, eps)
    a, s = d.sqrt_alpha_bars[t][:, None], d.sqrt_one_minus_alpha_bars[t][:, None]
    assert torch.allclose(v, a * eps - s * x0)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a))  # (a, s) is a point on the unit circle
    size = float(torch.cat([x0, eps]).abs().max())  # the error at the ends scales with the inputs
    assert torch.allclose(v[0], eps[0], atol=0.01 * size)  # t = 0: almost all signal (s < 0.01), v ~ eps
    assert torch.allclose(v[1], -x0[1], atol=0.01 * size)  # t = T-1: almost all noise (a < 0.01), v ~ -x_0


def test_bad_timesteps_and_shapes_are_clear_errors():
    d = Diffusion.from_schedule("linear", T)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must lie in 0..999, got values 0..1000"):
        d.q_sample(x, _t(0, 1000), x)
    with pytest.raises(ValueError, match="timesteps must lie"):
        d.q_sample(x, _t(-1, 3), x)
    with pytest.raises(TypeError, match="integer timesteps"):
        d.q_sample(x, torch.tensor([0.5, 1.0]), x)
    with pytest.raises(ValueError, match=r"t must have shape \[2\]"):
        d.q_sample(x, _t(1, 2, 3), x)
    with pytest.raises(ValueError, match="shapes must match"):
        d.q_sample(x, _t(1, 2), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'"):
        Diffusion.from_schedule("linear", prediction="epsilon")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Diffusion(torch.tensor([0.1, 1.0]))


def test_loss_is_the_mse_to_the_target_at_the_given_t_and_noise():
    d = Diffusion.from_schedule("linear", T)
    torch.manual_seed(4)
    model = UNet(**SMALL_UNET)
    with torch.no_grad():
        model.out[-1].weight.normal_(0, 0.1)
    x0 = torch.randn(3, 1, 16, 16)
    t, noise = _t(5, 500, 990), torch.randn(3, 1, 16, 16)
    per_image = d.loss(model, x0, t=t, noise=noise, reduction="none")
    out = model(d.q_sample(x0, t, noise), t)
    assert torch.allclose(per_image, ((out - noise) ** 2).mean((1, 2, 3)), atol=1e-6)
    assert d.loss(model, x0, t=t, noise=noise).item() == pytest.approx(per_image.mean().item(), rel=1e-6)


class _Float64OnDevice(TorchFunctionMode):
    """Records every torch call that leaves a float64 tensor on a device other than the CPU."""

    def __init__(self):
        super().__init__()
        self.offenders = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.dtype == torch.float64 and o.device.type != "cpu":
                self.offenders.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("prediction,weighting", [("eps", "none"), ("v", "min_snr"), ("x0", "snr")])
def test_no_float64_reaches_the_device_in_forward_process_or_loss(prediction, weighting):
    # MPS has no float64. The "meta" device stands in for it: any float64 tensor created there is a bug.
    d = Diffusion.from_schedule("cosine", T, prediction=prediction, loss_weighting=weighting)
    dev = torch.device("meta")
    x0 = torch.empty(4, 1, 16, 16, device=dev)
    t = _t(0, 10, 500, 999)
    model = UNet(**SMALL_UNET).to(dev)
    with _Float64OnDevice() as mode:
        x_t = d.q_sample(x0, t, torch.empty_like(x0))
        mean, var = d.q_posterior(x0, x_t, t)
        outs = [x_t, mean, var, d.predict_x0(x_t, t, x0), d.predict_eps(x_t, t, x0), d.target(x0, t, x0)]
        outs.append(d.loss(model, x0))
    assert mode.offenders == [], f"float64 reached the device in: {mode.offenders}"
    assert all(o.dtype == torch.float32 and o.device == dev for o in outs)


def test_float32_inputs_give_float32_outputs_on_cpu():
    d = Diffusion.from_schedule("linear", T, prediction="v")
    x0 = torch.randn(2, 1, 4, 4)
    t = _t(3, 700)
    assert d.q_sample(x0, t, x0).dtype == torch.float32
    assert all(o.dtype == torch.float32 for o in d.q_posterior(x0, x0, t))
    assert d.predict_x0(x0, t, x0).dtype == torch.float32


class _Consistent(torch.nn.Module):
    """Outputs, in its parameterisation, the same (imperfect) guess x0_hat = x0 + delta for every target."""

    def __init__(self, d, x0, delta):
        super().__init__()
        self.d, self.x0_hat = d, x0 + delta

    def forward(self, x_t, t):
        t = t.cpu()
        if self.d.prediction == "x0":
            return self.x0_hat
        eps_hat = self.d.eps_from_x0(x_t, t, self.x0_hat)
        if self.d.prediction == "eps":
            return eps_hat
        return self.d.extract(self.d.sqrt_alpha_bars, t, x_t) * eps_hat - self.d.extract(self.d.sqrt_one_minus_alpha_bars, t, x_t) * self.x0_hat


@pytest.mark.parametrize("weighting", ["snr", "min_snr"])
def test_the_three_losses_are_one_objective_under_the_matching_weights(weighting):
    # ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2 and ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2, so the
    # weights of loss_weight() make all three targets give the same number for the same x0 guess.
    torch.manual_seed(5)
    x0 = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    delta = 0.1 * torch.randn_like(x0)
    noise = torch.randn_like(x0)
    t = _t(0, 3, 50, 200, 500, 800, 950, 999)
    losses = {}
    for prediction in ("eps", "x0", "v"):
        d = Diffusion.from_schedule("cosine", T, prediction=prediction, loss_weighting=weighting, min_snr_gamma=5.0)
        losses[prediction] = d.loss(_Consistent(d, x0, delta), x0, t=t, noise=noise, reduction="none")
    assert torch.allclose(losses["eps"], losses["x0"], rtol=1e-4) and torch.allclose(losses["v"], losses["x0"], rtol=1e-4)
    d = Diffusion.from_schedule("cosine", T)
    x0_mse = ((delta**2).flatten(1).mean(1)).float()
    c = d.snr[t] if weighting == "snr" else d.snr[t].clamp(max=5.0)
    assert torch.allclose(losses["x0"].double(), c * x0_mse.double(), rtol=1e-4)


def test_unweighted_losses_differ_by_the_snr_factors():
    torch.manual_seed(6)
    x0 = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    delta, noise, t = 0.1 * torch.randn_like(x0), torch.randn_like(x0), _t(10, 300, 600, 990)
    loss = {}
    for p in ("eps", "x0", "v"):
        d = Diffusion.from_schedule("linear", T, prediction=p)
        loss[p] = d.loss(_Consistent(d, x0, delta), x0, t=t, noise=noise, reduction="none").double()
    snr = d.snr[t]
    assert torch.allclose(loss["eps"], snr * loss["x0"], rtol=1e-4)
    assert torch.allclose(loss["v"], (snr + 1) * loss["x0"], rtol=1e-4)
