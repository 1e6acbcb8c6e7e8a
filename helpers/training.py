"""The U-Net training run of notebook 03 and ``python -m helpers train``: a ``GuardedRun`` (``helpers.runs``:
total steps, lock, Ctrl-C that saves, checkpoint cadence, no non-finite saves, several processes, exact resume)
whose step is  x_0 ~ data, t ~ U{0..T-1} (or importance-sampled: ``helpers.timesteps``), eps ~ N(0, I), loss = w(t) || model(x_t, t) - target ||^2
(or, for a flow model, ``helpers.flow``'s t in [0, 1] and its velocity loss)  with Adam(W),
LR warm-up, gradient clipping, EMA, mixed precision where the GPU has it (``runs.Precision``), optional
``torch.compile`` and channels_last; plus a metrics log (``helpers.train_log``), sample grids and FID/KID.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from helpers.checkpoints import CheckpointError, damaged, load_checkpoint, rng_state, set_rng_state
from helpers.config import TrainConfig
from helpers.device import adam_options, cpu_generator
from helpers.diffusion import Diffusion
from helpers.distributed import World
from helpers.flow import FlowEuler, FlowMatching
from helpers.ema import EMA
from helpers.runs import GuardedRun, Precision, refuse_conflicts
from helpers.validate import batch_fits
from helpers.samplers import DDIM, Guided, sample
from helpers.timesteps import ImportanceTimesteps
from helpers.train_log import N_BUCKETS, TrainLog, Window

__all__ = ["TrainConfig", "Trainer"]  # TrainConfig is defined in helpers.config, with the profiles

Callback = Callable[["Trainer", dict[str, Any]], None]


class Trainer(GuardedRun):
    """Trains ``model`` on ``dataset`` ((image in [-1, 1], label) pairs) under ``diffusion``. ``out_dir`` gets
    ``metrics.jsonl`` and ``grids/`` (None: ``history`` and ``grids`` only); ``evaluator(model)`` scores raw and
    EMA weights every ``eval_every`` steps; ``num_workers`` > 0 loses exact resume with random flips; ``extra``:
    plain data for every checkpoint. ``world`` (default: torchrun's): with several processes ``batch_size`` is
    the global batch, DDP averages the gradients, evaluations are shared, and rank 0 alone logs, draws and saves."""

    kind, desc = "unet", "training"
    resume_hint = "load it (Trainer.load; python -m helpers train ... --resume) to continue exactly from here"

    def __init__(
        self, model: nn.Module, diffusion: Diffusion | FlowMatching, dataset: Dataset, config: TrainConfig, device: torch.device | str = "cpu",
        out_dir: str | Path | None = None, evaluator: Callable[[nn.Module], dict[str, float]] | None = None, progress: bool = True,
        num_workers: int = 0, world: World | None = None, extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.world = World.from_env() if world is None else world
        self.extra, self.device = dict(extra or {}), self.world.device(torch.device(device))
        self.config, self.diffusion, self.dataset = config, diffusion, dataset
        self.evaluator, self.progress, self.num_workers = evaluator, progress, num_workers
        self.out_dir = Path(out_dir) if out_dir is not None else None
        batch_fits(config.batch_size, len(dataset))  # before any work
        self.flow = isinstance(diffusion, FlowMatching)
        self.paired = self.flow and diffusion.coupling == "reflow"  # the dataset's items are (x0_hat, eps) pairs
        if self.paired and getattr(model, "num_classes", None) is not None:
            raise ValueError("reflow pairs (x0_hat, eps) carry no labels: train a reflow model unconditional")
        if self.flow and config.timesteps == "importance":
            raise ValueError("importance-sampled timesteps are for a diffusion process; a flow model draws t by its own "
                             f"time_sampling ({diffusion.time_sampling}): train it with timesteps='uniform'")
        null_ids = getattr(model, "null_ids", None)  # a text model's empty caption (helpers.text_unet)
        if null_ids is not None:
            if config.sample_every or config.eval_every:
                raise ValueError("sample_every and eval_every draw without a caption, but a text model needs one: set both to 0 and sample "
                                 "it with samplers.TextGuided (python -m helpers sample --prompt)")  # fmt: skip
            label = dataset[0][1]
            if not isinstance(label, torch.Tensor) or label.shape != null_ids.shape[1:]:
                raise ValueError(f"a text model trains on (image, token ids [{null_ids.shape[1]}]) pairs; this dataset's labels are "
                                 f"{tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__}")  # fmt: skip
        self.null_ids: torch.Tensor | None = null_ids.to(self.device) if null_ids is not None else None
        if config.eval_every and evaluator is None:
            raise ValueError("eval_every is set, but no evaluator was given to compute FID/KID")
        self.model, self.forward = self.place(model, config.batch_size, config.channels_last, config.compile)
        self.precision = Precision.choose(self.device, config.amp)
        opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **adam_options(self.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: config.lr_factor(k))
        self.ema = self._fresh_ema() if config.ema_decay is not None else None
        self.importance = ImportanceTimesteps(diffusion.T, device=self.device) if config.timesteps == "importance" else None
        self.num_classes: int | None = getattr(model, "num_classes", None)
        self.step, self.callback = 0, None  # callback: train's, for the rows of the run in progress
        self.log = TrainLog(self.out_dir if self.world.main else None)  # the metrics rows (helpers.train_log)
        self.grids: list[tuple[int, torch.Tensor]] = []  # (step, images) sample grids of this session

    def _fresh_ema(self) -> EMA:
        return EMA(self.model, self.config.ema_decay, self.config.ema_warmup, self.config.ema_update_every)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics rows: one per ``log_every`` steps (and at the end of each ``train``), one per evaluation."""
        return self.log.rows

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch; returns (per-image losses, their timesteps, their importance weights
        (ones for uniform t), grad norm) on the device, without waiting for it (no ``.item()``). The step
        descends the mean of weight * loss. Label dropout, t and noise are drawn for the global batch and this
        process keeps its slice, so N processes draw what one would; a reflow run (``FlowMatching(coupling="reflow")``)
        takes each image's noise from its pair, the batch's ``y``; a text model (``helpers.text_unet``) takes
        token ids as ``y`` and drops a caption to the empty one."""
        cfg, d, world = self.config, self.diffusion, self.world
        x0 = x0.to(self.device, non_blocking=True)
        n = len(x0) * world.size  # the global batch
        y_pair, y = (y, None) if self.paired else (None, y)
        if self.num_classes is not None or self.null_ids is not None:  # each label or caption is dropped with probability p_uncond
            y = y.to(self.device, non_blocking=True)
            drop = world.shard(torch.rand(n, device=self.device)) < cfg.p_uncond
            if self.null_ids is None:  # "no label" is the id num_classes
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            else:  # "no text" is the empty caption
                y = torch.where(drop[:, None], self.null_ids, y)
        else:
            y = None
        if self.importance is None:
            t, weights = world.shard(d.sample_t(n, device=self.device)), None
        else:  # drawn, like the uniform t, from the device's generator, which runs in step across processes
            t, weights = (world.shard(v) for v in self.importance.sample(n))
        if self.paired:  # reflow: each image's eps is the one it was drawn from (flow.reflow_pairs)
            noise = y_pair.to(self.device, non_blocking=True)
        else:
            noise = world.shard(torch.randn(n, *x0.shape[1:], device=self.device))
        if self.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        with self.precision.autocast(), world.own_randomness(cfg.seed, self.step, 0, device=self.device):  # dropout: each process its own
            losses = d.loss(self.forward, x0, y, t=t, noise=noise, reduction="none").float()
        if weights is None:
            weights = torch.ones_like(losses)
        else:  # every process folds in the whole global batch, so all keep the same p(t)
            self.importance.update(world.unshard(t), world.unshard(losses.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm = self.precision.step((weights * losses).mean(), self.optimizer, self.model.parameters(), cfg.grad_clip)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return losses.detach(), t, weights, grad_norm.detach()

    def train(self, steps: int | None = None, callback: Callback | None = None, save_to: str | Path | None = None,
              save_every: int | None = None, profile: str | None = None) -> Trainer:  # fmt: skip
        """``GuardedRun.train`` (to step ``steps`` in total); ``callback(trainer, row)`` sees every metrics row."""
        self.callback = callback
        return super().train(steps, save_to, save_every, profile=profile)

    def begin(self) -> Iterator[Any]:
        if self.step == 0:
            self.log.start_fresh()
        self.window = Window(self.device)
        self.model.train()
        return self.loader(self.dataset, self.config.batch_size, self.config.seed, num_workers=self.num_workers, world=self.world)

    def advance(self, batches: Iterator[Any], end: int) -> dict[str, Any] | None:
        cfg, postfix = self.config, None
        with self.world.own_randomness(cfg.seed, self.step, 1, device=self.device):  # random flips: each process its own
            x0, y = next(batches)
        losses, t, weights, grad_norm = self.train_step(x0, y)
        self.window.add(losses, self.diffusion.bucket(t, N_BUCKETS), weights, grad_norm)
        if self.step % cfg.log_every == 0 or self.step == end:
            row = self.log.close(self.window, self.world, self.step, self.scheduler.get_last_lr()[0], self.model, cfg.batch_size)
            postfix, self.window = {"loss": f"{row['loss']:.4f}", "img_s": f"{row['img_per_s']:.0f}"}, Window(self.device)
            if self.callback is not None:
                self.callback(self, row)
        paused = time.perf_counter()
        if cfg.sample_every and self.step % cfg.sample_every == 0 and self.world.main:
            self.sample_grid()
        if cfg.eval_every and self.step % cfg.eval_every == 0:  # every process: the evaluator shares the sampling
            self.evaluate(self.callback)
        self.window.t0 += time.perf_counter() - paused  # keep sampling and evaluation out of img/s
        return postfix

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Sample ``grid_size`` images from fixed noise (DDIM, EMA weights if any); keep and save them."""
        cfg, n = self.config, self.config.grid_size
        shape = (n, self.model.in_channels, self.model.image_size, self.model.image_size)
        net = Guided(self.model, torch.arange(n) % self.num_classes) if self.num_classes is not None else self.model
        gen = cpu_generator(cfg.seed)  # the same noise every time (a fresh generator), and the global RNG left untouched
        with self.ema.averaged(self.model) if self.ema is not None else contextlib.nullcontext():
            sampler = FlowEuler(cfg.grid_ddim_steps) if self.flow else DDIM(min(cfg.grid_ddim_steps, self.diffusion.T))
            x = sample(net, self.diffusion, shape, sampler, gen, progress=False).cpu()
        self.grids.append((self.step, x))
        if self.out_dir is not None:
            from helpers.viz import save_grid

            save_grid(x, self.out_dir / "grids" / f"step_{self.step:07d}.png")
        return x

    def evaluate(self, callback: Callback | None = None) -> dict[str, Any]:
        """Run the evaluator on the raw weights and, with EMA, on the averaged ones; log the row."""
        if self.evaluator is None:
            raise ValueError("this trainer has no evaluator to compute FID/KID with")
        row: dict[str, Any] = {"step": self.step, **{f"{k}_raw": v for k, v in self.evaluator(self.model).items()}}
        if self.ema is not None:
            with self.ema.averaged(self.model):
                row.update({f"{k}_ema": v for k, v in self.evaluator(self.model).items()})
        self.model.train()
        self.log.append(row)
        if callback is not None:
            callback(self, row)
        return row

    # ---- checkpoints (GuardedRun.save and .load) -----------------------------------------------------

    def remedy(self) -> str:
        return f"lower the learning rate (now {self.scheduler.get_last_lr()[0]:.2e}) or keep gradient clipping on"

    def state_dict(self, profile: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything ``load`` needs to continue exactly (see ``helpers.checkpoints``)."""
        return {
            "model": self.model.state_dict(), "model_config": dict(self.model.config), "diffusion": self.diffusion.config(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "step": self.step, "train": asdict(self.config),
            "timesteps": self.importance.state_dict() if self.importance is not None else None,
            "history": self.log.rows, "rng": rng_state(), "profile": profile, "extra": {**self.extra, **(extra or {})},
        }  # fmt: skip

    def start_from(self, path: str | Path) -> dict[str, Any]:
        """Fine-tune from the checkpoint at ``path`` (of the same model and process): its raw weights and,
        if saved, its average; the optimiser, learning-rate schedule, step and log start afresh under this
        run's settings. ``load`` continues a run exactly; this starts a new run where another ended (e.g.
        at a constant learning rate after a run that decayed it to zero). Returns the checkpoint."""
        ckpt = load_checkpoint(path, "cpu", kind=self.kind, **self.expects())
        if ckpt["diffusion"] != self.diffusion.config():
            raise CheckpointError(f"{path} was trained with the process {ckpt['diffusion']}, not {self.diffusion.config()}")
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None:
                self.ema = self._fresh_ema()
                if ckpt.get("ema") is not None:
                    self.ema.load_state_dict(ckpt["ema"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise damaged(path, err) from err
        return ckpt

    def expects(self) -> dict[str, Any]:
        return {"model_config": dict(self.model.config), "prediction": self.diffusion.prediction}

    def check(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """The same process, and outside RESUMABLE_SETTINGS the same settings (EMA may be switched on)."""
        refuse_conflicts(path, self.config.resume_conflicts(ckpt.get("train", {})))
        if ckpt["diffusion"] != self.diffusion.config():
            raise CheckpointError(f"{path} was trained with the process {ckpt['diffusion']}, not {self.diffusion.config()}")

    def restore(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Weights, optimiser, schedule, scaler, EMA, step, log and RNG states. A shipped model (weights only,
        ``helpers.pretrained``) is a warm start: its weights, step and log, with a fresh optimiser."""
        full = ckpt.get("optimizer") is not None
        self.model.load_state_dict(ckpt["model"])
        if full:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.precision.load_state_dict(ckpt.get("scaler"))
            set_rng_state(ckpt["rng"])
            if self.importance is not None and ckpt.get("timesteps") is not None:
                self.importance.load_state_dict(ckpt["timesteps"])
        if self.ema is not None and full and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        elif self.ema is not None:  # no average saved (a run without EMA, a shipped model): it starts from the weights
            self.ema = self._fresh_ema()
        self.step = ckpt["step"]
        self.log.restore(ckpt.get("history", []))
        if not full:
            print(f"{path} holds weights only: training continues from them with a fresh optimiser (and its warm-up)")
