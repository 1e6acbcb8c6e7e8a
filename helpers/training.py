"""The training loop shared by notebook 03 and ``python -m helpers.train``.

One ``Trainer`` holds the model, optimiser, LR warm-up, EMA and the data position, and runs
steps of

    x_0 ~ data,  t ~ U{0..T-1},  eps ~ N(0, I),  loss = w(t) || model(x_t, t) - target ||^2

with gradient clipping, bf16 autocast on CUDA, optional ``torch.compile`` and channels_last, a
tqdm bar (loss, img/s), a metrics log (``helpers.train_log``: JSON lines, the loss by timestep
bucket), sample grids and FID/KID evaluations every N steps. ``save``/``load`` make resuming
exact: N steps straight give the same weights as N/2, save, load into fresh objects, N/2.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, damaged, load_checkpoint, non_finite, rng_state, save_checkpoint, set_rng_state
from helpers.config import TrainConfig
from helpers.device import amp_dtype, cpu_generator
from helpers.diffusion import Diffusion
from helpers.distributed import World
from helpers.ema import EMA
from helpers.runs import SAVE_MINUTES, RunLock, deferred_interrupts
from helpers.samplers import DDIM, Guided, sample
from helpers.train_log import N_BUCKETS, TrainLog, Window

__all__ = ["TrainConfig", "Trainer"]  # TrainConfig is defined in helpers.config, with the profiles


class Trainer:
    """Trains ``model`` on ``dataset`` under ``diffusion``; see the module docstring.

    Args:
        model: the U-Net (moved to ``device``).
        diffusion: the process (schedule, prediction type, loss weighting).
        dataset: (image in [-1, 1], label) pairs.
        config: the run's settings.
        device: where to train.
        out_dir: where the metrics log (``metrics.jsonl``) and sample grids (``grids/``) go; None
            keeps them in memory only (``history``, ``grids``).
        evaluator: called as ``evaluator(model)`` every ``eval_every`` steps, on the raw weights
            and (with EMA) on the averaged ones; returns a dict of numbers for the log. With several
            processes every one calls it: an ``Evaluator`` with the same ``world`` shares the work.
        progress: show a tqdm bar.
        num_workers: DataLoader worker processes (0, the default, is safe in notebooks and keeps
            resuming exact when the dataset draws random flips).
        extra: plain data every checkpoint of this run carries in ``extra`` (a latent model's
            autoencoder record, ``helpers.latent``).
        world: this process's place among several (``helpers.distributed``); default: the torchrun
            environment, or one process without it. With several, ``config.batch_size`` is the
            global batch, the model is wrapped in DistributedDataParallel, every rank keeps the
            same EMA (its weights stay identical), evaluations are shared, and only rank 0 logs,
            draws grids and saves while the others wait for it.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: Diffusion,
        dataset: Dataset,
        config: TrainConfig,
        device: torch.device | str = "cpu",
        out_dir: str | Path | None = None,
        evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
        progress: bool = True,
        num_workers: int = 0,
        world: World | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.world = World.from_env() if world is None else world
        self.extra = dict(extra or {})
        self.device = self.world.device(torch.device(device))
        self.config, self.diffusion, self.dataset = config, diffusion, dataset
        self.evaluator, self.progress, self.num_workers = evaluator, progress and self.world.main, num_workers
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if config.batch_size > len(dataset):
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset)} images of the dataset")
        if config.eval_every and evaluator is None:
            raise ValueError("eval_every is set, but no evaluator was given to compute FID/KID")

        self.world.local_batch(config.batch_size)  # a global batch that does not divide is an error
        self.world.init(self.device)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        net = self.model
        if self.world.distributed:  # averages the gradients over the processes in backward
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            # 1x1 kernels' gradients can carry other strides on their size-1 dimensions (the same
            # memory layout); DDP compares strides literally and warns at every step
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.forward = torch.compile(net) if config.compile else net
        self.amp = amp_dtype(self.device) if config.amp in (None, True) else None
        if config.amp and self.amp is None:
            raise ValueError(f"bf16 autocast was asked for, but {self.device} has none (it needs a CUDA GPU of the Ampere generation or newer)")

        opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(config.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.ema = (
            EMA(self.model, config.ema_decay, config.ema_warmup, config.ema_update_every)
            if config.ema_decay is not None
            else None
        )
        self.num_classes: int | None = getattr(model, "num_classes", None)

        self.step = 0
        self.log = TrainLog(self.out_dir if self.world.main else None)  # the metrics rows (helpers.train_log)
        self.grids: list[tuple[int, torch.Tensor]] = []  # (step, images) sample grids of this session

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics rows so far: one per ``log_every`` steps and one per evaluation."""
        return self.log.rows

    # ---- one step --------------------------------------------------------------------------------

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch; returns (per-image losses, their timesteps, grad norm) on the device.

        Nothing here waits for the device (no ``.item()``), so a GPU stays busy while the next batch
        loads; the loss is checked for NaN/inf at every log step. The label dropout, t and noise
        are drawn for the global batch (``len(x0)`` times the number of processes) and this
        process keeps its slice, so N processes draw what one process would.
        """
        cfg, d, world = self.config, self.diffusion, self.world
        x0 = x0.to(self.device, non_blocking=True)
        n = len(x0) * world.size  # the global batch
        if self.num_classes is not None:
            # label dropout: each label becomes "no label" with probability p_uncond
            y = y.to(self.device, non_blocking=True)
            drop = world.shard(torch.rand(n, device=self.device)) < cfg.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        else:
            y = None
        t = world.shard(torch.randint(0, d.T, (n,), device=self.device))
        noise = world.shard(torch.randn(n, *x0.shape[1:], device=self.device))
        if cfg.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with autocast, world.own_randomness(cfg.seed, self.step, 0, device=self.device):  # dropout: each process its own
            losses = d.loss(self.forward, x0, y, t=t, noise=noise, reduction="none")
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        clip = cfg.grad_clip if cfg.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return losses.detach(), t, grad_norm.detach()

    # ---- the loop --------------------------------------------------------------------------------

    def train(
        self,
        steps: int | None = None,
        callback: Callable[[Trainer, dict[str, Any]], None] | None = None,
        save_to: str | Path | None = None,
        save_every: int | None = None,
        profile: str | None = None,
    ) -> Trainer:
        """Run ``steps`` more optimiser steps (default: up to ``config.steps``).

        ``callback(trainer, row)`` is called with every metrics row (for live plots). With
        ``save_to``, a checkpoint is written there every ``save_every`` steps (None: every
        ``SAVE_MINUTES`` minutes) and at the end, and the run holds ``<save_to>.lock``
        (``helpers.runs``). Ctrl-C or SIGTERM then stop after the step in flight: the
        checkpoint is written and ``KeyboardInterrupt`` says how to continue (``load``).
        """
        cfg = self.config
        steps = steps if steps is not None else cfg.steps - self.step
        if steps <= 0:
            return self
        from helpers.data import make_loader  # data pulls in torchvision; keep it out of import time

        loader = make_loader(
            self.dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, start=self.step,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", world=self.world,
        )  # fmt: skip
        main = self.world.main
        if self.step == 0:  # a fresh run starts a fresh log, without an earlier run's grids
            self.log.rewrite()
            if self.out_dir is not None and main:
                for old in (self.out_dir / "grids").glob("step_*.png"):
                    old.unlink()
        batches = iter(loader)
        end = self.step + steps
        window = Window(self.device)
        self.model.train()
        # at most one refresh a second: in a notebook every refresh is a message to the front end,
        # and a flood of them can overrun the kernel's output channel (nbval then loses the cell's end)
        bar = tqdm(total=steps, desc="training", disable=not self.progress, leave=False, mininterval=1.0)
        last_save = time.monotonic()
        with contextlib.ExitStack() as guards:
            stop: list[int] = []
            if save_to is not None:
                if main:
                    guards.enter_context(RunLock(save_to))
                stop = guards.enter_context(deferred_interrupts())
            guards.callback(bar.close)
            while self.step < end:
                with self.world.own_randomness(cfg.seed, self.step, 1, device=self.device):  # random flips: each process its own
                    x0, y = next(batches)
                losses, t, grad_norm = self.train_step(x0, y)
                window.add(losses, t * N_BUCKETS // self.diffusion.T, grad_norm)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    for sums in (window.bucket_sum, window.bucket_count):  # the global batch's losses
                        self.world.all_sum(sums)
                    row = self.log.summarise(window, self.step, self.scheduler.get_last_lr()[0], self.model, cfg.batch_size)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}", refresh=False)
                    self._emit(row, callback)
                    window = Window(self.device)
                paused = time.perf_counter()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and main:
                    self.sample_grid()
                if cfg.eval_every and self.step % cfg.eval_every == 0:  # every process: the evaluator shares the sampling
                    self.evaluate(callback)
                window.t0 += time.perf_counter() - paused  # keep sampling and evaluation out of img/s
                due = self.step % save_every == 0 if save_every else time.monotonic() - last_save >= 60 * SAVE_MINUTES
                if save_to is None:
                    continue
                halt = self.world.any(bool(stop), self.device)  # a signal to any process stops them all at this step
                if self.world.any(self.step == end or due, self.device) or halt:
                    if main:
                        self.save(save_to, profile)
                    self.world.barrier()  # the others wait until the checkpoint is on disk
                    last_save = time.monotonic()
                if halt:
                    signame = signal.Signals(stop[0]).name if stop else "a signal to another process"
                    raise KeyboardInterrupt(
                        f"{signame} after step {self.step}: saved {save_to}; "
                        f"load it (python -m helpers.train ... --resume) to continue exactly from here"
                    )
        return self

    def _emit(self, row: dict[str, Any], callback: Callable[[Trainer, dict[str, Any]], None] | None) -> None:
        self.log.append(row)
        if callback is not None:
            callback(self, row)

    # ---- sample grids and evaluation ---------------------------------------------------------------

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Sample ``grid_size`` images from fixed noise (DDIM, EMA weights if any); keep and save them."""
        cfg = self.config
        n = cfg.grid_size
        shape = (n, self.model.in_channels, self.model.image_size, self.model.image_size)
        net = Guided(self.model, torch.arange(n) % self.num_classes) if self.num_classes is not None else self.model
        sampler = DDIM(min(cfg.grid_ddim_steps, self.diffusion.T))
        # the same noise every time (a fresh generator), and the global RNG left untouched
        gen = cpu_generator(cfg.seed)
        with self.ema.averaged(self.model) if self.ema is not None else contextlib.nullcontext():
            x = sample(net, self.diffusion, shape, sampler, gen, progress=False).cpu()
        self.grids.append((self.step, x))
        if self.out_dir is not None:
            from helpers.viz import save_grid

            save_grid(x, self.out_dir / "grids" / f"step_{self.step:07d}.png")
        return x

    def evaluate(self, callback: Callable[[Trainer, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the evaluator on the raw weights and, with EMA, on the averaged ones; log the row."""
        if self.evaluator is None:
            raise ValueError("this trainer has no evaluator to compute FID/KID with")
        row: dict[str, Any] = {"step": self.step}
        row.update({f"{k}_raw": v for k, v in self.evaluator(self.model).items()})
        if self.ema is not None:
            with self.ema.averaged(self.model):
                row.update({f"{k}_ema": v for k, v in self.evaluator(self.model).items()})
        self.model.train()
        self._emit(row, callback)
        return row

    # ---- checkpoints -------------------------------------------------------------------------------

    def state_dict(self, profile: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything ``load`` needs to continue exactly (see ``helpers.checkpoints``)."""
        return {
            "model": self.model.state_dict(),
            "model_config": dict(self.model.config),
            "diffusion": self.diffusion.config(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "train": asdict(self.config),
            "history": self.log.rows,
            "rng": rng_state(),
            "profile": profile,
            "extra": {**self.extra, **(extra or {})},
        }

    def save(self, path: str | Path, profile: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Save an exact-resume checkpoint, atomically; never weights that are not finite (the file
        at ``path`` then keeps the last good state)."""
        broken = non_finite(self.model.named_parameters())
        if broken:
            raise FloatingPointError(
                f"the weights became non-finite by step {self.step} ({len(broken)} tensors, e.g. {broken[0]}), so {path} "
                f"was not overwritten; lower the learning rate (now {self.scheduler.get_last_lr()[0]:.2e}) or keep gradient clipping on"
            )
        return save_checkpoint(path, self.state_dict(profile, extra))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Continue from ``path``: weights, optimiser, schedule, EMA, step, logs and RNG states.

        The checkpoint must hold the same model configuration and prediction type. A shipped model
        (``helpers.pretrained``: weights only) is a warm start instead: its weights, step and log,
        with a fresh optimiser.
        """
        # Loaded to the CPU: load_state_dict moves what belongs on the device, and Adam's step counters
        # stay CPU scalars (on a GPU they would cost a sync per parameter tensor every step).
        ckpt = load_checkpoint(path, "cpu", model_config=dict(self.model.config), prediction=self.diffusion.prediction)
        conflicts = self.config.resume_conflicts(ckpt.get("train", {}))
        if conflicts:
            detail = ", ".join(f"{k}={saved!r} (not {now!r})" for k, (saved, now) in conflicts.items())
            raise CheckpointError(f"{path} was trained with {detail}; resume with the checkpoint's settings to continue the same run")
        if ckpt["diffusion"] != self.diffusion.config():
            raise CheckpointError(f"{path} was trained with the process {ckpt['diffusion']}, not {self.diffusion.config()}")
        try:
            return self._restore(ckpt, path)
        except (KeyError, ValueError, RuntimeError) as err:  # missing keys, wrong shapes: a damaged or foreign file
            raise damaged(path, err) from err

    def _restore(self, ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
        if ckpt.get("optimizer") is None:  # a shipped model (helpers.pretrained): weights, no optimiser or RNG states
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None:
                self.ema = EMA(self.model, self.config.ema_decay, self.config.ema_warmup, self.config.ema_update_every)
            self.step = ckpt["step"]
            self.log.restore(ckpt.get("history", []))
            print(f"{path} holds weights only: training continues from them with a fresh optimiser (and its warm-up)")
            return ckpt
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                # a run without EMA continued with EMA: the average starts from the current weights
                self.ema = EMA(self.model, self.config.ema_decay, self.config.ema_warmup, self.config.ema_update_every)
            else:
                self.ema.load_state_dict(ckpt["ema"])
        self.step = ckpt["step"]
        self.log.restore(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])
        return ckpt
