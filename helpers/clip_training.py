"""Training the small CLIP of notebook 13 (``helpers.clip``): minutes on a CPU, so one plain loop.

Each step draws a batch of (image, caption) pairs and descends the symmetric InfoNCE loss with
AdamW, the learning rate warmed up over the first 5% of the steps and decayed to zero along a
cosine. The run is short and starts afresh each time; nothing here resumes.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from helpers.clip import CLIP
from helpers.device import adam_options
from helpers.validate import batch_fits, integer

__all__ = ["train_clip"]


def train_clip(clip: CLIP, images: torch.Tensor, ids: torch.Tensor, steps: int, batch_size: int = 256, lr: float = 2e-3,
               seed: int = 0, progress: bool = True) -> list[dict[str, int | float]]:  # fmt: skip
    """Train ``clip`` in place on images [N, C, H, W] and their captions' ids [N, L]; returns the log
    (one row of {step, loss} per step). Batches are drawn from a generator seeded with ``seed``."""
    integer("steps", steps)
    batch_fits(batch_size, len(images))
    if len(images) != len(ids):
        raise ValueError(f"{len(images)} images but {len(ids)} captions")
    device = next(clip.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.01, **adam_options(device))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    clip.train()
    log = []
    for step in tqdm(range(1, steps + 1), desc="CLIP", disable=not progress, mininterval=1.0):
        i = torch.randint(0, len(images), (batch_size,), generator=g)
        loss = clip.loss(images[i].to(device), ids[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.append({"step": step, "loss": loss.item()})
    clip.eval()
    return log
