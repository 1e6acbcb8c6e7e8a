"""Consistency distillation as a run (Song et al. 2023, algorithm 2): the ``Distiller`` trains a
student consistency function from a frozen teacher on the loss of ``helpers.consistency.cd_loss``,
keeps the target EMA and a sampling EMA, and is a ``GuardedRun`` (``helpers.runs``: total steps,
lock, Ctrl-C that saves, checkpoint cadence, no non-finite saves, exact resume).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from helpers.checkpoints import CheckpointError, rng_state, set_rng_state
from helpers.config import RESUMABLE_RUN_SETTINGS, DistilConfig
from helpers.consistency import SIGMA_DATA, ConsistencyFunction, cd_loss, cd_sigmas
from helpers.device import adam_options, cpu_generator, randn
from helpers.diffusion import Diffusion
from helpers.ema import EMA
from helpers.paths import portable_path
from helpers.runs import GuardedRun, conflicts, refuse_conflicts
from helpers.validate import batch_fits
from helpers.solvers import Denoiser

__all__ = ["Distiller"]


class Distiller(GuardedRun):
    """Consistency distillation of ``teacher`` (an eps/x0/v U-Net under ``d``) on ``dataset``.

    The student and the target start as copies of the teacher. Each step draws per-image levels n
    and noise z from a CPU generator (its state is saved, so a resumed run continues exactly),
    minimises the CD loss with Adam and gradient clipping, then moves the target towards the
    student (decay ``target_decay``, no warm-up) and the sampling EMA (``ema_decay``, warm-up).
    A step never waits for the device: the levels' sigmas are looked up in a table on the device,
    and the losses are read back at log steps only.
    """

    kind, desc = "consistency", "distilling"
    resume_hint = "load it (Distiller.load; python -m helpers distil ... --resume) to continue exactly from here"

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
        batch_fits(config.batch_size, len(dataset))  # before any work
        if config.sigma_max is not None and config.sigma_max > Denoiser(teacher, d).sigma_max:
            raise ValueError(f"sigma_max {config.sigma_max:g} lies above the teacher's highest noise level, {Denoiser(teacher, d).sigma_max:.4g}")
        self.config, self.d, self.device, self.progress = config, d, torch.device(device), progress
        self.teacher_path = None if teacher_path is None else portable_path(teacher_path)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.target = copy.deepcopy(self.teacher)  # eval mode, no gradient: only ever loaded from target_ema
        self.target_ema = EMA(self.student, config.target_decay, warmup=False)
        self.ema = EMA(self.student, config.ema_decay)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr, **adam_options(self.device))
        self.teacher_fn = Denoiser(self.teacher, d)
        self.student_fn, self.target_fn = ConsistencyFunction(self.student, d), ConsistencyFunction(self.target, d)
        self.sigmas = cd_sigmas(config.n_levels, self.teacher_fn, config.sigma_max, config.rho)  # float64, on the CPU
        self.levels = self.sigmas.to(torch.float32).to(self.device)  # the same grid in the images' dtype, on the device
        self.dataset, self.generator = dataset, cpu_generator(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []

    @property
    def model(self) -> nn.Module:
        """The network being trained (``GuardedRun``'s name for it)."""
        return self.student

    def _on_device(self, v: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the device without making the host wait (pinned memory, asynchronous copy on CUDA)."""
        return v.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else v.to(self.device)

    def train_step(self, x0: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch of images in [-1, 1]; returns the mean loss (a tensor on the
        device: reading it waits for the step)."""
        cfg = self.config
        x0 = x0.to(self.device, non_blocking=True)
        n = torch.randint(0, cfg.n_levels - 1, (len(x0),), generator=self.generator)
        z = randn(x0.shape, self.generator, self.device)
        losses = cd_loss(self.student_fn, self.target_fn, self.teacher_fn, x0, self.levels, self._on_device(n), z, cfg.distance, cfg.teacher_step)
        loss = losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip if cfg.grad_clip else math.inf)
        self.optimizer.step()
        self.target_ema.update(self.student)
        self.target_ema.copy_to(self.target)
        self.ema.update(self.student)
        self.step += 1
        return loss.detach()

    def begin(self) -> Iterator[Any]:
        self._losses: list[torch.Tensor] = []
        self._t0 = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)
        return self.loader(self.dataset, self.config.batch_size, self.config.seed)

    def advance(self, batches: Iterator[Any], end: int) -> dict[str, Any] | None:
        self._losses.append(self.train_step(next(batches)[0]))
        if self.step % self.config.log_every and self.step != end:
            return None
        losses = torch.stack(self._losses).tolist()
        loss = sum(losses) / len(losses)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the CD loss became {loss} by step {self.step}; lower the learning rate (now {self.config.lr:g})")
        self.history.append({"step": self.step, "loss": loss, "seconds": time.perf_counter() - self._t0})
        self._losses = []
        return {"loss": f"{loss:.4f}"}

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``extra['consistency']``: which teacher, and the CD settings."""
        return {"teacher": self.teacher_path, "config": asdict(self.config), "sigma_data": SIGMA_DATA}

    # ---- checkpoints (GuardedRun.save and .load) -------------------------------------------------

    def state_dict(self, profile: str | None = None) -> dict[str, Any]:
        """A checkpoint that ``load_model`` reads (the sampling EMA as its ``ema``) and ``load`` resumes."""
        return {
            "model": self.student.state_dict(), "model_config": dict(self.student.config), "diffusion": self.d.config(),
            "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(), "target_ema": self.target_ema.state_dict(),
            "step": self.step, "history": self.history, "rng": {"cd": self.generator.get_state(), "global": rng_state()},
            "profile": profile, "extra": {"consistency": self.record()},
        }  # fmt: skip

    def expects(self) -> dict[str, Any]:
        return {"model_config": dict(self.student.config), "prediction": self.d.prediction}

    def check(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """The same teacher's process, model and CD settings (only ``steps`` and ``log_every`` may change)."""
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{path} holds a consistency model without its training state (a shipped model): there is no run to resume")
        saved = ((ckpt.get("extra") or {}).get("consistency") or {}).get("config") or {}
        refuse_conflicts(path, conflicts(saved, asdict(self.config), RESUMABLE_RUN_SETTINGS), "distilled")

    def restore(self, ckpt: dict[str, Any], path: str | Path) -> None:
        self.student.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.load_state_dict(ckpt["ema"])
        self.target_ema.load_state_dict(ckpt["target_ema"])
        self.target_ema.copy_to(self.target)
        self.generator.set_state(ckpt["rng"]["cd"])
        if "global" in ckpt["rng"]:  # the data's random flips (CIFAR-10); files before it did not keep them
            set_rng_state(ckpt["rng"]["global"])
        self.step, self.history = ckpt["step"], list(ckpt["history"])
