"""Latent diffusion: the latent U-Net's configuration, encoding a dataset, unclipped sampling in
latent space, and the autoencoder reference that a latent checkpoint keeps and enforces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import sample as sample_cli
from helpers import train as train_cli
from helpers.autoencoder import Autoencoder
from helpers.checkpoints import save_autoencoder
from helpers.checkpoints import CheckpointError, load_checkpoint
from helpers.config import get_profile
from helpers.data import profile_dataset
from helpers.diffusion import Diffusion
from helpers.latent import check_autoencoder, decode, draw_images, encode_dataset, latent_record, latent_unet_config
from helpers.samplers import DDIM
from helpers.unet import UNet


def test_the_latent_unet_is_the_pixel_unet_with_the_latents_shape():
    laptop = get_profile("laptop").model  # 28 px, levels 28/14/7, attention at 7
    ae = Autoencoder(image_size=28)
    config = latent_unet_config({**laptop, "num_classes": None}, ae)
    assert (config["image_size"], config["in_channels"], config["attn_resolutions"]) == (8, 4, (2,))
    same = ("image_size", "in_channels", "attn_resolutions")
    assert {k: v for k, v in config.items() if k not in same} == {k: v for k, v in {**laptop, "num_classes": None}.items() if k not in same}
    assert UNet(**config)(torch.zeros(2, 4, 8, 8), torch.zeros(2, dtype=torch.long)).shape == (2, 4, 8, 8)


def test_encoding_a_dataset_gives_scaled_posterior_means(data_env):
    dataset = profile_dataset(get_profile("smoke"))
    ae = Autoencoder(image_size=16, ch=16)
    x = dataset.tensors()[0]
    ae.measure_scale(x[:256])
    latents = encode_dataset(ae, dataset, batch_size=512, progress=False)
    assert len(latents) == len(dataset) and latents[3][0].shape == ae.latent_shape and latents[3][1] == dataset[3][1]
    with torch.no_grad():
        torch.testing.assert_close(latents.latents[:4], ae.encode(x[:4]).mean * ae.scale_factor)
    assert abs(float(latents.latents.std()) - 1.0) < 0.1  # the scale measured on 256 images fits them all


class Constant(nn.Module):
    """An x0-predicting 'network' that always answers 3: outside the pixel range."""

    in_channels, image_size, num_classes = 4, 4, None

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.full_like(x, 3.0) + 0 * self.dummy


def test_latent_samples_are_neither_clipped_nor_clamped_before_decoding():
    d = Diffusion.from_schedule("linear", 50, prediction="x0")
    ae = Autoencoder(image_size=16, ch=16)
    ae.scale_factor.fill_(0.5)
    images = draw_images(Constant(), d, ae, 2, DDIM(5), torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, decode(ae, torch.full((2, 4, 4, 4), 3.0)))  # z_0 = 3, decoded as D(3 / 0.5)
    assert not torch.allclose(images, decode(ae, torch.full((2, 4, 4, 4), 1.0)))


def test_a_latent_model_refuses_another_autoencoder():
    ae, other = Autoencoder(image_size=16, ch=16), Autoencoder(image_size=16, ch=16)
    record = {"path": "ae.pt", "fingerprint": ae.fingerprint()}
    check_autoencoder(record, ae, "m.pt")
    with pytest.raises(CheckpointError, match="trained on the latents of another autoencoder"):
        check_autoencoder(record, other, "m.pt")
    with pytest.raises(CheckpointError, match="holds a pixel-space model"):
        check_autoencoder(None, ae, "m.pt")


def test_latent_training_and_sampling_from_the_command_line(tmp_path, data_env, capsys):
    ae = Autoencoder(image_size=16, ch=16)
    ae.measure_scale(profile_dataset(get_profile("smoke")).tensors()[0][:256])
    ae_path = save_autoencoder(tmp_path / "ae.pt", ae)
    other_path = save_autoencoder(tmp_path / "other.pt", Autoencoder(image_size=16, ch=16))
    ckpt = tmp_path / "latent.pt"
    # a constant learning rate, so that the run can be extended (a decay's schedule is fixed by --steps)
    common = ["--profile", "smoke", "--out", str(ckpt), "--no-progress", "--batch-size", "8", "--lr-decay", "none"]
    assert train_cli.main(common + ["--steps", "2", "--autoencoder", str(ae_path), "--sample-every", "5"]) == 2
    assert "grids and FID during training are drawn in pixel space" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "2", "--autoencoder", str(ae_path)]) == 0
    state = load_checkpoint(ckpt)
    assert latent_record(state)["fingerprint"] == ae.fingerprint() and state["model_config"]["in_channels"] == 4
    assert train_cli.main(common + ["--steps", "3", "--resume"]) == 2
    assert "is a latent model; resume it with --autoencoder" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "3", "--resume", "--autoencoder", str(other_path)]) == 2
    assert "another autoencoder" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "3", "--resume", "--autoencoder", str(ae_path)]) == 0

    out = tmp_path / "grid.png"
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--sampler", "ddim", "--steps", "3", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--autoencoder", str(other_path), "--out", str(out)]) == 2
    assert "another autoencoder" in capsys.readouterr().err
    ae_path.rename(tmp_path / "moved.pt")
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--sampler", "euler", "--nfe", "3", "--out", str(out)]) == 2
    assert "is a latent model and its autoencoder" in capsys.readouterr().err
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--sampler", "euler", "--nfe", "3", "--autoencoder", str(tmp_path / "moved.pt"), "--out", str(out)]) == 0


def test_the_autoencoder_trains_from_the_command_line(tmp_path, data_env, capsys):
    from helpers import autoencode as autoencoder_cli
    from helpers.checkpoints import load_autoencoder

    out = tmp_path / "ae.pt"
    assert autoencoder_cli.main(["--profile", "smoke", "--out", str(out), "--steps", "3", "--no-progress"]) == 0
    ae = load_autoencoder(out)
    assert "scale factor" in capsys.readouterr().out and float(ae.scale_factor) != 1.0 and ae.latent_shape == (4, 4, 4)
    assert autoencoder_cli.main(["--profile", "smoke", "--out", str(out), "--steps", "3", "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
