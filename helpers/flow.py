"""Flow matching on the straight interpolant (rectified flow), its samplers and reflow.

The process joins data and noise by a straight line in continuous time t in [0, 1],

    x_t = (1 - t) x_0 + t eps,   eps ~ N(0, I),                         (Liu et al. 2023, eq. 1)

whose velocity along one path is the constant u = dx_t/dt = eps - x_0 (the conditional velocity).
A network u_theta(x_t, t) regressed on it,

    L = E_{t, x_0, eps} || u_theta(x_t, t) - (eps - x_0) ||^2,          (Lipman et al. 2023, eq. 9)

is minimised by the marginal velocity u(x, t) = E[eps - x_0 | x_t = x] (their Theorem 2): the field
whose ODE dx/dt = u(x, t), run from t = 1 (noise) down to t = 0, carries N(0, I) to the data.
``FlowEuler`` and ``FlowHeun`` integrate it on the course's one sampler protocol
(``helpers.samplers.Sampler``). A velocity determines the other predictions on the same x_t:

    x0_hat = x_t - t u,   eps_hat = x_t + (1 - t) u.

A variance-preserving state x = alpha x_0 + sigma eps (notebooks 01-09) is the flow's state
x / (alpha + sigma) at t = sigma / (alpha + sigma): the same paths under a change of time and
scale. With Salimans & Ho's v = alpha eps - sigma x_0 (and alpha^2 + sigma^2 = 1),

    u = (sigma - alpha) x + (alpha + sigma) v.

Time t is drawn uniformly or from SD3's logit-normal (t = sigmoid(m + s n), n ~ N(0, 1); Esser et
al. 2024, sec. 3.1), and the network sees t scaled by ``time_scale`` (1000, so that its sinusoidal
embedding sees the range the DDPM timesteps had, as diffusers' flow-matching scheduler does).

Reflow (Liu et al. 2023, sec. 2.3) trains a second flow on the pairs (eps, x0_hat) that the first
one's ODE produces (``reflow_pairs``; the second flow is a ``FlowMatching(coupling="reflow")``, whose
Trainer takes each image's eps from its pair); ``straightness`` measures how far a path is from a
straight line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from helpers.diffusion import Diffusion
from helpers.samplers import Report, sample
from helpers.validate import choice, integer, number

__all__ = ["TIME_SAMPLINGS", "COUPLINGS", "FlowMatching", "process_from_config", "flow_times", "FlowEuler", "FlowHeun", "FLOW_SAMPLERS", "reflow_pairs", "straightness"]

TIME_SAMPLINGS = ("uniform", "logit_normal")
COUPLINGS = ("independent", "reflow")


def _per_image(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """t as a float, or a [B] tensor reshaped to broadcast over x's image dimensions."""
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must hold one time per image, shape [{x.shape[0]}]; got {tuple(t.shape)}")
        return t.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return float(t)


class FlowMatching:
    """The straight-interpolant process and its loss; the network outputs the velocity u.

    Args:
        time_sampling: how training draws t: "uniform" on [0, 1] or "logit_normal".
        logit_mean, logit_std: m and s of the logit-normal.
        time_scale: the network is called as model(x_t, time_scale * t).
        coupling: how x_0 and eps are paired in training: "independent" (any image with fresh
            noise), or "reflow" (the pairs of ``reflow_pairs``: the Trainer takes each image's eps
            from the dataset, whose items are (x0_hat, eps)).
    """

    prediction = "velocity"

    def __init__(
        self, time_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0, time_scale: float = 1000.0, coupling: str = "independent"
    ) -> None:
        self.time_sampling = choice("time_sampling", time_sampling, TIME_SAMPLINGS)
        self.coupling = choice("coupling", coupling, COUPLINGS)
        self.logit_mean = number("logit_mean", logit_mean, minimum=-math.inf)
        self.logit_std = number("logit_std", logit_std)
        self.time_scale = number("time_scale", time_scale)

    def config(self) -> dict[str, Any]:
        """What a checkpoint records; ``from_config`` rebuilds the process from it."""
        return {"process": "flow", "prediction": self.prediction, "time_sampling": self.time_sampling, "logit_mean": self.logit_mean,
                "logit_std": self.logit_std, "time_scale": self.time_scale, "coupling": self.coupling}  # fmt: skip

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowMatching:
        if config.get("process") != "flow":
            raise ValueError(f"not a flow-matching process: {config}")
        return cls(**{k: v for k, v in config.items() if k not in ("process", "prediction")})

    def __repr__(self) -> str:
        extra = f", m={self.logit_mean:g}, s={self.logit_std:g}" if self.time_sampling == "logit_normal" else ""
        coupled = ", reflow pairs" if self.coupling == "reflow" else ""
        return f"FlowMatching(t ~ {self.time_sampling}{extra}{coupled})"

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """n training times in [0, 1], float32 on ``device``, drawn from ``generator`` (on its own
        device; None: the global generator of ``device``)."""
        where = generator.device if generator is not None else device
        if self.time_sampling == "uniform":
            t = torch.rand(n, generator=generator, device=where)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=where))
        return t.to(device)

    @staticmethod
    def bucket(t: torch.Tensor, buckets: int) -> torch.Tensor:
        """Which of ``buckets`` equal parts of [0, 1] each time falls in (t = 1 in the last)."""
        return (t * buckets).long().clamp(max=buckets - 1)

    def interpolate(self, x0: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps (Liu et al. 2023, eq. 1)."""
        t = _per_image(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The conditional velocity d x_t / dt = eps - x_0, the regression target."""
        return noise - x0

    def velocity(self, model: Callable[..., torch.Tensor], x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """u_theta(x_t, t): the network called at time_scale * t (one t for the batch, or one per image)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        t = t.expand(len(x_t)) if t.ndim == 0 else t
        return model(x_t, self.time_scale * t).float()

    @staticmethod
    def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor | float, u: torch.Tensor) -> torch.Tensor:
        """x0_hat = x_t - t u."""
        return x_t - _per_image(t, x_t) * u

    @staticmethod
    def eps_from_velocity(x_t: torch.Tensor, t: torch.Tensor | float, u: torch.Tensor) -> torch.Tensor:
        """eps_hat = x_t + (1 - t) u."""
        return x_t + (1 - _per_image(t, x_t)) * u

    @staticmethod
    def velocity_from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float) -> torch.Tensor:
        """The flow velocity from a v-prediction at the VP state x = alpha x_0 + sigma eps (alpha^2 + sigma^2 = 1):
        u = eps_hat - x0_hat with x0_hat = alpha x - sigma v and eps_hat = sigma x + alpha v."""
        alpha, sigma = _per_image(alpha, x), _per_image(sigma, x)
        return (sigma - alpha) * x + (alpha + sigma) * v

    @staticmethod
    def v_from_velocity(x: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float) -> torch.Tensor:
        """The inverse of ``velocity_from_v``: v = (u - (sigma - alpha) x) / (alpha + sigma)."""
        alpha, sigma = _per_image(alpha, x), _per_image(sigma, x)
        return (u - (sigma - alpha) * x) / (alpha + sigma)

    @staticmethod
    def from_vp(x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(the flow's state, its time) for the VP state x = alpha x_0 + sigma eps: (x / (alpha + sigma), sigma / (alpha + sigma))."""
        t = sigma / (alpha + sigma)
        return x / _per_image(alpha + sigma, x), t

    def loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        y: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The conditional flow-matching loss || u_theta(x_t, t) - (eps - x_0) ||^2, averaged over pixels.

        Unless given, t comes from ``sample_t`` (global CPU generator) and eps ~ N(0, I) from x0's device.
        ``reduction="none"`` returns one loss per image ([B]); "mean" their average.
        """
        choice("reduction", reduction, ("mean", "none"))
        t = self.sample_t(len(x0), device=x0.device) if t is None else t.to(x0.device, torch.float32)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.interpolate(x0, t, noise)
        scaled = self.time_scale * t
        out = model(x_t, scaled) if y is None else model(x_t, scaled, y)
        if out.shape != x0.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, but the images have {tuple(x0.shape)}")
        per_image = F.mse_loss(out.float(), self.target(x0, noise).float(), reduction="none").flatten(1).mean(1)
        return per_image.mean() if reduction == "mean" else per_image


def process_from_config(config: dict[str, Any]) -> Diffusion | FlowMatching:
    """The process a checkpoint recorded: a flow (``"process": "flow"``) or a diffusion process."""
    return FlowMatching.from_config(config) if config.get("process") == "flow" else Diffusion.from_config(config)


def flow_times(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 down to 0, uniform, or warped by SD3's shift t -> s t / (1 + (s - 1) t)
    (Esser et al. 2024, sec. 5.3.2), which spends more of the steps at high noise when s > 1."""
    integer("steps", steps)
    number("shift", shift)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class FlowEuler:
    """Euler on dx/dt = u_theta(x, t) from t = 1 to 0: x <- x + (t_next - t) u. ``steps`` network calls."""

    steps: int = 50
    shift: float = 1.0
    process = "flow"  # what ``samplers.sample`` checks: a flow sampler takes a flow process, and only it
    name = "Euler"

    def __post_init__(self) -> None:
        integer("steps", self.steps)
        number("shift", self.shift)

    def num_steps(self, d: FlowMatching) -> int:
        return self.steps

    @property
    def nfe(self) -> int:
        return self.steps

    def run(self, model: Callable[..., torch.Tensor], d: FlowMatching, x: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        times = flow_times(self.steps, self.shift).tolist()
        for i, (t, t_next) in enumerate(zip(times, times[1:])):
            u = d.velocity(model, x, t)
            report({"i": i, "t": t, "sigma": _ve_sigma(t), "x_t": x, "x0": d.x0_from_velocity(x, t, u)})
            x = self.step(model, d, x, t, t_next, u)
        return x

    def step(self, model: Callable[..., torch.Tensor], d: FlowMatching, x: torch.Tensor, t: float, t_next: float, u: torch.Tensor) -> torch.Tensor:
        """x at t_next from x at t, given u = u_theta(x, t): the Euler step x + (t_next - t) u."""
        return x + (t_next - t) * u

    def __str__(self) -> str:
        nfe = f" ({self.nfe} NFE)" if self.nfe != self.steps else ""
        return f"flow {self.name}, {self.steps} steps{nfe}" + (f", shift {self.shift:g}" if self.shift != 1 else "")


@dataclass(frozen=True)
class FlowHeun(FlowEuler):
    """Heun (the trapezoid rule with an Euler predictor) on the flow ODE: 2 network calls a step, but
    the last step, to t = 0, is Euler's (as in Karras et al. 2022, algorithm 1, which makes no second
    evaluation at sigma = 0): 2 steps - 1 calls in all. At t = 0 the velocity asks for eps from a clean
    image, a time where a logit-normal model has almost never been trained."""

    name = "Heun"

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1

    def step(self, model: Callable[..., torch.Tensor], d: FlowMatching, x: torch.Tensor, t: float, t_next: float, u: torch.Tensor) -> torch.Tensor:
        """The Euler step as a predictor, then (unless t_next = 0) the average of the velocities at both ends."""
        guess = super().step(model, d, x, t, t_next, u)
        if t_next == 0:
            return guess
        return x + (t_next - t) * (u + d.velocity(model, guess, t_next)) / 2


FLOW_SAMPLERS = {"flow-euler": FlowEuler, "flow-heun": FlowHeun}


def _ve_sigma(t: float) -> float:
    """The VE noise level of flow time t: x_t / (1 - t) = x_0 + t / (1 - t) eps."""
    return t / (1 - t) if t < 1 else float("inf")


@torch.no_grad()
def reflow_pairs(
    model: Callable[..., torch.Tensor], d: FlowMatching, noise: torch.Tensor, sampler: FlowEuler, batch_size: int = 250, clamp: bool = True,
    progress: bool = True,
) -> TensorDataset:
    """The coupling of reflow (Liu et al. 2023, sec. 2.3): each eps of ``noise`` [N, ...] with the
    x0_hat that ``sampler`` draws from it (``samplers.sample``; ``clamp``: to pixels), as a dataset of
    (x0_hat, eps) items for a ``FlowMatching(coupling="reflow")`` run. The sampler is deterministic, so
    the pairs are a function of eps; the results come back on the CPU."""
    integer("batch_size", batch_size)
    batches = noise.split(batch_size)
    ends = [sample(model, d, eps, sampler, progress=False, clamp=clamp) for eps in tqdm(batches, desc="reflow pairs", disable=not progress, leave=False)]
    return TensorDataset(torch.cat(ends).cpu(), noise.cpu())


def straightness(path: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """How far a discretised path is from the straight line between its ends (Liu et al. 2023, eq. 5):

        S = sum_i (t_i - t_{i+1}) || (x_{i+1} - x_i) / (t_{i+1} - t_i) - (x_end - x_start) / (t_end - t_start) ||^2,

    per path, the squared norm averaged over dimensions; 0 exactly when every step moves along the
    chord at constant speed. ``path`` is [steps + 1, B, ...] (the states at ``times``, [steps + 1])."""
    if len(path) != len(times) or len(times) < 2:
        raise ValueError(f"need one state per time, at least two; got {len(path)} states and {len(times)} times")
    dt = (times[1:] - times[:-1]).to(path.dtype).view(-1, *([1] * (path.ndim - 1)))
    speed = (path[1:] - path[:-1]) / dt
    chord = (path[-1] - path[0]) / float(times[-1] - times[0])
    return ((speed - chord) ** 2 * dt.abs()).flatten(2).mean(2).sum(0)
