"""The metrics log of a training run: what the ``Trainer`` records besides the optimisation.

Every ``log_every`` steps the ``Trainer`` turns a ``Window`` (sums kept on the device since the last
row, so no step waits for the GPU) into a row: loss, its smoothed value, gradient and parameter
norms, learning rate, img/s and the loss by timestep bucket. ``TrainLog`` keeps the rows in memory
and, given a folder, in ``metrics.jsonl`` there (one JSON object per line).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from helpers.distributed import World

__all__ = ["N_BUCKETS", "Window", "TrainLog"]

N_BUCKETS = 10  # loss by timestep bucket: t in [0, T/10), [T/10, 2T/10), ...


class Window:
    """Sums over the steps since the last log row, kept on the device (no per-step sync)."""

    def __init__(self, device: torch.device) -> None:
        self.bucket_sum = torch.zeros(N_BUCKETS, device=device)
        self.bucket_count = torch.zeros(N_BUCKETS, device=device, dtype=torch.long)
        self.weighted_sum = torch.zeros((), device=device)  # sum of weight * loss: the objective's estimate over the images counted above
        self.grad_norm = torch.zeros((), device=device)
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, losses: torch.Tensor, buckets: torch.Tensor, weights: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Per-image losses by timestep bucket, and the objective's estimate: their mean after each is
        multiplied by its importance weight (all ones for uniform t)."""
        self.bucket_sum.index_add_(0, buckets, losses.float())
        self.bucket_count.index_add_(0, buckets, torch.ones_like(buckets))
        self.weighted_sum += (weights * losses.float()).sum()
        self.grad_norm = grad_norm
        self.n += 1


class TrainLog:
    """Rows of a run, in ``rows`` and (with ``out_dir``) in ``out_dir/metrics.jsonl``."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.rows: list[dict[str, Any]] = []  # one per log_every steps, and one per evaluation
        self.smooth: float | None = None  # EMA 0.9 of the logged losses

    def summarise(self, window: Window, step: int, lr: float, model: torch.nn.Module, batch_size: int) -> dict[str, Any]:
        """The row for ``window``; stops the run with a clear error when the loss is not finite."""
        sums, counts = window.bucket_sum.cpu().double(), window.bucket_count.cpu()
        loss = float(window.weighted_sum.cpu().double() / counts.sum())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} within the {window.n} steps up to step {step}, so training stopped; "
                f"lower the learning rate (now {lr:.2e}) or keep gradient clipping on"
            )
        self.smooth = loss if self.smooth is None else 0.9 * self.smooth + 0.1 * loss
        elapsed = time.perf_counter() - window.t0
        with torch.no_grad():
            param_norm = float(torch.linalg.vector_norm(torch.stack([p.norm() for p in model.parameters()])))
        return {
            "step": step,
            "loss": loss,
            "loss_smooth": self.smooth,
            "grad_norm": float(window.grad_norm),
            "lr": lr,
            "param_norm": param_norm,
            "img_per_s": window.n * batch_size / max(elapsed, 1e-9),
            "loss_by_bucket": [float(s / c) if c else None for s, c in zip(sums, counts)],
        }

    def close(self, window: Window, world: World, step: int, lr: float, model: torch.nn.Module, batch_size: int) -> dict[str, Any]:
        """The row for ``window`` with the losses of every process of ``world`` summed in, appended."""
        for sums in (window.bucket_sum, window.bucket_count, window.weighted_sum):  # the global batch's losses
            world.all_sum(sums)
        row = self.summarise(window, step, lr, model, batch_size)
        self.append(row)
        return row

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def rewrite(self) -> None:
        """Make ``metrics.jsonl`` hold exactly ``rows`` (an earlier run's or later rows go)."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def start_fresh(self) -> None:
        """A run from step 0: the log file holds only this run's rows, and an earlier run's grids (``out_dir/grids``) go."""
        self.rewrite()
        if self.out_dir is not None:
            for old in (self.out_dir / "grids").glob("step_*.png"):
                old.unlink()

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue from a checkpoint's rows and their smoothed loss."""
        self.rows = list(rows)
        smooth = [r["loss_smooth"] for r in self.rows if "loss_smooth" in r]
        self.smooth = smooth[-1] if smooth else None
        self.rewrite()

    def bucket_losses(self, since: int = 0) -> list[float | None]:
        """Training loss per timestep bucket, the mean over the rows after step ``since``.

        Bucket i holds t in [i T/10, (i+1) T/10); None where no image fell in it.
        """
        rows = [r["loss_by_bucket"] for r in self.rows if "loss_by_bucket" in r and r["step"] > since]
        means = []
        for i in range(N_BUCKETS):
            values = [r[i] for r in rows if r[i] is not None]
            means.append(sum(values) / len(values) if values else None)
        return means
