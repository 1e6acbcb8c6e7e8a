"""Profiles: one name picks the scale of everything (data, model, training, sampling, metrics).

``DIFFUSION_PROFILE`` selects the profile; without it the device decides (CUDA -> gpu, otherwise
laptop; full, the DDPM paper's run, only by name). Every profile writes under its own
``artifacts/<profile>/`` so a smoke run never overwrites a real one.

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
from helpers.validate import choice, fraction, integer, number

__all__ = [
    "TrainConfig",
    "DistilConfig",
    "AutoencoderConfig",
    "RESUMABLE_SETTINGS",
    "RESUMABLE_RUN_SETTINGS",
    "OPTIMIZERS",
    "LR_DECAYS",
    "TIMESTEP_SAMPLINGS",
    "SampleSettings",
    "Profile",
    "PROFILES",
    "get_profile",
    "setup",
]


# What a resumed run may change; every other setting must match the checkpoint's for the
# continuation to be the same run (the data position, for one, counts batches of batch_size).
# What a resumed distillation or autoencoder run may change.
RESUMABLE_RUN_SETTINGS = ("steps", "log_every")

RESUMABLE_SETTINGS = frozenset(
    {"steps", "log_every", "sample_every", "grid_size", "grid_ddim_steps", "eval_every", "amp", "compile", "channels_last"}
)


OPTIMIZERS = ("adam", "adamw")
LR_DECAYS = ("none", "cosine", "linear")
TIMESTEP_SAMPLINGS = ("uniform", "importance")


def _setting(default: Any = MISSING, *, help: str, group: str = "optimisation", **meta: Any) -> Any:
    """A TrainConfig field; ``help`` and ``group`` become its flag in ``python -m helpers train``."""
    return field(default=default, metadata={"help": help, "group": group, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run, in one place: each profile holds one (``profile.train``), the
    ``Trainer`` takes one, checkpoints store one, and ``python -m helpers train`` makes a flag of
    every field (its help text is in the field's metadata). DDPM's values (Ho et al. 2020,
    appendix B) are the full profile's."""

    steps: int = _setting(help="train until this many optimiser steps in total")
    batch_size: int = _setting(help="images per step")
    lr: float = _setting(help="peak learning rate")
    warmup_steps: int = _setting(0, help="linear learning-rate warm-up steps")
    lr_decay: str = _setting("none", help="after the warm-up: none (constant), cosine or linear decay to 0 at `steps`", choices=LR_DECAYS)
    timesteps: str = _setting(
        "uniform", help="t of each image: uniform, or importance (p(t) from the loss, weighted back to the same objective: helpers.timesteps)", choices=TIMESTEP_SAMPLINGS
    )
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
    amp: bool | None = _setting(None, help="mixed precision: bf16 autocast on GPUs with native bf16 (compute capability 8+), fp16 with a gradient scaler on 7.x; None: wherever the device has one", group="speed")
    compile: bool = _setting(False, help="torch.compile the model", group="speed")
    channels_last: bool = _setting(False, help="channels_last memory format of the U-Net (never on MPS, where it is slow)", group="speed")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> TrainConfig:
        """The profile's training settings, with ``overrides`` on top."""
        return _override(profile.train, overrides)

    def lr_factor(self, k: int) -> float:
        """The learning rate of step k (from 0) is ``lr * lr_factor(k)``: a linear warm-up
        min(1, (k + 1) / warmup_steps), then with ``lr_decay`` a fall to 0 at step ``steps`` over
        f = (k - warmup_steps) / (steps - warmup_steps), cosine (1 + cos(pi f)) / 2 (Loshchilov &
        Hutter 2017, without restarts) or linear 1 - f; 0 from ``steps`` on."""
        if k < self.warmup_steps or self.lr_decay == "none":
            return min(1.0, (k + 1) / max(self.warmup_steps, 1))
        f = min(1.0, (k - self.warmup_steps) / max(self.steps - self.warmup_steps, 1))
        return (1 + math.cos(math.pi * f)) / 2 if self.lr_decay == "cosine" else 1 - f

    def resume_conflicts(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{setting: (saved, now)} for settings outside ``RESUMABLE_SETTINGS`` that differ from a
        checkpoint's ``train`` entry. Switching EMA on for a run saved without it is allowed; with a
        decaying learning rate ``steps`` sets the schedule, so it must match too."""
        conflicts = {}
        for name, now in asdict(self).items():
            if name in RESUMABLE_SETTINGS and not (name == "steps" and self.lr_decay != "none") or name not in saved:
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
            integer(name, getattr(self, name))
        for name in ("warmup_steps", "sample_every", "eval_every", "seed"):
            integer(name, getattr(self, name), minimum=0)
        number("lr", self.lr)
        if self.grad_clip is not None:
            number("grad_clip", self.grad_clip, inclusive=True)
        number("weight_decay", self.weight_decay, inclusive=True)
        if self.ema_decay is not None:
            fraction("ema_decay", self.ema_decay)
        fraction("p_uncond", self.p_uncond)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("lr_decay", self.lr_decay, LR_DECAYS)
        choice("timesteps", self.timesteps, TIMESTEP_SAMPLINGS)


def _option(default: Any, help: str) -> Any:
    """A DistilConfig or AutoencoderConfig field; ``help`` becomes its flag's help on the command line."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DistilConfig:
    """Settings of a consistency-distillation run, in one place: profiles hold their values
    (``profile.distil``), ``Distiller`` takes one, checkpoints store one, and ``python -m helpers
    distil`` makes a flag of every field. Song et al. 2023 use N = 18 and mu = 0.95 for CD
    on CIFAR-10."""

    steps: int = _option(800, "distil until this many optimiser steps in total")
    batch_size: int = _option(64, "images per step")
    lr: float = _option(2e-4, "Adam's learning rate")
    n_levels: int = _option(18, "N, the noise levels of the CD grid (a Karras grid)")
    sigma_max: float | None = _option(None, "top of the grid, where one-step sampling starts (default: the teacher's sigma_max)")
    rho: float = _option(7.0, "rho of the Karras grid")
    target_decay: float = _option(0.95, "mu, the decay of the EMA of the student that makes the targets")
    ema_decay: float = _option(0.999, "decay of the EMA of the student that is sampled from")
    distance: str = _option("pseudo-huber", "d, the distance between student and target: pseudo-huber or l2")
    teacher_step: str = _option("heun", "the teacher's ODE step between adjacent levels: heun or euler (= DDIM)")
    grad_clip: float = _option(1.0, "clip the gradient norm to this (0: no clipping)")
    log_every: int = _option(50, "log the mean loss every N steps")
    seed: int = _option(0, "seed of the levels, the noise and the data order")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> DistilConfig:
        """The profile's distillation settings (``profile.distil``) with ``overrides`` on top."""
        return _override(profile.distil, overrides)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            integer(name, getattr(self, name))
        integer("n_levels", self.n_levels, minimum=2)
        integer("seed", self.seed, minimum=0)
        choice("distance", self.distance, DISTANCES)
        choice("teacher step", self.teacher_step, TEACHER_STEPS)
        fraction("target_decay", self.target_decay)
        fraction("ema_decay", self.ema_decay)
        number("lr", self.lr)
        number("rho", self.rho)
        number("grad_clip", self.grad_clip, inclusive=True)
        if self.sigma_max is not None:
            number("sigma_max", self.sigma_max)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Settings of latent diffusion's autoencoder (``helpers.autoencoder``) and of its training run
    (``helpers.autoencoder_training``), in one place: profiles hold one (``profile.autoencoder``),
    the ``AutoencoderTrainer`` takes one and checkpoints store one. Training minimises L1
    reconstruction + ``kl_weight`` KL with Adam (no clipping)."""

    steps: int = _option(1200, "train until this many optimiser steps in total")
    batch_size: int = _option(64, "images per step")
    lr: float = _option(1e-3, "Adam's learning rate")
    kl_weight: float = _option(1e-6, "beta, the weight of the KL term beside the L1 reconstruction error")
    log_every: int = _option(50, "log the mean L1 and KL every N steps")
    seed: int = _option(0, "seed of the posterior samples and the data order")
    ch: int = _option(32, "the autoencoder's width (channels of its first level)")
    latent_channels: int = _option(4, "channels of the latent")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> AutoencoderConfig:
        """The profile's autoencoder settings (``profile.autoencoder``) with ``overrides`` on top."""
        return _override(profile.autoencoder, overrides)

    def model_config(self, image_size: int, channels: int) -> dict[str, Any]:
        """The ``Autoencoder`` keyword arguments for images of ``image_size`` and ``channels``."""
        return dict(image_size=image_size, in_channels=channels, ch=self.ch, latent_channels=self.latent_channels)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ch", "latent_channels"):
            integer(name, getattr(self, name))
        integer("seed", self.seed, minimum=0)
        number("lr", self.lr)
        number("kl_weight", self.kl_weight, inclusive=True)


def _override(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with ``overrides`` on top; an unknown name is a TypeError that names it."""
    unknown = set(overrides) - {f.name for f in fields(config)}
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} settings: {', '.join(sorted(unknown))}")
    return replace(config, **overrides)


@dataclass(frozen=True)
class SampleSettings:
    """Sampling and evaluation settings."""

    batch_size: int  # images per sampling batch
    ddim_steps: int
    fid_samples: int  # generated images per FID/KID evaluation
    fid_real: int  # real images behind the reference statistics
    kid_subset_size: int
    fid_features: str  # "auto" (Inception if its weights can be had), "inception" or "classifier"
    ddim_eta: float  # the Evaluator's DDIM noise level: 0 deterministic, 1 DDPM's posterior variance (DDIM eq. 16)


@dataclass(frozen=True)
class Profile:
    """Everything one scale of the course needs. The image side and channels are stated once
    (``image_size``, ``channels``); ``model``, the keyword set of ``UNet``, adds them to ``unet``."""

    name: str
    description: str
    dataset: str  # "fashion_mnist", "mnist" or "cifar10"
    image_size: int
    channels: int
    subset: int | None  # train on the first ``subset`` images (None: all)
    schedule: str
    T: int
    unet: dict[str, Any]  # the U-Net's architecture: UNet keyword arguments besides image_size and in_channels
    train: TrainConfig
    sample: SampleSettings
    classifier_epochs: int  # the feature/score classifier behind offline FID (helpers.classifier)
    classifier_width: int
    compare_steps: int  # per model, where a notebook trains several to compare them (06, 07)
    clip_steps: int  # notebook 13's small CLIP, batches of 256 (helpers.clip_training)
    prediction: str = "eps"  # what the network predicts (helpers.diffusion)
    loss_weighting: str = "none"
    distil: DistilConfig = field(default_factory=DistilConfig)  # consistency distillation (helpers.distillation)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # latent diffusion's autoencoder (helpers.autoencoder_training)
    captions_profile: str | None = None  # notebook 13's profile where this one's data has no captions (they name Fashion-MNIST's classes)

    def for_captions(self) -> Profile:
        """The profile notebook 13 runs under: this one on Fashion-MNIST, else its ``captions_profile``."""
        if self.dataset == "fashion_mnist":
            return self
        if self.captions_profile is None:
            raise ValueError(f"the {self.name} profile trains on {self.dataset}, which has no captions, and names no captions_profile for notebook 13")
        return PROFILES[self.captions_profile]

    @property
    def model(self) -> dict[str, Any]:
        """The U-Net's keyword arguments: ``UNet(**profile.model)`` takes the profile's images."""
        return {"image_size": self.image_size, "in_channels": self.channels, **self.unet}

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
        unet=dict(
            ch=16,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
            norm_groups=8,
        ),
        train=TrainConfig(
            steps=120,  # CI minutes: notebooks 03 and 12 each train this long under smoke
            batch_size=32,
            lr=1e-3,
            warmup_steps=20,
            lr_decay="cosine",  # as laptop: CI runs the notebooks through the same code paths
            timesteps="importance",
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
            fid_samples=64,  # CI minutes: every FID of the notebooks under smoke samples this many
            fid_real=1024,
            kid_subset_size=50,
            fid_features="classifier",
            ddim_eta=1.0,  # as laptop
        ),
        classifier_epochs=1,
        classifier_width=16,
        compare_steps=30,  # CI minutes: notebooks 07, 08 and 12 each train several models of this length
        clip_steps=8,
        distil=DistilConfig(steps=15, batch_size=16, sigma_max=20.0, log_every=10),
        autoencoder=AutoencoderConfig(steps=60, batch_size=32, lr=2e-3, kl_weight=1e-6, log_every=10, ch=16, latent_channels=4),
    ),
    "laptop": Profile(
        name="laptop",
        description="a 2-core CPU upward: a 0.63M-parameter U-Net on all of Fashion-MNIST at 28x28, min-SNR-5 weighting, t importance-sampled, learning rate decayed to 0 (docs/laptop-recipe.md)",
        dataset="fashion_mnist",
        image_size=28,
        channels=1,
        subset=None,
        schedule="linear",
        T=1000,
        unet=dict(
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
            lr=4e-3,
            warmup_steps=200,
            lr_decay="cosine",
            timesteps="importance",
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
            ddim_eta=1.0,  # eta = 1 beat eta = 0 on all five laptop models scored both ways at 2,000 samples (docs/laptop-recipe.md, section 9)
        ),
        classifier_epochs=3,
        classifier_width=32,
        compare_steps=300,
        clip_steps=1500,
        loss_weighting="min_snr",
        distil=DistilConfig(steps=800, batch_size=64, sigma_max=10.0, log_every=50),
        autoencoder=AutoencoderConfig(steps=1200, batch_size=64, lr=1e-3, kl_weight=1e-6, log_every=50, ch=32, latent_channels=4),
    ),
    "gpu": Profile(
        name="gpu",
        description="one CUDA GPU, the default there: a 20.1M-parameter U-Net on CIFAR-10 at 32x32 with flips, 25,000 steps of batch 128 in bf16, compiled; the course in about 2 hours on an A100-class GPU (estimated: helpers.budget)",
        dataset="cifar10",
        image_size=32,
        channels=3,
        subset=None,
        schedule="linear",
        T=1000,
        unet=dict(
            ch=96,  # DDPM's layout at three quarters of its width: 21.2 GFLOPs per image forward and backward against 37.3
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
            norm_groups=32,
        ),
        train=TrainConfig(
            steps=25_000,  # 3.2M images seen: notebook 03's training in about 24 minutes at 1,250 img/s of the 35.7M model's FLOPs (helpers.budget)
            batch_size=128,
            lr=5e-4,  # EDM's 1e-3 at batch 512 (Karras et al. 2022, table 7), scaled by sqrt(128 / 512)
            warmup_steps=1_000,
            lr_decay="cosine",  # as the laptop recipe (docs/laptop-recipe.md): the run ends at a learning rate of 0
            timesteps="importance",
            grad_clip=1.0,
            ema_decay=0.9995,  # half-life 1,386 steps, 5.5% of the images seen (EDM's code caps it at 5%: ema_rampup_ratio 0.05)
            log_every=100,
            sample_every=2_500,
            eval_every=0,
            grid_size=64,
            grid_ddim_steps=50,
            compile=True,
            channels_last=True,
        ),
        sample=SampleSettings(
            batch_size=500,
            ddim_steps=50,
            fid_samples=5_000,  # the notebooks' comparisons; a headline number wants 10,000 (the test split) or more
            fid_real=50_000,
            kid_subset_size=1_000,
            fid_features="auto",
            ddim_eta=0.0,  # unmeasured here; on CIFAR-10, eta = 0 is the better at 50 steps (Song, Meng & Ermon 2021, Table 1)
        ),
        classifier_epochs=15,
        classifier_width=64,
        compare_steps=2_500,
        clip_steps=1_500,  # unused: notebook 13 runs on Fashion-MNIST, under captions_profile
        loss_weighting="min_snr",
        distil=DistilConfig(steps=4_000, batch_size=128, sigma_max=80.0, log_every=100),
        autoencoder=AutoencoderConfig(steps=5_000, batch_size=128, lr=1e-3, kl_weight=1e-6, log_every=100, ch=64, latent_channels=4),
        captions_profile="laptop",  # notebook 13 at laptop scale on the same GPU
    ),
    "full": Profile(
        name="full",
        description="the DDPM paper's CIFAR-10 setup (35.7M parameters, 800,000 steps of batch 128: about a day and a half on an RTX 4090), by name only",
        dataset="cifar10",
        image_size=32,
        channels=3,
        subset=None,
        schedule="linear",
        T=1000,
        unet=dict(
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
            ddim_eta=0.0,  # as gpu
        ),
        classifier_epochs=15,
        classifier_width=64,
        compare_steps=100_000,
        clip_steps=20_000,  # unused: notebook 13 runs under captions_profile
        distil=DistilConfig(steps=50_000, batch_size=128, sigma_max=80.0, log_every=100),
        autoencoder=AutoencoderConfig(steps=50_000, batch_size=128, lr=2e-4, kl_weight=1e-6, log_every=100, ch=64, latent_channels=4),
        captions_profile="laptop",
    ),
}


def get_profile(name: str | None = None, device: torch.device | None = None) -> Profile:
    """The profile ``name``, else ``$DIFFUSION_PROFILE``, else the device's default.

    The default is "gpu" on CUDA and "laptop" on MPS or the CPU; "full" (the paper's 800,000
    steps) and "smoke" are chosen by name only.
    """
    name = name or os.environ.get("DIFFUSION_PROFILE") or None
    if name is None:
        if device is None:
            from helpers.device import pick_device

            device = pick_device()
        name = "gpu" if device.type == "cuda" else "laptop"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose {', '.join(PROFILES)}")
    return PROFILES[name]


def setup(seed: int = 0) -> tuple[torch.device, Profile]:
    """A notebook's first cell: pick the device and profile, seed everything, print all three
    (on CUDA with ``helpers.device.configure_cuda``'s TF32 and cuDNN autotuning).

    Also makes figures compact (80 dpi), so that notebooks with stored outputs stay small.
    """
    import matplotlib.pyplot as plt

    from helpers.device import configure_cuda, describe, pick_device, seed_everything

    device = pick_device()
    profile = get_profile(device=device)
    seed_everything(seed)
    speed = configure_cuda(device)
    plt.rcParams["figure.dpi"] = 80
    print(f"device: {describe(device)}{f' ({speed})' if speed else ''}\nprofile: {profile.name} ({profile.description})\nseed: {seed}")
    return device, profile
