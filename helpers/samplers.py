"""Samplers: one pure step function per algorithm, the grid of timesteps they visit, and one loop.

* ``ddpm_step``: ancestral sampling from p(x_{t-1} | x_t) (Ho et al. 2020, algorithm 2).
* ``ddim_step``: the DDIM update (Song et al. 2021, eq. 12), deterministic at eta = 0.
* ``ddim_timesteps``: which timesteps a shortened sampler visits ("leading", "trailing",
  "linspace", the grids diffusers produces).
* ``sample``: the loop, with classifier-free guidance, a progress bar, a callback that sees every
  step, and device-independent noise from a CPU generator.

Timesteps in the step functions are Python ints: one timestep for the whole batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.device import randn
from helpers.diffusion import Diffusion

__all__ = [
    "VARIANCES",
    "SPACINGS",
    "ddpm_step",
    "ddim_step",
    "ddim_timesteps",
    "guided_output",
    "sample",
    "Trajectory",
    "slerp",
]

VARIANCES = ("fixed_small", "fixed_large")
SPACINGS = ("leading", "trailing", "linspace")


def ddpm_step(
    d: Diffusion,
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    noise: torch.Tensor | None,
    clip_x0: bool = True,
    variance: str = "fixed_small",
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (DDPM, Ho et al. 2020, algorithm 2 and eq. 6-7).

    1. predicted x_0 from the network output;  2. clip it to [-1, 1] (optional);
    3. posterior mean of q(x_{t-1} | x_t, x_0_hat);  4. add sigma_t z, z ~ N(0, I), unless t = 0.

    ``variance`` picks sigma_t^2: "fixed_small" = beta_tilde_t (the posterior variance) or
    "fixed_large" = beta_t (what DDPM used for its CIFAR-10 FID). Without clipping, step 3 equals
    the paper's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose {', '.join(VARIANCES)}")
    x0 = d.predict_x0(x_t, t, out)  # 1.
    if clip_x0:
        x0 = x0.clamp(-1, 1)  # 2.
    mean, posterior_var = d.q_posterior(x0, x_t, t)  # 3.
    if t == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step needs noise for t = {t} > 0")
    var = posterior_var if variance == "fixed_small" else float(d.betas[t])
    return mean + var**0.5 * noise  # 4.


def ddim_step(
    d: Diffusion,
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = True,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12 and 16).

    1. predicted x_0;  2. clip it to [-1, 1] (optional);  3. eps re-derived from the (clipped)
    x_0 as (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t), so that x_0 and eps stay consistent with x_t
    (as in improved-diffusion; diffusers keeps the raw eps unless ``use_clipped_model_output``);
    4. sigma^2 = eta^2 (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev);
    5. x_prev = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z.

    ``t_prev = -1`` means alpha_bar = 1: the last step lands on x_0 itself. At eta = 1 on the full
    grid (t_prev = t - 1) the step is exactly ``ddpm_step`` with the posterior variance.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must lie in -1..{t - 1} (before t = {t}), got {t_prev}")
    x0 = d.predict_x0(x_t, t, out)  # 1.
    if clip_x0:
        x0 = x0.clamp(-1, 1)  # 2.
    eps = d.eps_from_x0(x_t, t, x0) if clip_x0 else d.predict_eps(x_t, t, out)  # 3.
    ab_t = d.alpha_bars[t]
    ab_prev = d.alpha_bars[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
    var = eta**2 * (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)  # 4. (float64 scalars)
    x_prev = float(ab_prev.sqrt()) * x0 + float((1 - ab_prev - var).clamp(min=0).sqrt()) * eps  # 5.
    if eta > 0 and t_prev >= 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + float(var.sqrt()) * noise
    return x_prev


def ddim_timesteps(T: int, steps: int, spacing: str = "leading") -> list[int]:
    """The ``steps`` timesteps a sampler visits, in descending order (diffusers' three spacings).

    leading:  k * (T // steps) for k = steps-1..0            (T=1000, 50 steps: 980, 960, ..., 0)
    trailing: round(T - k * T / steps) - 1 for k = 0..steps-1 (T=1000, 10 steps: 999, 899, ..., 99)
    linspace: round(linspace(0, T - 1, steps)), reversed      (T=1000, 10 steps: 999, 888, ..., 0)

    Leading starts at (steps - 1) * (T // steps), far below T - 1 when ``steps`` does not divide T
    (T=1000, 600 steps: t = 599, where the image still carries signal): it warns when it starts
    below T - ceil(T / steps). Trailing and linspace always start at T - 1 (Lin et al. 2024 show
    why a sampler should). The sampling loop steps from each entry to the next one and from the
    last to alpha_bar = 1; diffusers' DDIMScheduler steps to t - T // steps instead, which leaves
    the grid for linspace and for step counts that do not divide T.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose {', '.join(SPACINGS)}")
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T} (the T of the process), got {steps!r}")
    if spacing == "leading" and (steps - 1) * (T // steps) < T - math.ceil(T / steps):
        warnings.warn(
            f"the leading grid of {steps} steps starts at t = {(steps - 1) * (T // steps)}, not near T - 1 = {T - 1}, "
            f"so the sampler treats pure noise as a partly denoised image; use spacing='trailing'",
            stacklevel=2,
        )
    # numpy, as diffusers computes them: torch's arange/linspace land on .5 where numpy lands just
    # below, and round to a different timestep there (e.g. trailing, T = 100, 24 steps)
    if spacing == "leading":
        grid = (np.arange(steps) * (T // steps)).round()
    elif spacing == "trailing":
        grid = np.round(np.arange(T, 0, -T / steps)) - 1
    else:
        grid = np.linspace(0, T - 1, steps).round()
    return sorted({int(v) for v in grid}, reverse=True)


def guided_output(
    model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor | None,
    guidance_scale: float,
    null_id: int | None,
) -> torch.Tensor:
    """The network output, with classifier-free guidance when ``y`` is given (Ho & Salimans 2022, eq. 6).

    out = out_uncond + s (out_cond - out_uncond): s = 1 is the conditional model alone (one
    forward pass), s = 0 the unconditional one (one pass with the "no label" id), any other s
    one forward pass over the batch doubled.
    """
    if y is None:
        return model(x_t, t)
    if guidance_scale == 1:
        return model(x_t, t, y)
    null = torch.full_like(y, null_id)
    if guidance_scale == 0:
        return model(x_t, t, null)
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@dataclass
class Trajectory:
    """What ``sample(..., return_trajectory=True)`` records: x_t and predicted x_0 at chosen steps."""

    t: list[int]  # timestep each row was recorded at (before the step from t)
    x_t: torch.Tensor  # [K, B, C, H, W], on the CPU
    x0: torch.Tensor  # [K, B, C, H, W], on the CPU


@torch.no_grad()
def sample(
    model: nn.Module,
    d: Diffusion,
    shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    y: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    trajectory_every: int = 1,
    callback: Callable[[dict[str, Any]], None] | None = None,
    clip_x0: bool = True,
    variance: str = "fixed_small",
    spacing: str = "leading",
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Draw images from x_T ~ N(0, I) with DDPM (all T steps) or DDIM (``steps`` of them).

    Args:
        model: the network, called as model(x_t, t) or model(x_t, t, y).
        d: the diffusion process; its ``prediction`` says what the network outputs.
        shape: [B, C, H, W] of the batch.
        sampler: "ddpm" or "ddim". DDPM always runs the T steps of the chain; for fewer steps use
            DDIM (eta = 1 on a shorter grid is the stochastic DDPM-like sampler).
        steps, spacing: DDIM's number of steps and grid (see ``ddim_timesteps``); default T.
        eta: DDIM's noise level (0 deterministic, 1 DDPM-like).
        y, guidance_scale: class ids [B] and classifier-free guidance scale s.
        generator: CPU generator for x_T and every step's noise: the same seed gives the same noise
            on CPU, CUDA and MPS. None uses the device's global generator.
        return_trajectory: also return a ``Trajectory`` of x_t and predicted x_0, every
            ``trajectory_every``-th step and at the last step.
        callback: called after every step with a dict (i, t, x_t, x0, x_prev).
        clip_x0, variance: passed to the step functions.
        x_T: start from this noise instead of drawing it (e.g. to interpolate between noises).
        device: where to sample; default the model's device.

    Returns:
        x_0 in [-1, 1] (clamped), and the ``Trajectory`` when asked for.
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")
    if sampler == "ddpm" and steps not in (None, d.T):
        raise ValueError(
            f"DDPM runs all T = {d.T} steps of the chain; for {steps} steps use sampler='ddim' (eta=1 is DDPM-like)"
        )
    if trajectory_every < 1:
        raise ValueError(f"trajectory_every must be >= 1, got {trajectory_every}")
    shape = tuple(shape)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    null_id = _check_labels(model, y, shape[0], guidance_scale)
    y = y.to(device) if y is not None else None
    grid = list(range(d.T - 1, -1, -1)) if sampler == "ddpm" else ddim_timesteps(d.T, steps or d.T, spacing)

    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T.to(device=device, dtype=torch.float32)
    else:
        x = randn(shape, generator, device)
    was_training = model.training
    model.eval()
    rec_t, rec_x, rec_x0 = [], [], []
    try:
        for i, t in enumerate(tqdm(grid, desc=f"{sampler} sampling", disable=not progress, leave=False, mininterval=1.0)):
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            out = guided_output(model, x, tt, y, guidance_scale, null_id).float()
            last = i == len(grid) - 1
            t_prev = grid[i + 1] if not last else -1
            needs_noise = t > 0 and (sampler == "ddpm" or (eta > 0 and t_prev >= 0))
            noise = randn(shape, generator, device) if needs_noise else None
            if sampler == "ddpm":
                x_prev = ddpm_step(d, out, x, t, noise, clip_x0, variance)
            else:
                x_prev = ddim_step(d, out, x, t, t_prev, eta, noise, clip_x0)
            if return_trajectory or callback is not None:
                x0 = d.predict_x0(x, t, out)
                x0 = x0.clamp(-1, 1) if clip_x0 else x0
                if return_trajectory and (i % trajectory_every == 0 or last):
                    rec_t.append(t)
                    rec_x.append(x.cpu())
                    rec_x0.append(x0.cpu())
                if callback is not None:
                    callback({"i": i, "t": t, "x_t": x, "x0": x0, "x_prev": x_prev})
            x = x_prev
    finally:
        model.train(was_training)
    x = x.clamp(-1, 1)
    if return_trajectory:
        return x, Trajectory(rec_t, torch.stack(rec_x), torch.stack(rec_x0))
    return x


def _check_labels(model: nn.Module, y: torch.Tensor | None, batch: int, guidance_scale: float) -> int | None:
    """Validate class ids and guidance against the model; return its "no label" id (or None)."""
    num_classes = getattr(model, "num_classes", None)
    if y is None:
        if guidance_scale != 1:
            raise ValueError("guidance_scale needs class ids y to guide towards")
        return num_classes
    if num_classes is None:
        raise ValueError("class ids were given, but the model is unconditional (num_classes=None)")
    if y.shape != (batch,):
        raise ValueError(f"y must hold one class id per image: shape [{batch}], got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return num_classes


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), used to walk between DDIM latents.

    slerp = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1, theta the angle between
    z0 and z1. Unlike a straight line, it keeps the norm of Gaussian noise (about sqrt(dim)), so
    every point is a plausible x_T.
    """
    theta = torch.arccos((z0.flatten() @ z1.flatten() / (z0.norm() * z1.norm())).clamp(-1, 1))
    if theta.abs() < 1e-6:  # (nearly) parallel: the straight line is the arc
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)
