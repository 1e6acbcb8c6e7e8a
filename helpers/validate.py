"""The one set of argument checks: samplers, solvers, configs and command lines all call these, so a
bad setting is refused with the same one-line ``ValueError`` wherever it comes from.

A leaf module (it imports nothing from ``helpers``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["integer", "number", "fraction", "choice", "batch_fits"]


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else "an integer >= 0" if minimum == 0 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def number(name: str, value: Any, minimum: float = 0.0, inclusive: bool = False) -> float:
    """``value`` if it is a finite real number above ``minimum`` (or equal to it when ``inclusive``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` if it lies in [0, 1) (a decay, a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def choice(name: str, value: Any, options: Iterable[str]) -> Any:
    """``value`` if it is one of ``options``, else a ValueError listing them."""
    options = list(options)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose {', '.join(map(str, options))}")
    return value


def batch_fits(batch_size: int, n: int) -> int:
    """``batch_size`` if a batch of it fits in a dataset of ``n`` images (the loaders drop an epoch's
    incomplete last batch, so a larger one would never be drawn)."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} images of the dataset")
    return batch_size
