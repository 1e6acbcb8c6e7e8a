"""Which timesteps a training batch sees: importance sampling of t for the same objective.

The training loss is an expectation over t ~ U{0..T-1}. Drawing t from another distribution p(t) and
weighting each image's loss by 1 / (T p(t)) keeps that expectation (and so the model it trains towards)
and changes only the variance of its estimate. The variance is smallest when p(t) is proportional to
sqrt(E[L_t^2]) (Nichol & Dhariwal 2021, "Improved DDPM", §3.3, who apply it to L_vlb): timesteps whose
loss is large or noisy are drawn more often and counted less each time.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ImportanceTimesteps"]


class ImportanceTimesteps:
    """Draws t with probability p(t) proportional to sqrt(E[L_t^2]), estimated online.

    t's range is cut into ``bins`` near-equal parts (by default 40, or T when T is smaller); each keeps an exponential average (``momentum``) of the
    squared per-image loss seen in it. Until every bin has ``warmup`` samples p is uniform; after that p
    mixes the estimate with ``uniform`` of the uniform distribution, so that no bin starves and every
    weight stays below about 1 / ``uniform``. ``sample`` returns t and the weights 1 / (T p(t)); ``update``
    takes the losses of those t. Feed ``update`` the same numbers in every process (the global batch)
    and every process draws the same t.
    """

    def __init__(
        self, T: int, bins: int | None = None, uniform: float = 0.1, warmup: int = 10, momentum: float = 0.98, device: torch.device | str = "cpu"
    ) -> None:
        bins = min(40, T) if bins is None else bins
        if not 1 <= bins <= T:
            raise ValueError(f"bins must be between 1 and T = {T} (got {bins})")
        if not 0 < uniform <= 1:
            raise ValueError(f"uniform must be in (0, 1] (got {uniform})")
        self.T, self.bins, self.uniform, self.warmup, self.momentum = T, bins, uniform, warmup, momentum
        self.edges = torch.arange(bins + 1, device=device) * T // bins  # bin k holds edges[k] <= t < edges[k + 1]
        self.width = (self.edges[1:] - self.edges[:-1]).float()
        self.mean_square = torch.zeros(bins, device=device)  # exponential average of L^2 per bin
        self.count = torch.zeros(bins, device=device)  # losses seen per bin
        # everything stays on the device: no step waits for a value to come back to the host

    def probabilities(self) -> torch.Tensor:
        """p of each bin (sums to 1; within a bin every t is equally likely, p(t) = p(bin) / its width)."""
        root = self.mean_square.sqrt()
        estimate = (1 - self.uniform) * root / root.sum().clamp(min=1e-30) + self.uniform / self.bins
        return torch.where((self.count < self.warmup).any(), torch.full_like(root, 1 / self.bins), estimate)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n timesteps in 0..T-1 and their weights 1 / (T p(t)), on the device of the statistics."""
        p = self.probabilities()
        bin_ = torch.multinomial(p, n, replacement=True, generator=generator)
        offset = (torch.rand(n, device=p.device, generator=generator) * self.width[bin_]).long()
        return self.edges[bin_] + offset, self.width[bin_] / (self.T * p[bin_])  # 1 / (T p(t))

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Fold the per-image losses of timesteps ``t`` into each bin's average of L^2 (one step per bin hit)."""
        bin_ = torch.searchsorted(self.edges, t.detach(), right=True) - 1
        square = losses.detach().float() ** 2
        hits = torch.zeros_like(self.count).index_add_(0, bin_, torch.ones_like(square))
        batch_mean = torch.zeros_like(self.mean_square).index_add_(0, bin_, square) / hits.clamp(min=1)
        averaged = torch.where(self.count == 0, batch_mean, self.momentum * self.mean_square + (1 - self.momentum) * batch_mean)
        self.mean_square = torch.where(hits > 0, averaged, self.mean_square)
        self.count = self.count + hits

    def state_dict(self) -> dict[str, Any]:
        return {"mean_square": self.mean_square.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.mean_square.device
        self.mean_square, self.count = state["mean_square"].to(device).float(), state["count"].to(device).float()
