"""Consistency models: the boundary condition, the CD target against a hand-computed teacher step,
the stop-gradient target, the sampler's network budget, and the checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_unet

from helpers.checkpoints import CheckpointError, load_model
from helpers.consistency import (
    ConsistencyFunction,
    MultistepConsistency,
    c_out,
    c_skip,
    cd_loss,
    cd_sigmas,
    cd_target,
    consistency_record,
    pseudo_huber,
)
from helpers.config import DistilConfig
from helpers.data import ImageDataset
from helpers.distillation import Distiller
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.samplers import sample
from helpers.solvers import Denoiser


def tiny_dataset(n: int = 64) -> ImageDataset:
    x = torch.randint(0, 256, (n, 1, 16, 16), generator=cpu_generator(3), dtype=torch.uint8)
    return ImageDataset(x, torch.zeros(n, dtype=torch.long), ("thing",))


def test_boundary_condition_holds_exactly():
    d = Diffusion.from_schedule("linear", 100)
    f = ConsistencyFunction(random_unet(), d)
    x = torch.randn(3, 1, 16, 16, generator=cpu_generator(0))
    assert torch.equal(f(x, f.sigma_min), x)
    assert torch.equal(f(x, torch.full((3, 1, 1, 1), f.sigma_min, dtype=torch.float64)), x)
    assert c_skip(f.sigma_min, f.sigma_min) == 1 and c_out(f.sigma_min, f.sigma_min) == 0
    assert not torch.allclose(f(x, 2 * f.sigma_min), x, atol=1e-4)  # a real function of the network above sigma_min


def test_a_fresh_student_is_the_teachers_denoiser_at_high_noise():
    """F is the network in EDM's units, so f = D up to the sigma_min shift: c_skip and c_out differ
    from EDM's by relative O(sigma_min / sigma), so |f - D| <= 3 sigma_min / sigma (|x| + |D|)."""
    d = Diffusion.from_schedule("linear", 100)
    model = random_unet()
    f, denoiser = ConsistencyFunction(model, d), Denoiser(model, d)
    x = torch.randn(4, 1, 16, 16, generator=cpu_generator(1)) * 5
    for sigma in (1.0, 5.0, f.sigma_max):
        D = denoiser(x, sigma)
        gap = (f(x, sigma) - D).abs().max()
        assert gap < 3 * f.sigma_min / sigma * (x.abs().max() + D.abs().max()), sigma
        assert gap > 0.01 * f.sigma_min / sigma * (x.abs().max() + D.abs().max()), sigma  # the shift is there


def test_a_per_image_sigma_is_each_images_own_float_sigma():
    d = Diffusion.from_schedule("linear", 100)
    f = ConsistencyFunction(random_unet(), d)
    x = torch.randn(3, 1, 16, 16, generator=cpu_generator(2))
    sigmas = [0.05, 0.7, 9.0]
    batched = f(x, torch.tensor(sigmas).view(3, 1, 1, 1))
    one_by_one = torch.cat([f(x[i : i + 1], s) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


def gaussian_denoiser(s: float):
    """E[x_0 | x] for x_0 ~ N(0, s^2 I), x = x_0 + sigma eps: s^2 / (s^2 + sigma^2) x."""
    return lambda x, sigma: s**2 / (s**2 + sigma**2) * x


def test_cd_target_is_one_heun_step_of_the_teacher_by_hand():
    s, x = 0.5, torch.randn(2, 1, 4, 4, generator=cpu_generator(4), dtype=torch.float64)
    teacher, identity = gaussian_denoiser(s), lambda x, sigma: x
    hi, lo = 3.0, 2.8
    sig_next, sig = torch.full((2, 1, 1, 1), hi, dtype=torch.float64), torch.full((2, 1, 1, 1), lo, dtype=torch.float64)
    # Heun by hand: slope (x - D)/sigma = sigma/(s^2 + sigma^2) x at both ends of the step
    k1 = hi / (s**2 + hi**2) * x
    x_euler = x + (lo - hi) * k1
    k2 = lo / (s**2 + lo**2) * x_euler
    by_hand = x + (lo - hi) * (k1 + k2) / 2
    torch.testing.assert_close(cd_target(identity, teacher, x, sig_next, sig, "heun"), by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cd_target(identity, teacher, x, sig_next, sig, "euler"), x_euler, rtol=1e-12, atol=1e-12)
    # and Heun (second order) is much closer than Euler to the exact x(sigma) = x sqrt((s^2 + sigma^2) / (s^2 + sigma_next^2))
    exact = x * math.sqrt((s**2 + lo**2) / (s**2 + hi**2))
    heun_error, euler_error = (by_hand - exact).abs().max(), (x_euler - exact).abs().max()
    assert heun_error < euler_error / 4, (heun_error, euler_error)


def test_cd_loss_vanishes_for_the_exact_consistency_function_of_gaussian_data():
    """For Gaussian data the ODE maps x(sigma) to x(sigma_min) = x sqrt((s^2 + sigma_min^2)/(s^2 + sigma^2)):
    with the exact teacher and a small step, the true f scores (almost) zero and a wrong one does not."""
    s, sigma_min = 0.5, 0.01
    teacher = gaussian_denoiser(s)
    true_f = lambda x, sigma: x * ((s**2 + sigma_min**2) / (s**2 + sigma**2)) ** 0.5  # noqa: E731
    wrong_f = lambda x, sigma: x * (s**2 / (s**2 + sigma**2))  # noqa: E731 (the denoiser, not the consistency map)
    sigmas = torch.tensor([sigma_min, 0.3, 0.31, 1.0, 1.02], dtype=torch.float64)
    x0 = torch.randn(4, 1, 4, 4, generator=cpu_generator(5), dtype=torch.float64) * s
    z = torch.randn(4, 1, 4, 4, generator=cpu_generator(6), dtype=torch.float64)
    n = torch.tensor([1, 1, 3, 3])
    good = cd_loss(true_f, true_f, teacher, x0, sigmas, n, z, "l2")
    bad = cd_loss(wrong_f, true_f, teacher, x0, sigmas, n, z, "l2")
    assert good.max() < 1e-7 and bad.min() > 1e-3


def test_pseudo_huber_is_l2_like_near_zero_and_l1_like_far_away():
    a = torch.zeros(1, 1, 28, 28)
    c = 0.00054 * 28
    small, large = a + 1e-4, a + 1.0
    assert pseudo_huber(small, a) == pytest.approx((784 * 1e-8) / (2 * c), rel=1e-2)  # ~ ||d||^2 / 2c
    assert pseudo_huber(large, a) == pytest.approx(28.0 - c, rel=1e-3)  # ~ ||d|| - c


def test_the_target_network_gets_no_gradient_and_follows_the_student_by_ema():
    d = Diffusion.from_schedule("linear", 100)
    cfg = DistilConfig(steps=2, batch_size=8, lr=1e-3, target_decay=0.9, log_every=1)
    distiller = Distiller(random_unet(), d, tiny_dataset(), cfg, progress=False)
    before = {k: v.clone() for k, v in distiller.target.state_dict().items()}
    x0 = tiny_dataset()[0][0][None].repeat(8, 1, 1, 1)
    distiller.train_step(x0)
    assert all(p.grad is None and not p.requires_grad for p in distiller.target.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
    student = distiller.student.state_dict()
    for name, value in distiller.target.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student[name])


class Counting(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0
        self.in_channels, self.image_size = model.in_channels, model.image_size

    def forward(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("nfe", [1, 2, 3])
def test_multistep_sampling_calls_the_network_nfe_times(nfe):
    d = Diffusion.from_schedule("linear", 100)
    net = Counting(random_unet())
    x = sample(net, d, (5, 1, 16, 16), MultistepConsistency(nfe), cpu_generator(0), progress=False)
    assert net.calls == nfe and x.shape == (5, 1, 16, 16)


def test_one_step_sampling_is_f_at_sigma_max_of_the_starting_noise():
    d = Diffusion.from_schedule("linear", 100)
    model = random_unet()
    f = ConsistencyFunction(model, d)
    x_T = torch.randn(3, 1, 16, 16, generator=cpu_generator(7))
    expected = f(x_T * math.sqrt(1 + f.sigma_max**2), f.sigma_max).clamp(-1, 1)
    torch.testing.assert_close(sample(model, d, x_T, MultistepConsistency(1), progress=False), expected)


def test_sampler_settings_are_checked():
    with pytest.raises(ValueError, match="2 network evaluations need 1 intermediate"):
        MultistepConsistency(2, sigmas=(1.0, 0.5))
    with pytest.raises(ValueError, match="positive and decreasing"):
        MultistepConsistency(3, sigmas=(0.5, 1.0))
    with pytest.raises(ValueError, match="nfe .network evaluations. must be a positive integer"):
        MultistepConsistency(0)
    with pytest.raises(ValueError, match="unknown distance"):
        DistilConfig(steps=1, distance="lpips")
    with pytest.raises(ValueError, match="number of noise levels must be an integer >= 2"):
        cd_sigmas(1, Denoiser(random_unet(), Diffusion.from_schedule("linear", 100)))


def test_cd_grid_runs_from_sigma_min_to_sigma_max():
    denoiser = Denoiser(random_unet(), Diffusion.from_schedule("linear", 100))
    grid = cd_sigmas(18, denoiser)
    assert len(grid) == 18 and grid[0] == pytest.approx(denoiser.sigma_min) and grid[-1] == pytest.approx(denoiser.sigma_max)
    assert (grid.diff() > 0).all()


def test_distillation_round_trips_and_resumes_exactly(tmp_path):
    d = Diffusion.from_schedule("linear", 100)
    cfg = DistilConfig(steps=4, batch_size=8, lr=1e-3, log_every=1)
    straight = Distiller(random_unet(), d, tiny_dataset(), cfg, teacher_path="teacher.pt", progress=False)
    straight.train()
    first = Distiller(random_unet(), d, tiny_dataset(), cfg, teacher_path="teacher.pt", progress=False)
    first.train(steps=2, save_to=tmp_path / "cd.pt")
    resumed = Distiller(random_unet(), d, tiny_dataset(), cfg, teacher_path="teacher.pt", progress=False)
    resumed.load(tmp_path / "cd.pt")
    resumed.train()
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert [r["loss"] for r in straight.history] == pytest.approx([r["loss"] for r in resumed.history], rel=1e-5)

    model, _, ckpt = load_model(tmp_path / "cd.pt")
    record = consistency_record(ckpt)
    assert record["teacher"] == "teacher.pt" and record["config"]["steps"] == 4
    for name, value in first.ema.shadow.items():  # load_model gives the sampling EMA
        torch.testing.assert_close(model.state_dict()[name], value)
    other = Distiller(random_unet(), d, tiny_dataset(), DistilConfig(steps=4, batch_size=8, lr=2e-3), progress=False)
    with pytest.raises(CheckpointError, match=r"distilled with lr=0.001 \(not 0.002\)"):
        other.load(tmp_path / "cd.pt")


def test_a_distilled_model_exports_with_its_record(tmp_path):
    from helpers.pretrained import card, export

    d = Diffusion.from_schedule("linear", 100)
    distiller = Distiller(random_unet(), d, tiny_dataset(), DistilConfig(steps=1, batch_size=8, sigma_max=20.0), teacher_path="t.pt", progress=False)
    distiller.train(save_to=tmp_path / "cd.pt")
    slim = export(tmp_path / "cd.pt", tmp_path / "slim.pt", {"minutes": 0.1})
    model, _, ckpt = load_model(slim)
    assert consistency_record(ckpt)["config"]["sigma_max"] == 20.0 and ckpt.get("optimizer") is None
    assert card(slim)["distillation"]["teacher"] == "t.pt"
    for name, value in distiller.ema.shadow.items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_cd_loss_reads_the_same_levels_from_the_cpu_table_and_the_distillers_device_copy():
    """The Distiller hands cd_loss its float32 copy of the grid on the device (no read back to the
    host); the numbers are those of the float64 table on the CPU, to the bit."""
    d = Diffusion.from_schedule("linear", 100)
    distiller = Distiller(random_unet(), d, tiny_dataset(), DistilConfig(steps=1, batch_size=8, n_levels=6, sigma_max=20.0), progress=False)
    x0 = torch.stack([tiny_dataset()[i][0] for i in range(8)])
    n = torch.randint(0, 5, (8,), generator=cpu_generator(8))
    z = torch.randn(x0.shape, generator=cpu_generator(9))
    cfg = distiller.config
    args = (distiller.student_fn, distiller.target_fn, distiller.teacher_fn, x0)
    expected = cd_loss(*args, distiller.sigmas, n, z, cfg.distance, cfg.teacher_step)
    assert distiller.sigmas.dtype == torch.float64 and distiller.levels.dtype == torch.float32
    assert torch.equal(cd_loss(*args, distiller.levels, n, z, cfg.distance, cfg.teacher_step), expected)


def test_a_distillation_step_never_waits_for_the_device():
    # On the "meta" device any read of a value back to the host (.item(), .cpu(), bool(), a CPU
    # index) raises, so a step that runs there keeps a GPU busy without syncs.
    d = Diffusion.from_schedule("linear", 100)
    distiller = Distiller(random_unet(), d, tiny_dataset(), DistilConfig(steps=2, batch_size=8, n_levels=6), device="meta", progress=False)
    loss = distiller.train_step(torch.stack([tiny_dataset()[i][0] for i in range(8)]))
    assert loss.device.type == "meta" and distiller.step == 1


def test_a_diffusion_checkpoint_is_no_distillation_run_to_resume(tmp_path):
    from helpers.config import TrainConfig
    from helpers.training import Trainer

    d = Diffusion.from_schedule("linear", 100)
    Trainer(random_unet(), d, tiny_dataset(), TrainConfig(steps=1, batch_size=8, lr=1e-3), progress=False).train().save(tmp_path / "unet.pt")
    distiller = Distiller(random_unet(), d, tiny_dataset(), DistilConfig(steps=2, batch_size=8), progress=False)
    with pytest.raises(CheckpointError, match="unet.pt holds a U-Net, not a consistency model"):
        distiller.load(tmp_path / "unet.pt")
