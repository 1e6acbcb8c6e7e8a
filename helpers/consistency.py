"""Consistency models (Song et al. 2023) distilled from a trained diffusion model.

A consistency function maps every point of one probability-flow ODE trajectory to the
trajectory's origin: f(x_sigma, sigma) = x_{sigma_min} for all sigma, so one evaluation at
sigma_max turns noise into an image. It is parameterised so that the boundary condition
f(x, sigma_min) = x holds exactly (Song et al. 2023, eq. 7, with EDM's sigma_data = 0.5):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma),
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2).

F is the course's U-Net read in EDM's units, F = (D - c_skip^EDM x) / c_out^EDM with D the
``solvers.Denoiser`` of the same network and c^EDM the same coefficients without the shift by
sigma_min (Karras et al. 2022, table 1). A student copied from the teacher therefore starts as the
teacher's denoiser, which is how Song et al. initialise consistency distillation.

Consistency distillation (CD, their algorithm 2) on the Karras grid sigma_1 = sigma_min < ... <
sigma_N = sigma_max of ``solvers.karras_sigmas``: noise x_0 to x_{n+1} = x_0 + sigma_{n+1} z, take
one teacher ODE step (Heun or Euler, ``solvers.heun_step``/``euler_step``) down to sigma_n, and
pull f_theta(x_{n+1}, sigma_{n+1}) towards f_target(x_hat_n, sigma_n), where the target network is
an EMA of the student that receives no gradient:

    L = E_n d( f_theta(x_{n+1}, sigma_{n+1}), stopgrad f_target(x_hat_n, sigma_n) ).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, load_checkpoint, non_finite, save_checkpoint
from helpers.config import Profile, portable_path
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.ema import EMA
from helpers.run_safety import SAVE_MINUTES, RunLock, deferred_interrupts
from helpers.samplers import eval_mode, starting_noise
from helpers.solvers import Denoiser, Sigma, euler_step, heun_step, karras_sigmas

__all__ = [
    "SIGMA_DATA",
    "c_skip",
    "c_out",
    "ConsistencyFunction",
    "DISTANCES",
    "TEACHER_STEPS",
    "cd_sigmas",
    "cd_target",
    "cd_loss",
    "DistilConfig",
    "Distiller",
    "MultistepConsistency",
    "consistency_record",
]

SIGMA_DATA = 0.5  # the data's standard deviation assumed by EDM's and CM's coefficients (images in [-1, 1])


def c_skip(sigma: Sigma, sigma_min: float, sigma_data: float = SIGMA_DATA) -> Sigma:
    """sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2): 1 at sigma_min, towards 0 at high noise."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: Sigma, sigma_min: float, sigma_data: float = SIGMA_DATA) -> Sigma:
    """(sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2): exactly 0 at sigma_min."""
    return (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5


class ConsistencyFunction:
    """f(x, sigma) = c_skip x + c_out F(x, sigma) for a course U-Net (see the module docstring).

    ``sigma`` is a float or one noise level per image as a [B, 1, 1, 1] tensor, as for ``Denoiser``.
    """

    def __init__(self, model: nn.Module, d: Diffusion) -> None:
        self.model = model
        self.denoiser = Denoiser(model, d)
        self.sigma_min, self.sigma_max = self.denoiser.sigma_min, self.denoiser.sigma_max

    def __call__(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(device=x.device, dtype=x.dtype)
        # F: the network's output in EDM's units (c^EDM are c_skip and c_out with sigma_min = 0)
        f_net = (self.denoiser(x, sigma) - c_skip(sigma, 0.0) * x) / c_out(sigma, 0.0)
        return c_skip(sigma, self.sigma_min) * x + c_out(sigma, self.sigma_min) * f_net


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per image, ||a - b||^2."""
    return (a - b).flatten(1).pow(2).sum(1)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per image, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, section 3.3):
    like L2 for small errors and like L1 for large ones, so outliers pull less."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return (l2(a, b) + c**2).sqrt() - c


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"l2": l2, "pseudo-huber": pseudo_huber}
TEACHER_STEPS = {"heun": heun_step, "euler": euler_step}  # euler is DDIM in these coordinates


def cd_sigmas(n_levels: int, denoiser: Denoiser, sigma_max: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """The CD grid sigma_1 = sigma_min < ... < sigma_N = sigma_max (float64; default sigma_max: the
    model's): ``karras_sigmas`` ascending, without its final 0."""
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"consistency distillation needs at least 2 noise levels, got {n_levels!r}")
    return karras_sigmas(n_levels, denoiser.sigma_min, denoiser.sigma_max if sigma_max is None else sigma_max, rho)[:-1].flip(0)


@torch.no_grad()
def cd_target(
    target: Callable[[torch.Tensor, Sigma], torch.Tensor],
    teacher: Callable[[torch.Tensor, Sigma], torch.Tensor],
    x_next: torch.Tensor,
    sigma_next: Sigma,
    sigma: Sigma,
    teacher_step: str = "heun",
) -> torch.Tensor:
    """f_target(x_hat_n, sigma_n), x_hat_n one teacher ODE step from (x_{n+1}, sigma_{n+1}) down to
    sigma_n; without gradient. ``teacher`` is a denoiser D(x, sigma), ``target`` a consistency function."""
    return target(TEACHER_STEPS[teacher_step](teacher, x_next, sigma_next, sigma), sigma)


def cd_loss(
    student: Callable[[torch.Tensor, Sigma], torch.Tensor],
    target: Callable[[torch.Tensor, Sigma], torch.Tensor],
    teacher: Callable[[torch.Tensor, Sigma], torch.Tensor],
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    n: torch.Tensor,
    z: torch.Tensor,
    distance: str = "pseudo-huber",
    teacher_step: str = "heun",
) -> torch.Tensor:
    """Per-image CD losses d(f_theta(x_{n+1}, sigma_{n+1}), ``cd_target``) with x_{n+1} = x_0 + sigma_{n+1} z.

    ``sigmas`` is the ascending grid of ``cd_sigmas``; ``n`` holds one index in 0..N-2 per image.
    """
    view = (len(x0),) + (1,) * (x0.dim() - 1)
    sigma = sigmas[n.cpu()].to(x0).view(view)
    sigma_next = sigmas[n.cpu() + 1].to(x0).view(view)
    x_next = x0 + sigma_next * z
    wanted = cd_target(target, teacher, x_next, sigma_next, sigma, teacher_step)
    return DISTANCES[distance](student(x_next, sigma_next), wanted)


def _setting(default: Any, help: str) -> Any:
    """A DistilConfig field; ``help`` becomes its flag's help in ``python -m helpers.distil``."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DistilConfig:
    """Settings of a consistency-distillation run, in one place: profiles hold their values
    (``profile.distil``), ``Distiller`` takes one, checkpoints store one, and ``python -m
    helpers.distil`` makes a flag of every field. Song et al. 2023 use N = 18 and mu = 0.95 for CD
    on CIFAR-10."""

    steps: int = _setting(1600, "distil until this many optimiser steps in total")
    batch_size: int = _setting(64, "images per step")
    lr: float = _setting(2e-4, "Adam's learning rate")
    n_levels: int = _setting(18, "N, the noise levels of the CD grid (a Karras grid)")
    sigma_max: float | None = _setting(None, "top of the grid, where one-step sampling starts (default: the teacher's sigma_max)")
    rho: float = _setting(7.0, "rho of the Karras grid")
    target_decay: float = _setting(0.95, "mu, the decay of the EMA of the student that makes the targets")
    ema_decay: float = _setting(0.999, "decay of the EMA of the student that is sampled from")
    distance: str = _setting("pseudo-huber", "d, the distance between student and target: pseudo-huber or l2")
    teacher_step: str = _setting("heun", "the teacher's ODE step between adjacent levels: heun or euler (= DDIM)")
    grad_clip: float = _setting(1.0, "clip the gradient norm to this (0: no clipping)")
    log_every: int = _setting(50, "log the mean loss every N steps")
    seed: int = _setting(0, "seed of the levels, the noise and the data order")

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


def consistency_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """What a distilled checkpoint says about itself (its ``extra['consistency']``), or None for a
    diffusion model."""
    return (ckpt.get("extra") or {}).get("consistency")


class Distiller:
    """Consistency distillation of ``teacher`` (an eps/x0/v U-Net under ``d``) on ``dataset``.

    The student and the target start as copies of the teacher. Each step draws per-image levels n
    and noise z from a CPU generator (its state is saved, so a resumed run continues exactly),
    minimises ``cd_loss`` with Adam and gradient clipping, then moves the target towards the
    student (decay ``target_decay``, no warm-up) and the sampling EMA (``ema_decay``, warm-up).
    """

    def __init__(
        self,
        teacher: nn.Module,
        d: Diffusion,
        dataset: Dataset,
        config: DistilConfig,
        device: torch.device | str = "cpu",
        teacher_path: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        from helpers.data import make_loader

        if config.batch_size > len(dataset):
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset)} images of the dataset")
        if config.sigma_max is not None and config.sigma_max > Denoiser(teacher, d).sigma_max:
            raise ValueError(f"sigma_max {config.sigma_max:g} lies above the teacher's highest noise level, {Denoiser(teacher, d).sigma_max:.4g}")
        self.config, self.d, self.device, self.progress = config, d, torch.device(device), progress
        self.teacher_path = None if teacher_path is None else portable_path(teacher_path)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.target = copy.deepcopy(self.teacher)  # eval mode, no gradient: only ever loaded from target_ema
        self.target_ema = EMA(self.student, config.target_decay, warmup=False)
        self.ema = EMA(self.student, config.ema_decay)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr)
        self.teacher_fn = Denoiser(self.teacher, d)
        self.student_fn, self.target_fn = ConsistencyFunction(self.student, d), ConsistencyFunction(self.target, d)
        self.sigmas = cd_sigmas(config.n_levels, self.teacher_fn, config.sigma_max, config.rho)
        self.dataset, self.generator = dataset, cpu_generator(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._make_loader = lambda start: make_loader(dataset, config.batch_size, seed=config.seed, start=start)

    def train_step(self, x0: torch.Tensor) -> float:
        """One optimiser step on a batch of images in [-1, 1]; returns the mean loss."""
        cfg = self.config
        x0 = x0.to(self.device)
        n = torch.randint(0, cfg.n_levels - 1, (len(x0),), generator=self.generator)
        z = torch.randn(x0.shape, generator=self.generator).to(self.device)
        loss = cd_loss(self.student_fn, self.target_fn, self.teacher_fn, x0, self.sigmas, n, z, cfg.distance, cfg.teacher_step).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip if cfg.grad_clip else math.inf)
        self.optimizer.step()
        self.target_ema.update(self.student)
        self.target_ema.copy_to(self.target)
        self.ema.update(self.student)
        self.step += 1
        return float(loss.detach())

    def train(self, steps: int | None = None, save_to: str | Path | None = None, profile: str | None = None) -> list[dict[str, float]]:
        """Run up to ``config.steps`` (or ``steps`` more), logging the mean loss every ``log_every``
        steps. With ``save_to``: a checkpoint every ``SAVE_MINUTES`` minutes and at the end, one run
        per file (``RunLock``), and Ctrl-C or SIGTERM save after the step in flight and raise
        KeyboardInterrupt. Raises FloatingPointError if the loss stops being finite."""
        cfg = self.config
        end = min(cfg.steps, self.step + steps) if steps is not None else cfg.steps
        batches = iter(self._make_loader(self.step))
        losses, t0, last_save = [], time.perf_counter(), time.monotonic()
        with contextlib.ExitStack() as guards:
            stop: list[int] = []
            if save_to is not None:
                guards.enter_context(RunLock(save_to))
                stop = guards.enter_context(deferred_interrupts())
            bar = guards.enter_context(tqdm(total=end - self.step, desc="distilling", disable=not self.progress))
            while self.step < end:
                losses.append(self.train_step(next(batches)[0]))
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"the CD loss became {losses[-1]} at step {self.step}; lower the learning rate (now {cfg.lr:g})")
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    row = {"step": self.step, "loss": sum(losses) / len(losses), "seconds": time.perf_counter() - t0}
                    self.history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    losses = []
                if save_to is not None and (self.step == end or stop or time.monotonic() - last_save >= 60 * SAVE_MINUTES):
                    self.save(save_to, profile)
                    last_save = time.monotonic()
                    if stop:
                        raise KeyboardInterrupt(f"saved {save_to} at step {self.step}")
        return self.history

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``extra['consistency']``: which teacher, and the CD settings."""
        return {"teacher": self.teacher_path, "config": asdict(self.config), "sigma_data": SIGMA_DATA}

    def save(self, path: str | Path, profile: str | None = None) -> Path:
        """A checkpoint that ``load_model`` reads (the sampling EMA as its ``ema``) and ``load`` resumes."""
        broken = non_finite(self.student.named_parameters())
        if broken:
            raise FloatingPointError(f"the student's weights became non-finite by step {self.step} ({broken[0]}), so {path} was not overwritten")
        return save_checkpoint(path, {
            "model": self.student.state_dict(), "model_config": dict(self.student.config), "diffusion": self.d.config(),
            "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(), "target_ema": self.target_ema.state_dict(),
            "step": self.step, "history": self.history, "rng": {"cd": self.generator.get_state()}, "profile": profile,
            "extra": {"consistency": self.record()},
        })  # fmt: skip

    def load(self, path: str | Path) -> None:
        """Continue a run saved by ``save``: the same teacher's process, model and CD settings (only
        ``steps`` and ``log_every`` may change)."""
        ckpt = load_checkpoint(path, "cpu", model_config=dict(self.student.config), prediction=self.d.prediction)
        record = consistency_record(ckpt)
        if record is None:
            raise CheckpointError(f"{path} holds a diffusion model, not a consistency-distillation run to resume")
        now = asdict(self.config)
        diff = ", ".join(f"{k}={v!r} (not {now.get(k)!r})" for k, v in record["config"].items() if now.get(k) != v and k not in ("steps", "log_every"))
        if diff:
            raise CheckpointError(f"{path} was distilled with {diff}; resume with its settings")
        self.student.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.load_state_dict(ckpt["ema"])
        self.target_ema.load_state_dict(ckpt["target_ema"])
        self.target_ema.copy_to(self.target)
        self.generator.set_state(ckpt["rng"]["cd"])
        self.step, self.history = ckpt["step"], list(ckpt["history"])


@dataclass(frozen=True)
class MultistepConsistency:
    """Multistep consistency sampling (Song et al. 2023, algorithm 1) with ``nfe`` network evaluations:
    x_0 = f(x_T sqrt(1 + sigma_max^2), sigma_max), then for each intermediate level tau:
    x_0 = f(x_0 + sqrt(tau^2 - sigma_min^2) z, tau).

    ``sigma_max`` is the top of the grid the model was distilled on (None: the diffusion model's);
    ``sigmas`` the intermediate levels (nfe - 1 of them, decreasing), by default the inner points of
    ``karras_sigmas(nfe + 1)`` between sigma_max and sigma_min.
    """

    nfe: int = 1
    sigma_max: float | None = None
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 1:
            raise ValueError(f"nfe must be a positive number of network evaluations, got {self.nfe!r}")
        if self.sigma_max is not None and not (math.isfinite(self.sigma_max) and self.sigma_max > 0):
            raise ValueError(f"sigma_max must be a positive number, got {self.sigma_max}")
        if self.sigmas is not None:
            if len(self.sigmas) != self.nfe - 1:
                raise ValueError(f"{self.nfe} network evaluations need {self.nfe - 1} intermediate noise levels, got {len(self.sigmas)}")
            if any(not (math.isfinite(s) and s > 0) for s in self.sigmas) or list(self.sigmas) != sorted(self.sigmas, reverse=True):
                raise ValueError(f"intermediate noise levels must be positive and decreasing, got {self.sigmas}")

    def top(self, f: ConsistencyFunction) -> float:
        """The level sampling starts from."""
        return f.sigma_max if self.sigma_max is None else self.sigma_max

    def levels(self, f: ConsistencyFunction) -> list[float]:
        """The intermediate levels this sampler uses with ``f`` (nfe - 1 of them)."""
        if self.sigmas is not None:
            return list(self.sigmas)
        return [float(s) for s in karras_sigmas(self.nfe + 1, f.sigma_min, self.top(f))[1 : self.nfe]]

    def __str__(self) -> str:
        top = "" if self.sigma_max is None else f" from sigma {self.sigma_max:g}"
        inner = "" if self.nfe == 1 else f" via sigma {', '.join(f'{s:.3g}' for s in self.sigmas)}" if self.sigmas else " (Karras grid)"
        return f"consistency, {self.nfe} NFE{top}{inner}"

    @torch.no_grad()
    def sample(self, model: nn.Module, d: Diffusion, x_T: torch.Tensor | tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] from x_T ~ N(0, I), which becomes x_T sqrt(1 + sigma_max^2) as in ``Solver.sample``."""
        f = ConsistencyFunction(model, d)
        device, top = next(model.parameters()).device, self.top(f)
        with eval_mode(model):
            x0 = f(starting_noise(x_T, generator, device) * math.sqrt(1 + top**2), top)
            for tau in self.levels(f):
                z = starting_noise(tuple(x0.shape), generator, device)
                x0 = f(x0 + math.sqrt(max(tau**2 - f.sigma_min**2, 0.0)) * z, tau)
        return x0.clamp(-1, 1)
