"""Consistency distillation as a run (Song et al. 2023, algorithm 2): the ``Distiller`` trains a
student consistency function from a frozen teacher with ``helpers.consistency.cd_loss``, keeps the
target EMA and a sampling EMA, and saves and resumes exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, load_checkpoint, non_finite, save_checkpoint
from helpers.config import DistilConfig
from helpers.consistency import SIGMA_DATA, ConsistencyFunction, cd_loss, cd_sigmas, consistency_record
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.ema import EMA
from helpers.paths import portable_path
from helpers.runs import SAVE_MINUTES, RunLock, deferred_interrupts
from helpers.solvers import Denoiser

__all__ = ["Distiller"]


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
