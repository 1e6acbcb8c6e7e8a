"""Training latent diffusion's autoencoder (``helpers.autoencoder``, notebook 10) as a guarded,
resumable run (``helpers.runs``): each step minimises, per image,

    L = ||x - D(z)||_1 + kl_weight KL(q(z | x) || N(0, I)),   z ~ q(z | x) (reparameterised),

with Adam, the posterior samples drawn from a CPU generator seeded with ``config.seed`` (its
state is saved, so a resumed run draws what a straight one would). With ``save_to`` the run holds
a lock, writes its checkpoint every ten minutes and at the end, and Ctrl-C saves before it stops.
The log has one row per ``log_every`` steps: L1 per pixel, KL per image, seconds since the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from helpers.autoencoder import Autoencoder
from helpers.checkpoints import rng_state, set_rng_state
from helpers.config import RESUMABLE_RUN_SETTINGS, AutoencoderConfig
from helpers.device import adam_options
from helpers.runs import GuardedRun, conflicts, refuse_conflicts
from helpers.validate import batch_fits

__all__ = ["AutoencoderTrainer", "SCALE_IMAGES"]

SCALE_IMAGES = 2000  # training images behind the scale factor


class AutoencoderTrainer(GuardedRun):
    """Trains ``ae`` (moved to ``device``) on ``dataset`` ((image in [-1, 1], label) pairs) with
    ``config``; ``history`` holds the log rows. The autoencoder is in train mode while ``train``
    runs and in eval mode afterwards. ``save(path, profile=None, extra=None)`` writes a checkpoint
    of kind "autoencoder" that ``helpers.checkpoints.load_autoencoder`` reads and ``load`` resumes.

    At the last step of each ``train`` call the scale factor is measured on the first
    ``SCALE_IMAGES`` training images (``Autoencoder.measure_scale``; it draws no random numbers) and
    the checkpoint records the step it was measured at (``scale_step``), so the file of a run that
    stopped early, whose scale belongs to older weights, is refused by ``load_autoencoder``."""

    kind, desc = "autoencoder", "autoencoder"
    resume_hint = "load it (AutoencoderTrainer.load, or --resume on the command line) to continue exactly from here"

    def __init__(self, ae: Autoencoder, dataset: Dataset, config: AutoencoderConfig, device: torch.device | str = "cpu", progress: bool = True) -> None:
        batch_fits(config.batch_size, len(dataset))  # before any work
        self.config, self.dataset, self.device, self.progress = config, dataset, torch.device(device), progress
        self.model = ae.to(self.device)
        self.optimizer = torch.optim.Adam(ae.parameters(), lr=config.lr, **adam_options(self.device))
        self.generator = torch.Generator().manual_seed(config.seed)  # the posterior samples'
        self.step, self.scale_step = 0, None
        self.history: list[dict[str, float]] = []

    @property
    def ae(self) -> Autoencoder:
        return self.model

    def begin(self) -> Iterator[Any]:
        self.model.train()
        self._l1: list[torch.Tensor] = []  # per step, on the device: read back at log steps only
        self._kl: list[torch.Tensor] = []
        self._t0 = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)
        return self.loader(self.dataset, self.config.batch_size, self.config.seed)

    def advance(self, batches: Iterator[Any], end: int) -> dict[str, Any] | None:
        cfg = self.config
        x = next(batches)[0].to(self.device, non_blocking=True)
        recon, posterior = self.model(x, self.generator)
        rec = (recon - x).abs().flatten(1).sum(1)
        kl = posterior.kl()
        loss = (rec + cfg.kl_weight * kl).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.step == end:
            self.model.measure_scale(torch.stack([self.dataset[i][0] for i in range(min(SCALE_IMAGES, len(self.dataset)))]))
            self.scale_step = self.step
        self._l1.append(rec.mean().detach())
        self._kl.append(kl.mean().detach())
        if self.step % cfg.log_every and self.step != end:
            return None
        l1 = kl_sum = 0.0
        for r, k in zip(torch.stack(self._l1).tolist(), torch.stack(self._kl).tolist()):  # summed as floats, in order
            l1, kl_sum = l1 + r / x[0].numel(), kl_sum + k
        if not math.isfinite(l1):
            raise FloatingPointError(f"the reconstruction loss became non-finite by step {self.step}; lower the learning rate (now {cfg.lr:g})")
        n = len(self._l1)
        self.history.append({"step": self.step, "l1": l1 / n, "kl": kl_sum / n, "seconds": time.perf_counter() - self._t0})
        self._l1, self._kl = [], []
        return {"l1": f"{l1 / n:.4f}"}

    def finish(self) -> None:
        self.model.eval()

    # ---- checkpoints (GuardedRun.save and .load) -------------------------------------------------

    def state_dict(self, profile: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "model_config": dict(self.model.config), "fingerprint": self.model.fingerprint(),
            "optimizer": self.optimizer.state_dict(), "step": self.step, "scale_step": self.scale_step, "train": asdict(self.config), "history": self.history,
            "rng": {"posterior": self.generator.get_state(), "global": rng_state()}, "profile": profile, "extra": extra or {},
        }  # fmt: skip

    def expects(self) -> dict[str, Any]:
        return {"model_config": dict(self.model.config)}

    def check(self, ckpt: dict[str, Any], path: str | Path) -> None:
        refuse_conflicts(path, conflicts(ckpt.get("train") or {}, asdict(self.config), RESUMABLE_RUN_SETTINGS))

    def restore(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Weights (with the scale factor), optimiser, step, log and generators. A file without
        optimiser state (``save_autoencoder``'s) is a warm start: its weights and log, a fresh Adam."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.generator.set_state(ckpt["rng"]["posterior"])
            set_rng_state(ckpt["rng"]["global"])
        self.step, self.history = ckpt["step"], list(ckpt.get("history") or [])
        self.scale_step = ckpt.get("scale_step")
