"""Every profile in ``helpers.config.PROFILES`` is consistent with itself: the U-Net it describes
takes and returns images of the profile's size and channels, its process has the profile's T, its
batches fit in its data, and its sampling and evaluation settings can be carried out.

The U-Nets are built on the ``meta`` device: shapes and parameter counts without memory or
arithmetic, so the 35.7M-parameter ``full`` model costs a fraction of a second.
"""

from __future__ import annotations

import pytest
import torch

from helpers.config import PROFILES, Profile
from helpers.data import DATASETS
from helpers.unet import UNet

# Training and test split sizes as published: Fashion-MNIST (Xiao et al. 2017) and MNIST (LeCun
# et al. 1998) 60,000 / 10,000; CIFAR-10 (Krizhevsky 2009) 50,000 / 10,000.
SPLITS = {"fashion_mnist": (60_000, 10_000), "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}


@pytest.fixture(params=sorted(PROFILES))
def profile(request) -> Profile:
    return PROFILES[request.param]


def test_the_model_is_built_for_the_profiles_images(profile):
    """``UNet(**profile.model)`` (whether the dict spells out image_size and in_channels or they
    come from the profile) has the profile's image size and channels, those of its dataset."""
    with torch.device("meta"):
        model = UNet(**profile.model)
    assert (model.image_size, model.in_channels) == (profile.image_size, profile.channels)
    assert DATASETS[profile.dataset].channels == profile.channels, f"{profile.dataset} images have another channel count"


def test_the_unet_maps_a_batch_of_the_profiles_shape_to_the_same_shape(profile):
    with torch.device("meta"):
        model = UNet(**profile.model)
    x = torch.empty(2, profile.channels, profile.image_size, profile.image_size, device="meta")
    out = model(x, torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == x.shape and out.device.type == "meta"


def test_the_diffusion_has_the_profiles_T_and_prediction(profile):
    d = profile.diffusion()
    assert d.T == profile.T == len(d.betas)
    assert d.prediction == profile.prediction


def test_every_batch_fits_in_the_data(profile):
    train_split, _ = SPLITS[profile.dataset]
    images = profile.subset or train_split
    assert images <= train_split, f"a subset of {profile.subset} from {train_split} training images"
    batches = {"train": profile.train.batch_size, "distil": profile.distil.batch_size, "autoencoder": profile.autoencoder.batch_size}
    for what, batch in batches.items():
        assert 1 <= batch <= images, f"{what} batch {batch} does not fit in {images} images"
    assert profile.train.grid_ddim_steps <= profile.T


def test_sampling_and_evaluation_settings_can_be_carried_out(profile):
    s = profile.sample
    train_split, test_split = SPLITS[profile.dataset]
    for name in ("batch_size", "ddim_steps", "fid_samples", "fid_real", "kid_subset_size"):
        assert getattr(s, name) > 0, f"sample.{name} must be positive"
    assert s.ddim_steps <= profile.T
    # KID subsets are drawn from both sets; the real features come from the training split and
    # the real-data floor scores fid_samples held-out test images (helpers.metrics.real_floor)
    assert s.kid_subset_size <= s.fid_samples and s.kid_subset_size <= s.fid_real
    assert s.fid_real <= train_split and s.fid_samples <= test_split
    assert s.fid_features in ("auto", "inception", "classifier")
    assert profile.image_size % 4 == 0 or s.fid_features == "inception", "the classifier features halve the image twice"
    assert profile.classifier_epochs > 0 and profile.classifier_width > 0
