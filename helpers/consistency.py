"""Consistency models (Song et al. 2023) distilled from a trained diffusion model.

A consistency function maps every point of one probability-flow ODE trajectory to the
trajectory's origin: f(x_sigma, sigma) = x_{sigma_min} for all sigma, so one evaluation at
sigma_max turns noise into an image. It is parameterised so that the boundary condition
f(x, sigma_min) = x holds exactly (Song et al. 2023, eq. 7, with EDM's sigma_data = 0.5):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma),
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2).

F is the course's U-Net read in EDM's units, F = (D - c_skip^EDM x) / c_out^EDM with D the
``solvers.Denoiser`` of the same network and c^EDM the same coefficients without the shift by
sigma_min (Karras et al. 2022, table 1). A student copied from the teacher therefore starts as the
teacher's denoiser, which is how Song et al. initialise consistency distillation.

Consistency distillation (CD, their algorithm 2) on the Karras grid sigma_1 = sigma_min < ... <
sigma_N = sigma_max of ``solvers.karras_sigmas``: noise x_0 to x_{n+1} = x_0 + sigma_{n+1} z, take
one teacher ODE step (Heun or Euler, ``solvers.heun_step``/``euler_step``) down to sigma_n, and
pull f_theta(x_{n+1}, sigma_{n+1}) towards f_target(x_hat_n, sigma_n), where the target network is
an EMA of the student that receives no gradient:

    L = E_n d( f_theta(x_{n+1}, sigma_{n+1}), stopgrad f_target(x_hat_n, sigma_n) ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from helpers.diffusion import Diffusion
from helpers.device import randn
from helpers.samplers import Report
from helpers.validate import integer, number
from helpers.solvers import Denoiser, Sigma, euler_step, heun_step, karras_sigmas

__all__ = [
    "SIGMA_DATA",
    "c_skip",
    "c_out",
    "ConsistencyFunction",
    "DISTANCES",
    "TEACHER_STEPS",
    "cd_sigmas",
    "cd_target",
    "cd_loss",
    "MultistepConsistency",
    "consistency_record",
]

SIGMA_DATA = 0.5  # the data's standard deviation assumed by EDM's and CM's coefficients (images in [-1, 1])


def c_skip(sigma: Sigma, sigma_min: float, sigma_data: float = SIGMA_DATA) -> Sigma:
    """sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2): 1 at sigma_min, towards 0 at high noise."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: Sigma, sigma_min: float, sigma_data: float = SIGMA_DATA) -> Sigma:
    """(sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2): exactly 0 at sigma_min."""
    return (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5


class ConsistencyFunction:
    """f(x, sigma) = c_skip x + c_out F(x, sigma) for a course U-Net (see the module docstring).

    ``sigma`` is a float or one noise level per image as a [B, 1, 1, 1] tensor, as for ``Denoiser``.
    """

    def __init__(self, model: nn.Module, d: Diffusion) -> None:
        self.model = model
        self.denoiser = Denoiser(model, d)
        self.sigma_min, self.sigma_max = self.denoiser.sigma_min, self.denoiser.sigma_max

    def __call__(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(device=x.device, dtype=x.dtype)
        # F: the network's output in EDM's units (c^EDM are c_skip and c_out with sigma_min = 0)
        f_net = (self.denoiser(x, sigma) - c_skip(sigma, 0.0) * x) / c_out(sigma, 0.0)
        return c_skip(sigma, self.sigma_min) * x + c_out(sigma, self.sigma_min) * f_net


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per image, ||a - b||^2."""
    return (a - b).flatten(1).pow(2).sum(1)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per image, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, section 3.3):
    like L2 for small errors and like L1 for large ones, so outliers pull less."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return (l2(a, b) + c**2).sqrt() - c


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"l2": l2, "pseudo-huber": pseudo_huber}
TEACHER_STEPS = {"heun": heun_step, "euler": euler_step}  # euler is DDIM in these coordinates


def cd_sigmas(n_levels: int, denoiser: Denoiser, sigma_max: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """The CD grid sigma_1 = sigma_min < ... < sigma_N = sigma_max (float64; default sigma_max: the
    model's): ``karras_sigmas`` ascending, without its final 0."""
    integer("the CD grid's number of noise levels", n_levels, minimum=2)
    return karras_sigmas(n_levels, denoiser.sigma_min, denoiser.sigma_max if sigma_max is None else sigma_max, rho)[:-1].flip(0)


@torch.no_grad()
def cd_target(
    target: Callable[[torch.Tensor, Sigma], torch.Tensor],
    teacher: Callable[[torch.Tensor, Sigma], torch.Tensor],
    x_next: torch.Tensor,
    sigma_next: Sigma,
    sigma: Sigma,
    teacher_step: str = "heun",
) -> torch.Tensor:
    """f_target(x_hat_n, sigma_n), x_hat_n one teacher ODE step from (x_{n+1}, sigma_{n+1}) down to
    sigma_n; without gradient. ``teacher`` is a denoiser D(x, sigma), ``target`` a consistency function."""
    return target(TEACHER_STEPS[teacher_step](teacher, x_next, sigma_next, sigma), sigma)


def cd_loss(
    student: Callable[[torch.Tensor, Sigma], torch.Tensor],
    target: Callable[[torch.Tensor, Sigma], torch.Tensor],
    teacher: Callable[[torch.Tensor, Sigma], torch.Tensor],
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    n: torch.Tensor,
    z: torch.Tensor,
    distance: str = "pseudo-huber",
    teacher_step: str = "heun",
) -> torch.Tensor:
    """Per-image CD losses d(f_theta(x_{n+1}, sigma_{n+1}), ``cd_target``) with x_{n+1} = x_0 + sigma_{n+1} z.

    ``sigmas`` is the ascending grid of ``cd_sigmas`` (the float64 CPU table, or a float32 copy on the
    images' device); ``n`` holds one index in 0..N-2 per image. The levels are looked up on the
    images' device, so nothing is read back to the host.
    """
    view = (len(x0),) + (1,) * (x0.dim() - 1)
    levels, n = sigmas.to(x0.dtype).to(x0.device), n.to(x0.device)
    sigma, sigma_next = levels[n].view(view), levels[n + 1].view(view)
    x_next = x0 + sigma_next * z
    wanted = cd_target(target, teacher, x_next, sigma_next, sigma, teacher_step)
    return DISTANCES[distance](student(x_next, sigma_next), wanted)


def consistency_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """What a distilled checkpoint says about itself (its ``extra['consistency']``), or None for a
    diffusion model."""
    return (ckpt.get("extra") or {}).get("consistency")


@dataclass(frozen=True)
class MultistepConsistency:
    """Multistep consistency sampling (Song et al. 2023, algorithm 1) with ``nfe`` network evaluations:
    x_0 = f(x_T sqrt(1 + sigma_max^2), sigma_max), then for each intermediate level tau:
    x_0 = f(x_0 + sqrt(tau^2 - sigma_min^2) z, tau).

    ``sigma_max`` is the top of the grid the model was distilled on (None: the diffusion model's);
    ``sigmas`` the intermediate levels (nfe - 1 of them, decreasing), by default the inner points of
    ``karras_sigmas(nfe + 1)`` between sigma_max and sigma_min.
    """

    nfe: int = 1
    sigma_max: float | None = None
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        integer("nfe (network evaluations)", self.nfe)
        if self.sigma_max is not None:
            number("sigma_max", self.sigma_max)
        if self.sigmas is not None:
            if len(self.sigmas) != self.nfe - 1:
                raise ValueError(f"{self.nfe} network evaluations need {self.nfe - 1} intermediate noise levels, got {len(self.sigmas)}")
            if any(not (math.isfinite(s) and s > 0) for s in self.sigmas) or list(self.sigmas) != sorted(self.sigmas, reverse=True):
                raise ValueError(f"intermediate noise levels must be positive and decreasing, got {self.sigmas}")

    def top(self, f: ConsistencyFunction) -> float:
        """The level sampling starts from."""
        return f.sigma_max if self.sigma_max is None else self.sigma_max

    def levels(self, f: ConsistencyFunction) -> list[float]:
        """The intermediate levels this sampler uses with ``f`` (nfe - 1 of them)."""
        if self.sigmas is not None:
            return list(self.sigmas)
        return [float(s) for s in karras_sigmas(self.nfe + 1, f.sigma_min, self.top(f))[1 : self.nfe]]

    def __str__(self) -> str:
        top = "" if self.sigma_max is None else f" from sigma {self.sigma_max:g}"
        inner = "" if self.nfe == 1 else f" via sigma {', '.join(f'{s:.3g}' for s in self.sigmas)}" if self.sigmas else " (Karras grid)"
        return f"consistency, {self.nfe} NFE{top}{inner}"

    def num_steps(self, d: Diffusion) -> int:
        return self.nfe

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x_T: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        """The ``samplers.Sampler`` protocol: x_0 from x_T ~ N(0, I), which becomes x_T sqrt(1 + sigma_max^2)
        as for ``solvers.Solver``; fresh noise re-enters at each intermediate level."""
        f = ConsistencyFunction(model, d)
        x, levels = x_T * math.sqrt(1 + self.top(f) ** 2), [self.top(f), *self.levels(f)]
        for i, sigma in enumerate(levels):
            if i:  # back up to the next level: x_0 + sqrt(tau^2 - sigma_min^2) z
                x = x0 + math.sqrt(max(sigma**2 - f.sigma_min**2, 0.0)) * randn(x0.shape, generator, x0.device)
            x0 = f(x, sigma)
            report({"i": i, "t": d.timestep_of_sigma(sigma), "sigma": sigma, "x_t": x / math.sqrt(1 + sigma**2), "x0": x0})
        return x0
