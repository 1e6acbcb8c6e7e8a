"""The latent-diffusion autoencoder: shapes, the KL term against torch.distributions, the
reparameterised posterior, the scale factor, its training run (the numbers of the loop it
replaced, exact resume) and the checkpoint round trip. The run's guards: tests/test_runs.py."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from helpers.autoencoder import Autoencoder, DiagonalGaussian
from helpers.autoencoder_training import AutoencoderTrainer
from helpers.checkpoints import CheckpointError, load_autoencoder, save_autoencoder
from helpers.config import AutoencoderConfig, get_profile
from helpers.data import ImageDataset, make_loader, profile_dataset
from helpers.device import cpu_generator


def images(n: int = 8, side: int = 28) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=cpu_generator(0)) * 2 - 1


@pytest.mark.parametrize("side, latent_side", [(28, 8), (16, 4), (32, 8)])
def test_shapes_pad_and_crop(side, latent_side):
    ae = Autoencoder(image_size=side, ch=16)
    posterior = ae.encode(images(3, side))
    assert posterior.mean.shape == (3, 4, latent_side, latent_side) == (3, *ae.latent_shape)
    assert ae.decode(posterior.mean).shape == (3, 1, side, side)


def test_kl_is_the_closed_form_of_torch_distributions():
    g = cpu_generator(1)
    mean, logvar = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    q = DiagonalGaussian(mean, logvar)
    reference = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), reference)
    assert torch.equal(DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).kl(), torch.zeros(2))  # the prior itself


def test_the_posterior_sample_is_reparameterised():
    mean = torch.zeros(4, 4, 2, 2, requires_grad=True)
    logvar = torch.zeros(4, 4, 2, 2, requires_grad=True)
    z = DiagonalGaussian(mean, logvar).sample(cpu_generator(2))
    z.pow(2).sum().backward()
    assert mean.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0, "gradients reach both the mean and the variance"
    again = DiagonalGaussian(mean.detach(), logvar.detach()).sample(cpu_generator(2))
    torch.testing.assert_close(z.detach(), again)  # the noise comes from the generator
    ae = Autoencoder(image_size=16, ch=16)
    recon, posterior = ae(images(2, 16), cpu_generator(3))
    (recon.sum() + posterior.kl().sum()).backward()
    assert all(p.grad is not None for p in ae.encoder.parameters()), "the encoder learns through the sampled latent"


def test_the_scale_factor_makes_latents_unit_variance():
    ae = Autoencoder(image_size=16, ch=16)
    with torch.no_grad():
        ae.encoder[-1].weight.mul_(20.0)  # latents with std about 5-7 (seeds 0-29), far from unit variance
    x = images(64, 16)
    scale = ae.measure_scale(x)
    assert float(ae.scale_factor) == pytest.approx(scale)
    with torch.no_grad():
        z = ae.encode(x).mean * ae.scale_factor
    assert abs(float(z.std()) - 1.0) < 0.05 and scale < 0.5


@pytest.mark.slow
def test_training_reduces_the_reconstruction_error(data_env):
    profile = get_profile("smoke")
    dataset, config = profile_dataset(profile), AutoencoderConfig.from_profile(profile)
    trainer = AutoencoderTrainer(Autoencoder(**config.model_config(16, 1)), dataset, config, progress=False).train()
    assert trainer.history[-1]["l1"] < 0.7 * trainer.history[0]["l1"] and not trainer.ae.training


def tiny_data(n: int = 48, side: int = 16) -> ImageDataset:
    x = torch.randint(0, 256, (n, 1, side, side), generator=cpu_generator(5), dtype=torch.uint8)
    return ImageDataset(x, torch.zeros(n, dtype=torch.long), ("thing",))


def the_loop_it_replaced(ae, dataset, steps, batch_size, lr, kl_weight, seed, log_every):
    """helpers.autoencoder.train_autoencoder as it was (notebook 10's stored numbers come from it)."""
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batches = iter(make_loader(dataset, batch_size, seed=seed))
    history, rec_sum, kl_sum = [], 0.0, 0.0
    for step in range(1, steps + 1):
        x = next(batches)[0]
        recon, posterior = ae(x, gen)
        rec = (recon - x).abs().flatten(1).sum(1)
        kl = posterior.kl()
        loss = (rec + kl_weight * kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec_sum, kl_sum = rec_sum + float(rec.mean().detach()) / x[0].numel(), kl_sum + float(kl.mean().detach())
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            history.append({"step": step, "l1": rec_sum / n, "kl": kl_sum / n})
            rec_sum = kl_sum = 0.0
    return history


def test_the_run_draws_and_logs_the_numbers_of_the_loop_it_replaced():
    config = AutoencoderConfig(steps=7, batch_size=8, lr=2e-3, kl_weight=1e-3, log_every=3, seed=4, ch=16)
    torch.manual_seed(0)
    before = Autoencoder(**config.model_config(12, 1))  # 144 pixels: dividing by them rounds, as by 28 x 28
    reference = Autoencoder(**config.model_config(12, 1))
    reference.load_state_dict(before.state_dict())
    expected = the_loop_it_replaced(reference, tiny_data(side=12), 7, 8, 2e-3, 1e-3, 4, 3)
    trainer = AutoencoderTrainer(before, tiny_data(side=12), config, progress=False).train()
    assert [{k: r[k] for k in ("step", "l1", "kl")} for r in trainer.history] == expected, "bit for bit, rows at 3, 6 and the end"
    weights = {k: v for k, v in trainer.ae.state_dict().items() if k != "scale_factor"}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in weights.items())
    data = tiny_data(side=12)
    reference.measure_scale(torch.stack([data[i][0] for i in range(len(data))]))
    assert torch.equal(trainer.ae.scale_factor, reference.scale_factor) and float(reference.scale_factor) != 1.0, "measured at the last step"


def test_a_file_saved_before_the_scale_was_measured_for_its_weights_is_refused(tmp_path):
    """The scale factor is measured at the last step of a run; a file saved after further steps
    (a run stopped early) carries a scale of older weights and must not become a latent space."""
    config = AutoencoderConfig(steps=4, batch_size=8, lr=2e-3, log_every=1, ch=16)
    trainer = AutoencoderTrainer(Autoencoder(**config.model_config(16, 1)), tiny_data(), config, progress=False)
    trainer.train(2)
    trainer.advance(trainer.loader(trainer.dataset, config.batch_size, config.seed), end=4)  # one step more, not the last
    trainer.save(tmp_path / "early.pt")
    with pytest.raises(CheckpointError, match="stopped at step 3 before its scale factor was measured"):
        load_autoencoder(tmp_path / "early.pt")
    trainer.train(save_to=tmp_path / "done.pt")
    assert load_autoencoder(tmp_path / "done.pt").fingerprint() == trainer.ae.fingerprint()


def test_an_autoencoder_run_resumes_exactly_and_its_file_loads_as_the_autoencoder(tmp_path):
    config = AutoencoderConfig(steps=6, batch_size=8, lr=2e-3, log_every=2, ch=16)

    def fresh(seed: int) -> AutoencoderTrainer:
        torch.manual_seed(seed)
        return AutoencoderTrainer(Autoencoder(**config.model_config(16, 1)), tiny_data(), config, progress=False)

    straight = fresh(0).train()
    fresh(0).train(4, save_to=tmp_path / "ae.pt")
    resumed = fresh(1)
    resumed.load(tmp_path / "ae.pt")
    assert resumed.step == 4
    resumed.train()
    assert all(torch.equal(a, b) for a, b in zip(straight.ae.state_dict().values(), resumed.ae.state_dict().values()))
    assert resumed.history[-1]["l1"] == straight.history[-1]["l1"]
    resumed.ae.measure_scale(images(16, 16))
    resumed.save(tmp_path / "ae.pt", extra={"minutes": 0.5})
    back = load_autoencoder(tmp_path / "ae.pt")
    assert back.fingerprint() == resumed.ae.fingerprint() and not back.training
    with pytest.raises(CheckpointError, match=r"ae.pt was trained with lr=0.002 \(not 0.01\)"):
        AutoencoderTrainer(Autoencoder(**config.model_config(16, 1)), tiny_data(), AutoencoderConfig(steps=6, batch_size=8, lr=1e-2, ch=16)).load(tmp_path / "ae.pt")


def test_save_load_round_trip_and_refusals(tmp_path):
    ae = Autoencoder(image_size=16, ch=16)
    ae.measure_scale(images(16, 16))
    path = save_autoencoder(tmp_path / "ae.pt", ae)
    back = load_autoencoder(path)
    assert back.fingerprint() == ae.fingerprint() and float(back.scale_factor) == float(ae.scale_factor)
    torch.testing.assert_close(back.decode(torch.ones(1, *ae.latent_shape)), ae.decode(torch.ones(1, *ae.latent_shape)))
    other = Autoencoder(image_size=16, ch=16)
    assert other.fingerprint() != ae.fingerprint()
    torch.save({"format": "diffusion-course/1", "model": {}}, tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match="unet.pt holds a U-Net, not an autoencoder"):
        load_autoencoder(tmp_path / "unet.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["scale_factor"] = torch.tensor(3.0)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not match its recorded fingerprint"):
        load_autoencoder(tmp_path / "edited.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_autoencoder(tmp_path / "missing.pt")


def test_an_autoencoder_saved_in_the_format_before_the_kinds_still_loads(tmp_path):
    ae = Autoencoder(image_size=16, ch=16)
    ae.measure_scale(images(16, 16))
    torch.save({"format": "diffusion-course-autoencoder/1", "config": dict(ae.config), "weights": ae.state_dict(),
                "fingerprint": ae.fingerprint(), "history": [{"step": 60, "l1": 0.1}], "extra": {}}, tmp_path / "old.pt")  # fmt: skip
    assert load_autoencoder(tmp_path / "old.pt").fingerprint() == ae.fingerprint()
