"""Profiles: one name picks the scale of everything (data, model, training, sampling, metrics).

``DIFFUSION_PROFILE`` selects the profile; without it the device decides (CUDA -> full, otherwise
laptop). Every profile writes under its own ``artifacts/<profile>/`` so a smoke run never
overwrites a real one.

    >>> from helpers.config import PROFILES
    >>> UNet(**PROFILES["full"].model)   # the DDPM paper's 35.7M-parameter CIFAR-10 model
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from helpers.consistency import DISTANCES, TEACHER_STEPS
from helpers.diffusion import Diffusion
from helpers.paths import CHECKPOINTS, artifacts_root, checkpoint, checkpoint_file, require

__all__ = [
    "TrainConfig",
    "DistilConfig",
    "RESUMABLE_SETTINGS",
    "OPTIMIZERS",
    "SampleSettings",
    "Profile",
    "PROFILES",
    "get_profile",
    "setup",
]


# What a resumed run may change; every other setting must match the checkpoint's for the
# continuation to be the same run (the data position, for one, counts batches of batch_size).
RESUMABLE_SETTINGS = frozenset(
    {"steps", "log_every", "sample_every", "grid_size", "grid_ddim_steps", "eval_every", "amp", "compile", "channels_last"}
)


OPTIMIZERS = ("adam", "adamw")


def _setting(default: Any = MISSING, *, help: str, group: str = "optimisation", **meta: Any) -> Any:
    """A TrainConfig field; ``help`` and ``group`` become its flag in ``python -m helpers.train``."""
    return field(default=default, metadata={"help": help, "group": group, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run, in one place: each profile holds one (``profile.train``), the
    ``Trainer`` takes one, checkpoints store one, and ``python -m helpers.train`` makes a flag of
    every field (its help text is in the field's metadata). DDPM's values (Ho et al. 2020,
    appendix B) are the full profile's."""

    steps: int = _setting(help="train until this many optimiser steps in total")
    batch_size: int = _setting(help="images per step")
    lr: float = _setting(help="peak learning rate")
    warmup_steps: int = _setting(0, help="linear learning-rate warm-up steps, then constant")
    grad_clip: float | None = _setting(1.0, help="clip the gradient norm to this, 0 for off")
    optimizer: str = _setting("adam", help="adam (as DDPM) or adamw", choices=OPTIMIZERS)
    weight_decay: float = _setting(0.0, help="weight decay (with adamw)")
    ema_decay: float | None = _setting(None, help="EMA decay of the weights; None (0 on the command line) for no EMA")
    ema_warmup: bool = _setting(True, help="EMA decay grows as (1 + n) / (10 + n) up to ema_decay (helpers.ema)")
    ema_update_every: int = _setting(1, help="average the weights every N optimiser steps")
    p_uncond: float = _setting(0.1, help="label dropout rate of a conditional model, for classifier-free guidance")
    seed: int = _setting(0, help="seed of weights, data order and noise")
    log_every: int = _setting(50, help="steps per metrics-log row", group="logging and evaluation")
    sample_every: int = _setting(0, help="steps between sample grids, 0 for none", group="logging and evaluation")
    grid_size: int = _setting(16, help="images per sample grid (also the notebooks' grids)", group="logging and evaluation")
    grid_ddim_steps: int = _setting(20, help="DDIM steps of the sample grids", group="logging and evaluation")
    eval_every: int = _setting(0, help="steps between FID/KID of raw and EMA weights, 0 for none", group="logging and evaluation")
    amp: bool | None = _setting(None, help="bf16 autocast; None: wherever the device has it (CUDA)", group="speed")
    compile: bool = _setting(False, help="torch.compile the model", group="speed")
    channels_last: bool = _setting(False, help="channels_last memory format of the U-Net", group="speed")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> TrainConfig:
        """The profile's training settings, with ``overrides`` on top."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return replace(profile.train, **overrides)

    def resume_conflicts(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{setting: (saved, now)} for settings outside ``RESUMABLE_SETTINGS`` that differ from a
        checkpoint's ``train`` entry. Switching EMA on for a run saved without it is allowed."""
        conflicts = {}
        for name, now in asdict(self).items():
            if name in RESUMABLE_SETTINGS or name not in saved:
                continue
            if name.startswith("ema_") and saved.get("ema_decay") is None:
                continue
            if saved[name] != now:
                conflicts[name] = (saved[name], now)
        return conflicts

    def __post_init__(self) -> None:
        """The one check of a run's settings: the CLI, the Trainer and the notebooks all build a
        TrainConfig, so a setting that would train backwards or never log cannot get through."""
        for name in ("steps", "batch_size", "log_every", "grid_size", "grid_ddim_steps", "ema_update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number above 0, got {self.lr}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be a finite number >= 0 (0 for no clipping), got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1) (or be None for no EMA), got {self.ema_decay}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}")


def _distil_setting(default: Any, help: str) -> Any:
    """A DistilConfig field; ``help`` becomes its flag's help in ``python -m helpers.distil``."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DistilConfig:
    """Settings of a consistency-distillation run, in one place: profiles hold their values
    (``profile.distil``), ``Distiller`` takes one, checkpoints store one, and ``python -m
    helpers.distil`` makes a flag of every field. Song et al. 2023 use N = 18 and mu = 0.95 for CD
    on CIFAR-10."""

    steps: int = _distil_setting(1600, "distil until this many optimiser steps in total")
    batch_size: int = _distil_setting(64, "images per step")
    lr: float = _distil_setting(2e-4, "Adam's learning rate")
    n_levels: int = _distil_setting(18, "N, the noise levels of the CD grid (a Karras grid)")
    sigma_max: float | None = _distil_setting(None, "top of the grid, where one-step sampling starts (default: the teacher's sigma_max)")
    rho: float = _distil_setting(7.0, "rho of the Karras grid")
    target_decay: float = _distil_setting(0.95, "mu, the decay of the EMA of the student that makes the targets")
    ema_decay: float = _distil_setting(0.999, "decay of the EMA of the student that is sampled from")
    distance: str = _distil_setting("pseudo-huber", "d, the distance between student and target: pseudo-huber or l2")
    teacher_step: str = _distil_setting("heun", "the teacher's ODE step between adjacent levels: heun or euler (= DDIM)")
    grad_clip: float = _distil_setting(1.0, "clip the gradient norm to this (0: no clipping)")
    log_every: int = _distil_setting(50, "log the mean loss every N steps")
    seed: int = _distil_setting(0, "seed of the levels, the noise and the data order")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> DistilConfig:
        """The profile's distillation settings (``profile.distil``) with ``overrides`` on top."""
        return cls(**{**profile.distil, **overrides})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_levels", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_levels" else 1):
                raise ValueError(f"{name} must be a positive integer{' >= 2' if name == 'n_levels' else ''}, got {value!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; choose {', '.join(DISTANCES)}")
        if self.teacher_step not in TEACHER_STEPS:
            raise ValueError(f"unknown teacher step {self.teacher_step!r}; choose {', '.join(TEACHER_STEPS)}")
        for name in ("target_decay", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.sigma_max is not None and not (math.isfinite(self.sigma_max) and self.sigma_max > 0):
            raise ValueError(f"sigma_max must be a positive number, got {self.sigma_max}")


@dataclass(frozen=True)
class SampleSettings:
    """Sampling and evaluation settings."""

    batch_size: int  # images per sampling batch
    ddim_steps: int
    fid_samples: int  # generated images per FID/KID evaluation
    fid_real: int  # real images behind the reference statistics
    kid_subset_size: int
    fid_features: str  # "auto" (Inception if its weights can be had), "inception" or "classifier"


@dataclass(frozen=True)
class Profile:
    """Everything one scale of the course needs. ``model`` is the keyword set of ``UNet``."""

    name: str
    description: str
    dataset: str  # "fashion_mnist", "mnist" or "cifar10"
    image_size: int
    channels: int
    subset: int | None  # train on the first ``subset`` images (None: all)
    schedule: str
    T: int
    model: dict[str, Any]
    train: TrainConfig
    sample: SampleSettings
    classifier_epochs: int  # the feature/score classifier behind offline FID (helpers.classifier)
    classifier_width: int
    compare_steps: int  # per model, where a notebook trains several to compare them (06, 07)
    prediction: str = "eps"  # what the network predicts (helpers.diffusion)
    loss_weighting: str = "none"
    distil: dict[str, Any] = field(default_factory=dict)  # consistency distillation (helpers.consistency.DistilConfig)
    autoencoder: dict[str, Any] = field(default_factory=dict)  # latent diffusion's autoencoder: "model" (Autoencoder kwargs), "train" (train_autoencoder kwargs)

    @property
    def seed(self) -> int:
        """The training seed (``train.seed``), also behind the data subset and the FID image choices."""
        return self.train.seed

    def diffusion(self, **overrides: Any) -> Diffusion:
        """The profile's process: its schedule, T, prediction and loss weighting (``overrides`` on top)."""
        kw = dict(prediction=self.prediction, loss_weighting=self.loss_weighting)
        return Diffusion.from_schedule(overrides.pop("schedule", self.schedule), self.T, **{**kw, **overrides})

    @property
    def artifacts(self) -> Path:
        """``artifacts/<profile>/``: checkpoints, grids, logs and caches of this profile."""
        return artifacts_root() / self.name

    def checkpoint(self, key: str) -> Path:
        """Path of the checkpoint ``key`` of ``helpers.paths.CHECKPOINTS`` (e.g. "eps": 03_ddpm_eps.pt) of this profile."""
        return checkpoint(self.name, checkpoint_file(key))

    def require(self, key: str) -> Path:
        """This profile's checkpoint ``key`` if it exists, else (laptop only) the shipped one, else a
        FileNotFoundError naming the notebook that makes it (``helpers.paths.require``)."""
        return require(self.checkpoint(key), CHECKPOINTS[key].made_by)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI and tests on a 2-core CPU: a tiny U-Net on 2,048 Fashion-MNIST images at 16x16, T = 100",
        dataset="fashion_mnist",
        image_size=16,
        channels=1,
        subset=2048,
        schedule="linear",
        T=100,
        model=dict(
            image_size=16,
            in_channels=1,
            ch=16,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
            norm_groups=8,
        ),
        train=TrainConfig(
            steps=200,
            batch_size=32,
            lr=1e-3,
            warmup_steps=20,
            grad_clip=1.0,
            ema_decay=0.99,
            log_every=10,
            sample_every=50,
            eval_every=50,
            grid_size=16,
            grid_ddim_steps=20,
        ),
        sample=SampleSettings(
            batch_size=128,
            ddim_steps=20,
            fid_samples=256,
            fid_real=1024,
            kid_subset_size=100,
            fid_features="classifier",
        ),
        classifier_epochs=1,
        classifier_width=16,
        compare_steps=150,
        distil=dict(steps=30, batch_size=16, sigma_max=20.0, log_every=10),
        autoencoder=dict(model=dict(ch=16, latent_channels=4), train=dict(steps=60, batch_size=32, lr=2e-3, kl_weight=1e-6, log_every=10)),
    ),
    "laptop": Profile(
        name="laptop",
        description="a 2-core CPU upward: a 0.63M-parameter U-Net on all of Fashion-MNIST at 28x28, min-SNR-5 weighting, notebook 03 in about 19 minutes (docs/laptop-recipe.md)",
        dataset="fashion_mnist",
        image_size=28,
        channels=1,
        subset=None,
        schedule="linear",
        T=1000,
        model=dict(
            image_size=28,
            in_channels=1,
            ch=24,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(7,),
            dropout=0.0,
            norm_groups=8,
        ),
        train=TrainConfig(
            steps=3_200,
            batch_size=64,
            lr=2e-3,
            warmup_steps=200,
            grad_clip=1.0,
            ema_decay=0.999,
            log_every=50,
            sample_every=400,
            eval_every=0,
            grid_size=64,
            grid_ddim_steps=50,
            channels_last=True,
        ),
        sample=SampleSettings(
            batch_size=250,
            ddim_steps=50,
            fid_samples=500,
            fid_real=10_000,
            kid_subset_size=250,
            fid_features="classifier",
        ),
        classifier_epochs=3,
        classifier_width=32,
        compare_steps=400,
        loss_weighting="min_snr",
        distil=dict(steps=1600, batch_size=64, sigma_max=10.0, log_every=50),
        autoencoder=dict(model=dict(ch=32, latent_channels=4), train=dict(steps=1200, batch_size=64, lr=1e-3, kl_weight=1e-6, log_every=50)),
    ),
    "full": Profile(
        name="full",
        description="a CUDA GPU: the DDPM paper's CIFAR-10 setup (35.7M parameters, batch 128)",
        dataset="cifar10",
        image_size=32,
        channels=3,
        subset=None,
        schedule="linear",
        T=1000,
        model=dict(
            image_size=32,
            in_channels=3,
            ch=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
            norm_groups=32,
        ),
        train=TrainConfig(
            steps=800_000,
            batch_size=128,
            lr=2e-4,
            warmup_steps=5_000,
            grad_clip=1.0,
            ema_decay=0.9999,
            log_every=100,
            sample_every=10_000,
            eval_every=50_000,
            grid_size=64,
            grid_ddim_steps=100,
        ),
        sample=SampleSettings(
            batch_size=500,
            ddim_steps=100,
            fid_samples=10_000,
            fid_real=50_000,
            kid_subset_size=1_000,
            fid_features="auto",
        ),
        classifier_epochs=15,
        classifier_width=64,
        compare_steps=100_000,
        distil=dict(steps=100_000, batch_size=128, sigma_max=80.0, log_every=100),
        autoencoder=dict(model=dict(ch=64, latent_channels=4), train=dict(steps=50_000, batch_size=128, lr=2e-4, kl_weight=1e-6, log_every=100)),
    ),
}


def get_profile(name: str | None = None, device: torch.device | None = None) -> Profile:
    """The profile ``name``, else ``$DIFFUSION_PROFILE``, else the device's default.

    The default is "full" on CUDA and "laptop" on MPS or the CPU.
    """
    name = name or os.environ.get("DIFFUSION_PROFILE") or None
    if name is None:
        if device is None:
            from helpers.device import pick_device

            device = pick_device()
        name = "full" if device.type == "cuda" else "laptop"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose {', '.join(PROFILES)}")
    return PROFILES[name]


def setup(seed: int = 0) -> tuple[torch.device, Profile]:
    """A notebook's first cell: pick the device and profile, seed everything, print all three.

    Also makes figures compact (80 dpi), so that notebooks with stored outputs stay small.
    """
    import matplotlib.pyplot as plt

    from helpers.device import describe, pick_device, seed_everything

    device = pick_device()
    profile = get_profile(device=device)
    seed_everything(seed)
    plt.rcParams["figure.dpi"] = 80
    print(f"device: {describe(device)}\nprofile: {profile.name} ({profile.description})\nseed: {seed}")
    return device, profile
