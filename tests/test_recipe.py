"""The laptop recipe: its size is the measured one, and a checkpoint of it rebuilds the same run."""

import re

import torch

from helpers.checkpoints import load_model
from helpers.config import PROFILES
from helpers.paths import repo_root
from helpers.data import ImageDataset, prepare_images
from helpers.training import TrainConfig, Trainer
from helpers.unet import UNet

# docs/laptop-recipe.md, the shipped checkpoints and the timings were measured with this many
# parameters; a change to the recipe or to the U-Net must update them together.
LAPTOP_PARAMS = 627_433


def test_the_laptop_recipe_has_the_measured_parameter_count():
    profile = PROFILES["laptop"]
    params = sum(p.numel() for p in UNet(**profile.model).parameters())
    assert params == LAPTOP_PARAMS
    doc = (repo_root() / "docs" / "laptop-recipe.md").read_text()
    chosen = re.search(r"chosen recipe: .*?([\d,]+) parameters", doc, re.S)
    assert chosen and int(chosen.group(1).replace(",", "")) == params, "docs/laptop-recipe.md describes another model"


def test_the_laptop_recipe_round_trips_through_a_checkpoint(tmp_path):
    profile = PROFILES["laptop"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, profile.channels, profile.image_size, profile.image_size), generator=g, dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(8) % 10, tuple(str(i) for i in range(10)))
    config = TrainConfig.from_profile(profile, batch_size=4, sample_every=0)
    trainer = Trainer(UNet(**profile.model), profile.diffusion(), data, config, torch.device("cpu"), progress=False).train(2)
    model, d, ckpt = load_model(trainer.save(tmp_path / "laptop.pt", profile=profile.name))
    assert model.config == UNet(**profile.model).config
    assert d.config() == profile.diffusion().config()
    assert TrainConfig(**ckpt["train"]) == config and ckpt["profile"] == "laptop"
    for name, shadow in trainer.ema.shadow.items():  # load_model hands back the EMA weights
        assert torch.equal(model.state_dict()[name], shadow)


def test_fashion_mnist_keeps_its_28_pixels_under_the_laptop_profile():
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(prepare_images(x, 28), x), "28 px images must not be padded and resized back"
    padded = prepare_images(x, 32)
    assert padded.shape[-1] == 32 and torch.equal(padded[..., 2:30, 2:30], x) and padded[..., :2, :].eq(0).all()
