"""The latent-diffusion autoencoder: shapes, the KL term against torch.distributions, the
reparameterised posterior, the scale factor, and the checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from helpers.autoencoder import Autoencoder, DiagonalGaussian, load_autoencoder, save_autoencoder, train_autoencoder
from helpers.checkpoints import CheckpointError
from helpers.config import get_profile
from helpers.data import profile_dataset
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


def test_training_reduces_the_reconstruction_error(data_env):
    dataset = profile_dataset(get_profile("smoke"))
    ae = Autoencoder(image_size=16, ch=16)
    history = train_autoencoder(ae, dataset, steps=60, batch_size=32, lr=2e-3, log_every=10, progress=False)
    assert history[-1]["l1"] < 0.7 * history[0]["l1"]


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
    with pytest.raises(CheckpointError, match="not an autoencoder checkpoint"):
        load_autoencoder(tmp_path / "unet.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["weights"]["scale_factor"] = torch.tensor(3.0)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not match its recorded fingerprint"):
        load_autoencoder(tmp_path / "edited.pt")
    with pytest.raises(FileNotFoundError, match="no autoencoder checkpoint"):
        load_autoencoder(tmp_path / "missing.pt")
