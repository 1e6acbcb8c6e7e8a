"""Samplers in the noise-level (sigma) parameterisation of Karras et al. 2022 (EDM) and k-diffusion.

A trained DDPM model becomes a denoiser D(x, sigma) ~ E[x_0 | x] for x = x_0 + sigma eps: the
variance-exploding (VE) view of the same process, with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)
and x = x_t / sqrt(alpha_bar_t) = x_t sqrt(1 + sigma^2). In these coordinates the probability-flow
ODE (Song et al. 2021, eq. 13) is simply

    dx / dsigma = (x - D(x, sigma)) / sigma,

and every solver below integrates it (or its SDE) from sigma_max down a grid ``sigmas`` that ends
with 0, calling ``denoiser(x, sigma)`` with a float sigma. Each solver has k-diffusion's shape:
``sample_x(denoiser, x, sigmas, ..., callback=None)`` returns x at the last sigma, and reports each
step as {"i", "x", "sigma", "x0"}, x in these VE units. ``Solver`` runs any of them on a Karras grid
as a ``samplers.Sampler``, so ``samplers.sample`` draws with it like with DDIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from helpers.device import randn
from helpers.diffusion import Diffusion
from helpers.samplers import Report
from helpers.validate import choice, integer, number

__all__ = [
    "karras_sigmas",
    "Denoiser",
    "euler_step",
    "heun_step",
    "sample_euler",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_euler_ancestral",
    "ancestral_split",
    "sample_reverse_diffusion",
    "sample_pc",
    "SOLVERS",
    "Solver",
]

Sigma = float | torch.Tensor  # one noise level, or one per image as a [B, 1, 1, 1] tensor
DenoiserFn = Callable[[torch.Tensor, Sigma], torch.Tensor]
Callback = Callable[[dict[str, Any]], None] | None


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, then 0 (Karras et al. 2022, eq. 5):

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

    evenly spaced in sigma^(1/rho): rho = 1 is uniform in sigma, larger rho crowds the steps at low noise.
    """
    integer("the grid's number of noise levels", n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


class Denoiser:
    """A DDPM-trained eps/x0/v model as a denoiser D(x, sigma) of x = x_0 + sigma eps.

    The network sees what it was trained on: x_t = x / sqrt(1 + sigma^2) at the timestep whose
    sigma_t is nearest to sigma in log sigma (``quantize``; else the interpolated, fractional t).
    Its output becomes x_0 with the exact sigma: eps: x - sigma eps_hat; x0: itself;
    v: x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v_hat. At sigma = sigma_t this is
    ``Diffusion.predict_x0`` at t.
    """

    def __init__(self, model: nn.Module, d: Diffusion, quantize: bool = True) -> None:
        self.model, self.d, self.quantize = model, d, quantize

    @property
    def sigma_min(self) -> float:
        return float(self.d.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.d.sigmas[-1])

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(x, sigma) for one sigma (a float) or one per image (a tensor of shape [B, 1, 1, 1]);
        everything stays on x's device (no host sync)."""
        t = self.d.timestep_of_sigma(sigma.to(x.device) if isinstance(sigma, torch.Tensor) else sigma)
        if isinstance(t, float):
            timesteps = torch.full((len(x),), round(t) if self.quantize else t, device=x.device)
        else:
            timesteps = (t.round() if self.quantize else t).flatten().expand(len(x))
        timesteps = timesteps.to(torch.long if self.quantize else torch.float32)
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(device=x.device, dtype=x.dtype)
            var = 1 + sigma**2
            scale = var.sqrt()
        else:
            var = 1 + sigma**2
            scale = math.sqrt(var)
        out = self.model(x / scale, timesteps).float()
        if self.d.prediction == "eps":
            return x - sigma * out
        if self.d.prediction == "x0":
            return out
        return x / var - sigma / scale * out


def _report(callback: Callback, i: int, x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "x0": denoised})


def _pairs(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    s = [float(v) for v in sigmas]
    return list(zip(s[:-1], s[1:]))


def euler_step(denoiser: DenoiserFn, x: torch.Tensor, sigma: Sigma, sigma_next: Sigma, denoised: torch.Tensor | None = None) -> torch.Tensor:
    """One Euler step of the probability-flow ODE, x + (sigma_next - sigma) (x - D(x, sigma)) / sigma
    (``denoised``: D(x, sigma) if already computed). Sigmas are floats or per-image tensors [B, 1, 1, 1]."""
    denoised = denoiser(x, sigma) if denoised is None else denoised
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def heun_step(denoiser: DenoiserFn, x: torch.Tensor, sigma: Sigma, sigma_next: Sigma, denoised: torch.Tensor | None = None) -> torch.Tensor:
    """One Heun step (Karras et al. 2022, algorithm 1, deterministic) to sigma_next > 0: an Euler
    step, then the average of the slopes at both ends. Two NFE (one if ``denoised`` is given)."""
    denoised = denoiser(x, sigma) if denoised is None else denoised
    slope = (x - denoised) / sigma
    x_euler = x + (sigma_next - sigma) * slope
    slope_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (slope + slope_next) / 2


@torch.no_grad()
def sample_euler(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (``euler_step`` down the grid). One NFE per step."""
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        x = euler_step(denoiser, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """Heun's method (``heun_step`` down the grid); the last step, to sigma = 0, stays Euler (the
    slope there is undefined). NFE = 2 (steps) - 1 when the grid ends at 0."""
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        step = euler_step if sigma_next == 0 else heun_step
        x = step(denoiser, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) in lambda = -log sigma.

    The ODE is linear in x apart from D, so the step integrates the linear part exactly:
    x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D_hat, with D_hat = D for the first
    and last step and otherwise the multistep extrapolation (1 + 1/(2r)) D - 1/(2r) D_prev,
    r = h_prev / h the ratio of the last two steps in lambda. One NFE per step.
    """
    prev: tuple[torch.Tensor, float] | None = None  # (D at the previous step, its step length h)
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        h = math.log(sigma / sigma_next) if sigma_next > 0 else math.inf
        d_hat = denoised
        if prev is not None and sigma_next > 0:
            r = prev[1] / h
            d_hat = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * prev[0]
        x = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * d_hat
        prev = (denoised, h)
    return x


def ancestral_split(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): a deterministic step to sigma_down, then fresh noise of std sigma_up,
    with sigma_down^2 + sigma_up^2 = sigma_next^2 and sigma_up^2 the DDPM posterior variance in VE units."""
    up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None, callback: Callback = None
) -> torch.Tensor:
    """Euler-ancestral: an Euler step down to sigma_down, then noise of std sigma_up back up to
    sigma_next (``ancestral_split``). One NFE per step; noise from ``generator`` (CPU)."""
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        down, up = ancestral_split(sigma, sigma_next)
        x = x + (down - sigma) * (x - denoised) / sigma
        if sigma_next > 0:
            x = x + up * randn(x.shape, generator, x.device)
    return x


def _reverse_diffusion_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, generator: torch.Generator | None) -> torch.Tensor:
    """x + (sigma^2 - sigma_next^2) s + sqrt(sigma^2 - sigma_next^2) z with the score s = (D - x) / sigma^2:
    the predictor of Song et al. 2021, algorithm 2 (the VE SDE's reverse-diffusion step); to
    sigma_next = 0, D itself (Tweedie's formula), without noise."""
    if sigma_next == 0:
        return denoised
    var = sigma**2 - sigma_next**2
    return x + var * (denoised - x) / sigma**2 + math.sqrt(var) * randn(x.shape, generator, x.device)


def _mean_norm(v: torch.Tensor) -> torch.Tensor:
    """The batch mean of the per-image norms (as Song et al.'s code: a per-image ratio of two norms
    blows the step up for images whose score happens to be near zero)."""
    return v.flatten(1).norm(dim=1).mean()


@torch.no_grad()
def sample_reverse_diffusion(
    denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None, callback: Callback = None
) -> torch.Tensor:
    """The reverse-diffusion sampler of Song et al. 2021 (``_reverse_diffusion_step``): PC's
    predictor on its own, kept beside ``sample_pc`` so that the two can be compared (not in
    ``SOLVERS``: with ``corrector_steps=0``, "pc" is this). One NFE per step; noise from ``generator`` (CPU)."""
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        x = _reverse_diffusion_step(x, denoised, sigma, sigma_next, generator)
    return x


@torch.no_grad()
def sample_pc(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    corrector_steps: int = 1,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, algorithm 2, VE SDE).

    Predictor: the reverse-diffusion step to sigma_next. Corrector, at every sigma_next > 0:
    ``corrector_steps`` steps of Langevin dynamics x += e s + sqrt(2 e) z, with the step size
    e = 2 (snr |z| / |s|)^2 (algorithm 4; norms averaged over the batch) for a signal-to-noise ratio ``snr``.
    NFE = steps + corrector_steps (steps - 1) when the grid ends at 0.
    """
    integer("corrector_steps", corrector_steps, minimum=0)
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas)):
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigma, denoised)
        x = _reverse_diffusion_step(x, denoised, sigma, sigma_next, generator)
        for _ in range(corrector_steps if sigma_next > 0 else 0):
            score = (denoiser(x, sigma_next) - x) / sigma_next**2
            z = randn(x.shape, generator, x.device)
            norm = _mean_norm(score)  # a zero score (an untrained model) leaves nothing to correct: step 0
            step = torch.where(norm > 0, 2 * (snr * _mean_norm(z) / norm.clamp(min=torch.finfo(norm.dtype).tiny)) ** 2, 0.0)
            x = x + step * score + (2 * step).sqrt() * z  # decided on the device: no read back to the host
    return x


SOLVERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "euler-a": sample_euler_ancestral,
    "pc": sample_pc,
}
STOCHASTIC = ("euler-a", "pc")


@dataclass(frozen=True)
class Solver:
    """One of ``SOLVERS`` at a budget of ``nfe`` network evaluations on a Karras grid (rho) from the
    model's sigma_max to its sigma_min, then 0. ``corrector_steps`` and ``snr`` are PC's."""

    name: str
    nfe: int
    rho: float = 7.0
    corrector_steps: int = 1
    snr: float = 0.16

    def __post_init__(self) -> None:
        choice("solver", self.name, SOLVERS)
        integer("nfe (network evaluations)", self.nfe)
        integer("corrector_steps", self.corrector_steps, minimum=0)
        number("rho", self.rho)
        number("snr", self.snr)

    @property
    def steps(self) -> int:
        """Grid steps (noise levels before the final 0) that spend at most ``nfe`` evaluations."""
        if self.name == "heun":
            return (self.nfe + 1) // 2  # 2 per step, 1 for the last
        if self.name == "pc":
            return (self.nfe + self.corrector_steps) // (1 + self.corrector_steps)  # 1 + corrector_steps per step, 1 for the last
        return self.nfe

    @property
    def spent(self) -> int:
        """The network evaluations a run makes: the most whole steps fit into ``nfe`` (Heun: 2 per step
        and 1 for the last; PC: 1 + corrector_steps per step and 1 for the last), so up to
        corrector_steps fewer than ``nfe``."""
        if self.name == "heun":
            return 2 * self.steps - 1
        if self.name == "pc":
            return self.steps + self.corrector_steps * (self.steps - 1)
        return self.steps

    def __str__(self) -> str:
        extra = f", {self.corrector_steps} corrector step(s), snr {self.snr:g}" if self.name == "pc" else ""
        return f"{self.name}, {self.steps} steps, {self.spent} NFE (Karras grid rho {self.rho:g}{extra})"

    def num_steps(self, d: Diffusion) -> int:
        return self.steps

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x_T: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        """The ``samplers.Sampler`` protocol: from x_T ~ N(0, I) (the same x_T DDPM and DDIM start
        from, as x = x_T sqrt(1 + sigma_max^2) in the VE coordinates) down the Karras grid to sigma = 0."""
        denoiser = Denoiser(model, d)
        x = x_T * math.sqrt(1 + denoiser.sigma_max**2)
        sigmas = karras_sigmas(self.steps, denoiser.sigma_min, denoiser.sigma_max, self.rho)

        def step(s: dict[str, Any]) -> None:  # VE state -> the process's x_t, sigma -> its timestep
            report({"i": s["i"], "t": d.timestep_of_sigma(s["sigma"]), "sigma": s["sigma"], "x_t": s["x"] / math.sqrt(1 + s["sigma"] ** 2), "x0": s["x0"]})

        solve = SOLVERS[self.name]
        if self.name == "pc":
            return solve(denoiser, x, sigmas, corrector_steps=self.corrector_steps, snr=self.snr, generator=generator, callback=step)
        if self.name in STOCHASTIC:
            return solve(denoiser, x, sigmas, generator=generator, callback=step)
        return solve(denoiser, x, sigmas, callback=step)
