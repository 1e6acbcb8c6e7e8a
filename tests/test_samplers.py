from dataclasses import dataclass, field

import pytest
import torch

import helpers.samplers as S
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.samplers import DDIM, DDPM, Guided, Trajectory, ddim_step, ddim_timesteps, ddpm_step, sample

from conftest import random_unet

T = 1000


def test_golden_grids_match_diffusers_spacings():
    assert ddim_timesteps(T, 50, "leading") == list(range(980, -1, -20))
    assert ddim_timesteps(T, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(T, 10, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    for spacing in S.SPACINGS:
        assert ddim_timesteps(T, T, spacing) == list(range(T - 1, -1, -1))


def test_grids_match_diffusers_where_rounding_ties():
    # diffusers 0.42.1, DDIMScheduler(num_train_timesteps=T, timestep_spacing=...).set_timesteps(S)
    assert ddim_timesteps(100, 24, "trailing") == [99, 95, 91, 86, 82, 78, 74, 70, 66, 61, 57, 53, 49, 45, 41, 36, 32, 28, 24, 20, 16, 11, 7, 3]
    assert ddim_timesteps(100, 47, "linspace") == [
        99, 97, 95, 93, 90, 88, 86, 84, 82, 80, 77, 75, 73, 71, 69, 67, 65, 62, 60, 58, 56, 54, 52, 49,
        47, 45, 43, 41, 39, 37, 34, 32, 30, 28, 26, 24, 22, 19, 17, 15, 13, 11, 9, 6, 4, 2, 0,
    ]  # fmt: skip
    assert ddim_timesteps(1000, 7, "trailing") == [999, 856, 713, 570, 428, 285, 142]
    assert ddim_timesteps(1000, 3, "leading") == [666, 333, 0]
    with pytest.warns(UserWarning, match="starts at t = 38"):
        assert ddim_timesteps(50, 20, "leading") == list(range(38, -1, -2))


@pytest.mark.parametrize("steps", [10, 50, 64, 600, 999, 1000])
def test_first_timestep_of_every_spacing(steps, recwarn):
    """Trailing and linspace start at T - 1 whatever the step count; leading starts at
    (S - 1) * (T // S), and says so when that is further than ceil(T / S) below T."""
    assert ddim_timesteps(T, steps, "trailing")[0] == T - 1
    assert ddim_timesteps(T, steps, "linspace")[0] == T - 1
    assert not recwarn.list
    first = (steps - 1) * (T // steps)
    assert ddim_timesteps(T, steps, "leading")[0] == first
    far = T - first > -(-T // steps)
    assert far == (steps in (64, 600)) and len(recwarn.list) == far


def test_grid_errors():
    with pytest.raises(ValueError, match=r"steps must be an integer in 1..1000"):
        ddim_timesteps(T, 1001)
    with pytest.raises(ValueError, match="steps must be"):
        ddim_timesteps(T, 0)
    with pytest.raises(ValueError, match="unknown spacing 'even'; choose trailing, leading, linspace"):
        ddim_timesteps(T, 10, "even")


@pytest.fixture(params=["eps", "x0", "v"])
def d(request):
    return Diffusion.from_schedule("linear", T, prediction=request.param)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_eta_one_on_the_full_grid_is_the_ddpm_step(d, clip):
    torch.manual_seed(0)
    x_t, out, noise = (torch.randn(3, 1, 4, 4, dtype=torch.float64) for _ in range(3))
    for t in (999, 500, 37, 1):
        a, a0 = ddpm_step(d, out, x_t, t, noise, clip_x0=clip)
        b, b0 = ddim_step(d, out, x_t, t, t - 1, eta=1.0, noise=noise, clip_x0=clip)
        assert torch.allclose(a, b, atol=1e-10), t
        x0 = d.predict_x0(x_t, t, out)
        assert torch.allclose(a0, x0.clamp(-1, 1) if clip else x0) and torch.equal(a0, b0), "x0_hat is the prediction the step used"


def test_ddim_eta_one_variance_equals_the_ddpm_posterior_variance_on_the_full_grid():
    d = Diffusion.from_schedule("cosine", T)
    x_t, out = torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.randn(1, 1, 2, 2, dtype=torch.float64)
    z = torch.ones_like(x_t)
    sigmas = torch.stack([(ddim_step(d, out, x_t, t, t - 1, 1.0, z)[0] - ddim_step(d, out, x_t, t, t - 1, 1.0, 0 * z)[0])[0, 0, 0, 0] for t in range(1, T)])
    assert torch.allclose(sigmas**2, d.posterior_variance[1:], rtol=1e-8, atol=1e-15)


def test_ddpm_step_without_clipping_is_algorithm_2():
    d = Diffusion.from_schedule("linear", T)
    torch.manual_seed(1)
    x_t, eps, z = (torch.randn(2, 1, 3, 3, dtype=torch.float64) for _ in range(3))
    for t in (999, 10, 1):
        a, b, ab = d.alphas[t], d.betas[t], d.alpha_bars[t]
        expected = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + d.posterior_variance[t].sqrt() * z
        assert torch.allclose(ddpm_step(d, eps, x_t, t, z, clip_x0=False)[0], expected, atol=1e-10)
        large = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + b.sqrt() * z
        assert torch.allclose(ddpm_step(d, eps, x_t, t, z, clip_x0=False, variance="fixed_large")[0], large, atol=1e-10)


def test_ddim_step_with_eta_zero_is_eq_12(d):
    torch.manual_seed(2)
    x0, eps = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t, t_prev = 700, 500
    tt = torch.full((2,), t)
    x_t = d.q_sample(x0, tt, eps)
    out = d.target(x0, tt, eps)
    expected = d.alpha_bars[t_prev].sqrt() * x0 + (1 - d.alpha_bars[t_prev]).sqrt() * eps
    assert torch.allclose(ddim_step(d, out, x_t, t, t_prev, clip_x0=False)[0], expected, atol=1e-8)
    # t_prev = -1: alpha_bar = 1, the step lands on x_0 itself
    assert torch.allclose(ddim_step(d, out, x_t, t, -1, clip_x0=False)[0], x0, atol=1e-8)


def test_one_ddpm_step_from_the_true_x0_has_the_posterior_moments():
    # With the true eps, x_{t-1} ~ q(x_{t-1} | x_t, x_0). N = 100,000 draws; 5 standard errors.
    d = Diffusion.from_schedule("linear", T)
    torch.manual_seed(3)
    n, t = 100_000, 400
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    eps = torch.full((n, 1), -1.2, dtype=torch.float64)
    tt = torch.full((n,), t)
    x_t = d.q_sample(x0, tt, eps)
    x_prev, _ = ddpm_step(d, eps, x_t, t, torch.randn_like(x0), clip_x0=False)
    mean, var = d.q_posterior(x0[:1], x_t[:1], tt[:1])
    assert abs(x_prev.mean() - mean.item()).item() < 5 * (var.item() / n) ** 0.5
    assert abs(x_prev.var() - var.item()).item() < 5 * var.item() * (2 / n) ** 0.5


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_ddim_update_does_not_depend_on_the_parameterisation(prediction):
    # Outputs of the three parameterisations that describe the same (x_0, eps) give the same step.
    torch.manual_seed(4)
    x0, eps = torch.randn(2, 1, 3, 3, dtype=torch.float64).clamp(-1, 1), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t, t_prev = 600, 300
    tt = torch.full((2,), t)
    ref = Diffusion.from_schedule("cosine", T, prediction="eps")
    x_t = ref.q_sample(x0, tt, eps)
    expected, _ = ddim_step(ref, eps, x_t, t, t_prev)
    d = Diffusion.from_schedule("cosine", T, prediction=prediction)
    assert torch.allclose(ddim_step(d, d.target(x0, tt, eps), x_t, t, t_prev)[0], expected, atol=1e-7)


@dataclass(frozen=True)
class RecordingDDIM(DDIM):
    """DDIM whose step also records the (t, t_prev) pair the loop hands it (a sampler of the
    protocol, not a patch of the code under test)."""

    pairs: list = field(default_factory=list, compare=False)

    def step(self, d, out, x_t, t, t_prev, noise):
        self.pairs.append((t, t_prev))
        return super().step(d, out, x_t, t, t_prev, noise)


@pytest.mark.filterwarnings("ignore:the leading grid")  # leading with 7 steps starts far below T - 1, and says so
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 7, 10])
def test_the_loop_steps_to_the_next_grid_entry_for_every_spacing(spacing, steps):
    d = Diffusion.from_schedule("linear", 100)
    sampler = RecordingDDIM(steps, spacing=spacing)
    sample(random_unet(), d, (1, 1, 16, 16), sampler, cpu_generator(0), progress=False)
    grid = ddim_timesteps(100, steps, spacing)
    assert sampler.pairs == list(zip(grid, grid[1:] + [-1]))


def test_sampling_is_reproducible_from_a_seed_and_eta_zero_is_deterministic():
    d = Diffusion.from_schedule("linear", 50)
    model = random_unet()
    a = sample(model, d, (2, 1, 16, 16), generator=cpu_generator(7), progress=False)
    b = sample(model, d, (2, 1, 16, 16), generator=cpu_generator(7), progress=False)
    c = sample(model, d, (2, 1, 16, 16), generator=cpu_generator(8), progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    x_T = torch.randn(2, 1, 16, 16)
    e1 = sample(model, d, x_T, DDIM(10, eta=0.0), cpu_generator(1), progress=False)
    e2 = sample(model, d, x_T, DDIM(10, eta=0.0), cpu_generator(2), progress=False)
    assert torch.equal(e1, e2)


def test_trajectory_records_x_t_and_predicted_x0_and_restores_train_mode():
    d = Diffusion.from_schedule("linear", 50)
    model = random_unet().train()
    traj = Trajectory(every=10)
    x_T = torch.randn(2, 1, 16, 16, generator=cpu_generator(0))
    x = sample(model, d, x_T, DDPM(), cpu_generator(0), callback=traj, progress=False)
    assert traj.t == [49, 39, 29, 19, 9, 0]
    assert traj.x_t.shape == traj.x0.shape == (6, 2, 1, 16, 16)
    assert torch.equal(traj.x_t[0], x_T), "the first record is the starting noise"
    assert torch.equal(traj.x0[-1].clamp(-1, 1), x), "at t = 0 the sample is the last prediction of x0"
    assert model.training
    seen = []
    sample(model, d, (1, 1, 16, 16), DDIM(5), callback=lambda s: seen.append(s["t"]), progress=False)
    assert seen == ddim_timesteps(50, 5)


def test_sampler_errors_are_clear():
    d = Diffusion.from_schedule("linear", 50)
    model = random_unet()
    with pytest.raises(ValueError, match="steps must be an integer in 1..50"):
        sample(model, d, (1, 1, 16, 16), DDIM(51), progress=False)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="DDIM steps must be a positive integer"):
            DDIM(bad)
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
            DDIM(10, eta)
    with pytest.raises(ValueError, match="unknown spacing 'even'"):
        DDIM(10, spacing="even")
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        DDPM("learned")
    with pytest.raises(ValueError, match="model is unconditional"):
        Guided(model, torch.tensor([0]))
    cond = random_unet(num_classes=4)
    with pytest.raises(ValueError, match=r"class ids must lie in 0..3, got 0..4"):
        Guided(cond, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"y holds 3 class ids for a batch of 2 images"):
        sample(Guided(cond, torch.tensor([0, 1, 2])), d, (2, 1, 16, 16), progress=False)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance scale must be a finite number"):
            Guided(cond, torch.tensor([0, 1]), scale)


# ---- classifier-free guidance ---------------------------------------------------------------------


def test_guidance_scale_one_is_the_conditional_model_and_zero_the_null_label_model():
    model = random_unet(num_classes=4)
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 900]), torch.tensor([0, 2, 3])
    null = torch.full_like(y, 4)
    assert torch.allclose(Guided(model, y, 1.0)(x, t), model(x, t, y), atol=1e-6)
    assert torch.allclose(Guided(model, y, 0.0)(x, t), model(x, t, null), atol=1e-6)


def test_guided_output_is_linear_in_the_scale():
    # Ho & Salimans (2022), eq. 6: eps_uncond + s (eps_cond - eps_uncond), from one doubled batch
    model = random_unet(num_classes=4)
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 900]), torch.tensor([0, 2, 3])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 4))
    for s in (0.5, 2.0, 7.5):
        assert torch.allclose(Guided(model, y, s)(x, t), uncond + s * (cond - uncond), atol=1e-5)


def test_guided_sampling_at_scale_zero_equals_unconditional_sampling():
    d = Diffusion.from_schedule("linear", 20, prediction="v")
    model = random_unet(num_classes=4)
    y = torch.tensor([1, 2])
    a = sample(Guided(model, y, 0.0), d, (2, 1, 16, 16), DDIM(5), cpu_generator(0), progress=False)
    b = sample(model, d, (2, 1, 16, 16), DDIM(5), cpu_generator(0), progress=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_slerp_keeps_the_ends_and_the_norm_of_orthogonal_noise():
    z0 = torch.zeros(2, 2)
    z0[0, 0] = 3.0
    z1 = torch.zeros(2, 2)
    z1[1, 1] = 3.0
    assert torch.allclose(S.slerp(z0, z1, 0.0), z0, atol=1e-6) and torch.allclose(S.slerp(z0, z1, 1.0), z1, atol=1e-6)
    mid = S.slerp(z0, z1, 0.5)
    assert mid.norm().item() == pytest.approx(3.0, rel=1e-6)
    assert (z0 + z1).div(2).norm().item() == pytest.approx(3.0 / 2**0.5, rel=1e-6)  # the straight line shrinks


@pytest.mark.parametrize("sampler", [DDPM(), DDIM(5, eta=1.0)])
def test_the_sampling_loop_never_waits_for_the_device(sampler):
    # On "meta" any read of values back to the host raises: the loop runs without syncs.
    d = Diffusion.from_schedule("linear", 20, prediction="v")
    model = random_unet(num_classes=4).to("meta")
    x = sample(Guided(model, torch.tensor([0, 3]), 2.0), d, (2, 1, 16, 16), sampler, cpu_generator(0), progress=False)
    assert x.device.type == "meta"
