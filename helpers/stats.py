"""Intervals for numbers computed from samples: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13).

A statistic of n samples (an FID of n generated images, a mean) is recomputed on ``replicates``
resamples of the n indices drawn with replacement; the central ``level`` of those values is the
interval. A comparison of two models whose i-th samples share their noise is *paired*: the
statistic is the difference, computed on the same resampled indices for both, so the noise they
share cancels and the interval is far narrower than two separate ones would suggest.

    >>> interval = bootstrap(lambda idx: float(x[idx].mean()), len(x))
    >>> print(interval)          # 0.012 [-0.031, 0.054] (95% bootstrap, 1000 resamples)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from helpers.validate import fraction, integer

__all__ = ["Interval", "bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A statistic on the full sample (``estimate``) and its ``level`` bootstrap interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float
    replicates: int

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or wholly below 0: a difference that resampling does not explain."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:.1f} [{self.low:.1f}, {self.high:.1f}] ({self.level:.0%} bootstrap, {self.replicates} resamples)"


def bootstrap(statistic: Callable[[torch.Tensor], float], n: int, replicates: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The percentile bootstrap of ``statistic(idx)``, a number computed from the samples at the indices
    ``idx`` (a LongTensor of length ``n``): the estimate is ``statistic(arange(n))``, the interval the
    (1 - level)/2 and (1 + level)/2 quantiles of the statistic over ``replicates`` resamples of n
    indices drawn with replacement from a generator seeded with ``seed`` (the global one is untouched)."""
    integer("n (samples)", n, minimum=2)
    integer("replicates", replicates, minimum=2)
    fraction("level", level)
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(0, n, (n,), generator=gen)) for _ in range(replicates)], dtype=torch.float64)
    low, high = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return Interval(float(statistic(torch.arange(n))), low, high, level, replicates)
