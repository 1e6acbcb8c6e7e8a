"""Noise schedules: the tables beta_t, and alpha_bar_t = prod_{i<=t} (1 - beta_i), in float64.

Timesteps are integers 0..T-1 as in DDPM (Ho et al. 2020) and diffusers. Every function here is
pure: it builds a table on the CPU in float64, and knows nothing of networks or devices.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "make_betas", "linear_betas", "cosine_betas", "sigmoid_betas", "betas_from_alpha_bars"]

MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: keeps beta_t < 1 near t = T


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule: beta_t evenly spaced from 1e-4 to 0.02 at T = 1000 (Ho et al. 2020, sec. 4).

    For other T both ends are scaled by 1000 / T (as in Nichol & Dhariwal's code), so that the sum
    of the betas, and with it alpha_bar at the last step, stays close to DDPM's (capped at 0.999).
    """
    scale = 1000 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64).clamp(max=MAX_BETA)


def betas_from_alpha_bars(alpha_bar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), capped at 0.999.

    ``alpha_bar`` holds the continuous schedule at T + 1 points, ``alpha_bar[0]`` at t = 0 of the
    continuous time and ``alpha_bar[i]`` at i / T, so that beta has T entries.
    """
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha_bar(t) = f(t) / f(0),  f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),  betas capped at 0.999.
    """
    tau = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    return betas_from_alpha_bars(f / f[0])


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """The sigmoid schedule (Chen 2023, "On the importance of noise scheduling", algorithm 1).

    alpha_bar(t) = (sigmoid(end/tau) - sigmoid((t (end - start) + start)/tau))
                   / (sigmoid(end/tau) - sigmoid(start/tau)),  t in [0, 1],  betas capped at 0.999.
    """
    t = torch.arange(T + 1, dtype=torch.float64) / T
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    return betas_from_alpha_bars(alpha_bar.clamp(min=1e-9))


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make_betas(name: str, T: int = 1000) -> torch.Tensor:
    """The float64 table beta_0..beta_{T-1} of the schedule ``name`` ("linear", "cosine", "sigmoid")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose {', '.join(SCHEDULES)}")
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise ValueError(f"T must be an integer of at least 2 timesteps, got {T!r}")
    return SCHEDULES[name](T)
