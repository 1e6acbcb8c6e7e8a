"""Samplers in k-diffusion's shape: pure step functions, a sampler object per algorithm, one loop.

* ``ddpm_step``: ancestral sampling from p(x_{t-1} | x_t) (Ho et al. 2020, algorithm 2).
* ``ddim_step``: the DDIM update (Song et al. 2021, eq. 12), deterministic at eta = 0.
  Both return ``(x_prev, x0_hat)``: the next state and the prediction it was made from.
* ``ddim_timesteps``: which timesteps a shortened sampler visits ("trailing", the default,
  "leading" and "linspace", the grids diffusers produces).
* ``Sampler``: the one protocol every sampler of the course follows (DDPM, DDIM here; the
  noise-level solvers in ``helpers.solvers``; multistep consistency in ``helpers.consistency``):
  ``num_steps(d)`` and ``run(model, d, x_T, generator, report)``. A new sampler is one class.
* ``DDPM`` and ``DDIM``: a sampler's settings, its grid and its step, as one small object.
* ``Guided`` and ``TextGuided``: a class- or text-conditional model with its labels or captions and
  classifier-free guidance scale, wrapped as a model ``(x_t, t) -> output`` that any sampler can call.
* ``sample``: the one entry point, for every sampler: a progress bar, a callback that sees every
  step as one dict (``Trajectory`` records them) and device-independent noise from a CPU generator.

Timesteps in the step functions are Python ints: one timestep for the whole batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.device import randn
from helpers.diffusion import Diffusion
from helpers.validate import choice, integer, number

__all__ = [
    "VARIANCES",
    "SPACINGS",
    "ddpm_step",
    "ddim_step",
    "ddim_timesteps",
    "Step",
    "Report",
    "Sampler",
    "Chain",
    "DDPM",
    "DDIM",
    "Guided",
    "TextGuided",
    "fits",
    "sample",
    "ddim_invert",
    "Trajectory",
    "slerp",
]

VARIANCES = ("fixed_small", "fixed_large")
SPACINGS = ("trailing", "leading", "linspace")


def ddpm_step(
    d: Diffusion,
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    noise: torch.Tensor | None,
    clip_x0: bool = True,
    variance: str = "fixed_small",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1} (DDPM, Ho et al. 2020, algorithm 2 and eq. 6-7).

    1. predicted x_0 from the network output;  2. clip it to [-1, 1] (optional);
    3. posterior mean of q(x_{t-1} | x_t, x_0_hat);  4. add sigma_t z, z ~ N(0, I), unless t = 0.

    ``variance`` picks sigma_t^2: "fixed_small" = beta_tilde_t (the posterior variance) or
    "fixed_large" = beta_t (what DDPM used for its CIFAR-10 FID). Without clipping, step 3 equals
    the paper's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat).

    Returns (x_{t-1}, the (clipped) x_0 prediction).
    """
    choice("variance", variance, VARIANCES)
    x0 = d.predict_x0(x_t, t, out)  # 1.
    if clip_x0:
        x0 = x0.clamp(-1, 1)  # 2.
    mean, posterior_var = d.q_posterior(x0, x_t, t)  # 3.
    if t == 0:
        return mean, x0
    if noise is None:
        raise ValueError(f"ddpm_step needs noise for t = {t} > 0")
    var = posterior_var if variance == "fixed_small" else float(d.betas[t])
    return mean + var**0.5 * noise, x0  # 4.


def ddim_step(
    d: Diffusion,
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12 and 16).

    1. predicted x_0;  2. clip it to [-1, 1] (optional);  3. eps re-derived from the (clipped)
    x_0 as (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t), so that x_0 and eps stay consistent with x_t
    (as in improved-diffusion; diffusers keeps the raw eps unless ``use_clipped_model_output``);
    4. sigma^2 = eta^2 (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev);
    5. x_prev = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z.

    ``t_prev = -1`` means alpha_bar = 1: the last step lands on x_0 itself. At eta = 1 on the full
    grid (t_prev = t - 1) the step is exactly ``ddpm_step`` with the posterior variance.
    Returns (x_{t_prev}, the (clipped) x_0 prediction).
    """
    if not eta >= 0:  # also refuses NaN
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
    return x_prev, x0


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The ``steps`` timesteps a sampler visits, in descending order (diffusers' three spacings).

    trailing: round(T - k * T / steps) - 1 for k = 0..steps-1 (T=1000, 10 steps: 999, 899, ..., 99)
    leading:  k * (T // steps) for k = steps-1..0            (T=1000, 50 steps: 980, 960, ..., 0)
    linspace: round(linspace(0, T - 1, steps)), reversed      (T=1000, 10 steps: 999, 888, ..., 0)

    Trailing is the default because it starts at t = T - 1, where x_T is pure noise as the
    sampler assumes: Lin et al. 2024 (section 3.3, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed") show that grids starting below T - 1 hand the model noise it was trained
    to read as a partly clean image. Linspace starts there too. Leading starts at
    (steps - 1) * (T // steps), far below T - 1 when ``steps`` does not divide T (T=1000, 600 steps:
    t = 599, where the image still carries signal): it warns when it starts below T - ceil(T / steps). The sampling loop steps from each entry to the next one and from the
    last to alpha_bar = 1; diffusers' DDIMScheduler steps to t - T // steps instead, which leaves
    the grid for linspace and for step counts that do not divide T.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose {', '.join(SPACINGS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
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


Step = dict[str, Any]
"""What a sampler reports after each step, the same keys for every sampler: ``i`` (0-based step),
``steps`` (how many), ``t`` (the timestep, fractional for noise-level samplers) and ``sigma`` (the
same noise level in VE units, sigma_t = sqrt((1 - ab_t) / ab_t)), ``x_t`` (the state the network
was given, in the process's own units) and ``x0`` (the prediction of x_0 the step used)."""
Report = Callable[[Step], None]


class Sampler(Protocol):
    """The one protocol of the course's samplers; ``sample`` runs any of them.

    ``run`` draws every step's noise from ``generator`` (CPU) and calls ``report`` with the keys of
    ``Step`` except ``steps`` once per step; it returns x after the last step (not yet clamped).
    """

    def num_steps(self, d: Diffusion) -> int: ...

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor: ...


class Chain:
    """The loop of a sampler that walks down a grid of integer timesteps (DDPM, DDIM): at each
    (t, t_prev), one network call, fresh noise when ``needs_noise``, then ``step``."""

    def timesteps(self, T: int) -> list[int]:
        raise NotImplementedError

    def needs_noise(self, t: int, t_prev: int) -> bool:
        raise NotImplementedError

    def step(self, d: Diffusion, out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def num_steps(self, d: Diffusion) -> int:
        return len(self.timesteps(d.T))

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        grid = self.timesteps(d.T)
        for i, (t, t_prev) in enumerate(zip(grid, grid[1:] + [-1])):
            out = model(x, torch.full((len(x),), t, device=x.device, dtype=torch.long)).float()
            noise = randn(x.shape, generator, x.device) if self.needs_noise(t, t_prev) else None
            x_prev, x0 = self.step(d, out, x, t, t_prev, noise)
            report({"i": i, "t": t, "sigma": float(d.sigmas[t]), "x_t": x, "x0": x0})
            x = x_prev
        return x


@dataclass(frozen=True)
class DDPM(Chain):
    """Ancestral sampling over all T steps of the chain (``ddpm_step``).

    ``variance``: "fixed_small" (beta tilde) or "fixed_large" (beta); ``clip_x0``: clip the
    predicted x_0 to [-1, 1] before the posterior mean. For fewer steps use ``DDIM`` (eta = 1 on a
    shorter grid is the DDPM-like sampler).
    """

    variance: str = "fixed_small"
    clip_x0: bool = True

    def __post_init__(self) -> None:
        choice("variance", self.variance, VARIANCES)

    def timesteps(self, T: int) -> list[int]:
        return list(range(T - 1, -1, -1))

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return t > 0

    def step(self, d: Diffusion, out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return ddpm_step(d, out, x_t, t, noise, self.clip_x0, self.variance)

    def __str__(self) -> str:
        return f"DDPM ({self.variance}{'' if self.clip_x0 else ', unclipped'})"


@dataclass(frozen=True)
class DDIM(Chain):
    """DDIM over ``steps`` timesteps of the ``spacing`` grid (``ddim_step``, ``ddim_timesteps``).

    ``steps``: None for all T; ``eta``: 0 deterministic, 1 DDPM-like; ``clip_x0`` as for DDPM.
    """

    steps: int | None = None
    eta: float = 0.0
    spacing: str = "trailing"
    clip_x0: bool = True

    def __post_init__(self) -> None:
        choice("spacing", self.spacing, SPACINGS)
        if self.steps is not None:
            integer("DDIM steps", self.steps)  # or None for all T
        number("eta", self.eta, inclusive=True)

    def timesteps(self, T: int) -> list[int]:
        return ddim_timesteps(T, self.steps or T, self.spacing)

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return self.eta > 0 and t_prev >= 0

    def step(self, d: Diffusion, out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step(d, out, x_t, t, t_prev, self.eta, noise, self.clip_x0)

    def __str__(self) -> str:
        return f"DDIM-{self.steps or 'T'} ({self.spacing}, eta {self.eta:g}{'' if self.clip_x0 else ', unclipped'})"


class _Guidance(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) around a conditional model, as a model
    ``(x_t, t) -> output``: out = out_uncond + s (out_cond - out_uncond). s = 1 is the conditional model
    alone (one forward pass), s = 0 the unconditional one (one pass with the "no condition" input),
    any other s one forward pass over the batch doubled. The model is called as ``model(x_t, t, c)``;
    a subclass gives the condition and the "no condition" (``_inputs``: one row per image); ``size``
    is the batch they fit, and ``mismatch`` the error for another batch."""

    model: nn.Module
    scale: float
    size: int
    mismatch: str  # formatted with n (the size) and batch

    def _check_scale(self, scale: float) -> float:
        if not math.isfinite(scale):
            raise ValueError(f"the guidance scale must be a finite number, got {scale}")
        return float(scale)

    def _inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(the condition, the "no condition") on ``device``."""
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(x_t) != self.size:
            raise ValueError(self.mismatch.format(n=self.size, batch=len(x_t)))
        cond, null = self._inputs(x_t.device)
        if self.scale == 1:
            return self.model(x_t, t, cond)
        if self.scale == 0:
            return self.model(x_t, t, null)
        out_cond, out_uncond = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null])).chunk(2)
        return out_uncond + self.scale * (out_cond - out_uncond)


class Guided(_Guidance):
    """A class-conditional model as a model ``(x_t, t) -> output``: labels ``y`` and classifier-free
    guidance scale ``scale`` fixed; "no label" is the id ``num_classes``."""

    mismatch = "y holds {n} class ids for a batch of {batch} images"

    def __init__(self, model: nn.Module, y: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("class ids were given, but the model is unconditional (num_classes=None)")
        if y.ndim != 1:
            raise ValueError(f"y must hold one class id per image, a 1-D tensor; got shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"class ids must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
        self.model, self.scale, self.null_id, self.size = model, self._check_scale(scale), num_classes, len(y)
        self.register_buffer("y", y.long(), persistent=False)

    def _inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.y.to(device)
        return y, torch.full_like(y, self.null_id)


class TextGuided(_Guidance):
    """A text-conditional model (``helpers.text_unet.TextUNet``: ``model(x_t, t, ids)``) as a model
    ``(x_t, t) -> output``: the captions' token ids [B, L] and the guidance scale fixed; "no text" is
    the model's ``null_ids``, the empty caption, as Stable Diffusion guides with the empty prompt."""

    mismatch = "{n} captions for a batch of {batch} images"

    def __init__(self, model: nn.Module, ids: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        null = getattr(model, "null_ids", None)
        if null is None:
            raise ValueError("captions were given, but the model has no text conditioning (a TextUNet reads captions)")
        if ids.ndim != 2 or ids.shape[1] != null.shape[1] or ids.dtype.is_floating_point:
            raise ValueError(f"need token ids [B, {null.shape[1]}] from the model's tokenizer, got {ids.dtype} of shape {tuple(ids.shape)}")
        self.model, self.scale, self.size = model, self._check_scale(scale), len(ids)
        self.register_buffer("ids", ids.long(), persistent=False)

    def _inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.ids.to(device)
        return ids, self.model.null_ids.to(device).expand_as(ids)


def fits(d: Any, sampler: Any) -> bool:
    """Whether ``sampler`` can sample the process ``d``: a flow-matching model (it predicts a velocity)
    takes a flow sampler (``process = "flow"``), and only it; a diffusion model takes every other."""
    return (getattr(d, "prediction", None) == "velocity") == (getattr(sampler, "process", None) == "flow")


class Trajectory:
    """A ``sample`` callback, for any sampler, that records x_t and the predicted x_0 every
    ``every``-th step and at the last one: ``.t`` and ``.sigma`` (the noise level of each record),
    ``.x_t`` and ``.x0`` ([K, B, C, H, W], CPU)."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.t: list[float] = []
        self.sigma: list[float] = []
        self._x_t: list[torch.Tensor] = []
        self._x0: list[torch.Tensor] = []

    def __call__(self, step: dict[str, Any]) -> None:
        if step["i"] % self.every == 0 or step["i"] == step["steps"] - 1:
            self.t.append(step["t"])
            self.sigma.append(step["sigma"])
            self._x_t.append(step["x_t"].cpu())
            self._x0.append(step["x0"].cpu())

    @property
    def x_t(self) -> torch.Tensor:
        return torch.stack(self._x_t)

    @property
    def x0(self) -> torch.Tensor:
        return torch.stack(self._x0)



@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def starting_noise(x_T: torch.Tensor | Sequence[int], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """x_T as float32: the tensor given (on its own device), or N(0, I) of that shape drawn from
    ``generator`` on the CPU and moved to ``device``."""
    if isinstance(x_T, torch.Tensor):
        return x_T.to(dtype=torch.float32)
    return randn(tuple(x_T), generator, device)


def _device_of(model: Callable[..., torch.Tensor]) -> torch.device:
    """Where a model's weights are (the CPU for a model without any, such as an analytic denoiser)."""
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    return next(params, torch.empty(0)).device


@torch.no_grad()
def sample(
    model: Callable[..., torch.Tensor],
    d: Diffusion,
    x_T: torch.Tensor | Sequence[int],
    sampler: Sampler = DDPM(),
    generator: torch.Generator | None = None,
    callback: Report | None = None,
    progress: bool = True,
    clamp: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw images from x_T ~ N(0, I) with any sampler of the course: ``DDPM()``, ``DDIM(steps,
    eta, spacing)``, a noise-level ``solvers.Solver``, ``consistency.MultistepConsistency``.

    Args:
        model: the network, called as model(x_t, t); wrap a class-conditional one in ``Guided``.
        d: the diffusion process; its ``prediction`` says what the network outputs (or a
            ``helpers.flow.FlowMatching`` process, whose samplers are ``FlowEuler`` and ``FlowHeun``).
        x_T: the starting noise (sampling runs on its device), or a shape [B, C, H, W] to draw it
            from ``generator`` onto ``device`` (default: the model's device).
        sampler: the algorithm and its settings.
        generator: CPU generator for x_T and every step's noise: the same seed gives the same noise
            on CPU, CUDA and MPS. None uses the device's global generator.
        callback: called after every step with one dict, the same for every sampler (``Step``:
            i, steps, t, sigma, x_t, x0). ``Trajectory`` is one.
        progress: show a progress bar.
        clamp: clamp the result to the pixel range [-1, 1]; off for samples that are not pixels
            (an autoencoder's latents, ``helpers.latent``).

    Returns:
        x_0 (clamped to [-1, 1] unless ``clamp`` is off), on x_T's device.
    """
    if not fits(d, sampler):
        raise ValueError(
            f"{sampler} cannot sample {d!r}: a flow-matching model predicts a velocity on the straight path from data to noise "
            "and has no beta schedule for DDPM, DDIM or the sigma solvers to step through, and the flow samplers need one; "
            "sample a flow model with helpers.flow.FlowEuler or FlowHeun, and a diffusion model with the others"
        )
    x = starting_noise(x_T, generator, device if device is not None else _device_of(model))
    total = sampler.num_steps(d)
    with tqdm(total=total, desc=str(sampler), disable=not progress, leave=False, mininterval=1.0) as bar:

        def report(step: Step) -> None:
            if callback is not None:
                callback({**step, "steps": total})
            bar.update(1)

        with eval_mode(model) if isinstance(model, nn.Module) else nullcontext():
            x = sampler.run(model, d, x, generator, report)
    return x.clamp(-1, 1) if clamp else x


@torch.no_grad()
def ddim_invert(model: nn.Module, d: Diffusion, x0: torch.Tensor, steps: int | None = None, spacing: str = "trailing", progress: bool = True) -> torch.Tensor:
    """Encode images x_0 to latents x_T by running DDIM at eta = 0 (unclipped) up its grid.

    DDIM at eta = 0 discretises an ODE, which can be integrated in either direction (Song et al.
    2021, section 4.3). Each step from level a to the next level b > a of the ascending grid
    (a = -1 is x_0 itself) is the DDIM update with a and b swapped, x_b = sqrt(ab_b) x0_hat +
    sqrt(1 - ab_b) eps_hat, evaluated at (x_a, max(a, 0)) because x_b is not known yet. Decoding the
    latents with ``DDIM(steps, clip_x0=False)`` on the same grid returns x_0 up to the error of that
    substitution, which shrinks as the grid gets finer. Runs on x0's device.
    """
    grid = DDIM(steps, spacing=spacing).timesteps(d.T)[::-1]  # ascending
    x = x0.to(dtype=torch.float32)
    with eval_mode(model):
        for a, b in tqdm(list(zip([-1, *grid[:-1]], grid)), desc="DDIM inversion", disable=not progress, leave=False, mininterval=1.0):
            t = max(a, 0)
            out = model(x, torch.full((len(x),), t, device=x.device, dtype=torch.long)).float()
            ab_b = float(d.alpha_bars[b])
            x = ab_b**0.5 * d.predict_x0(x, t, out) + (1 - ab_b) ** 0.5 * d.predict_eps(x, t, out)
    return x


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
