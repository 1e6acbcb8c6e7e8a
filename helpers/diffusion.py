"""The Gaussian diffusion process: forward noising, the posterior, and the three parameterisations.

Conventions follow DDPM (Ho et al. 2020): integer timesteps t = 0..T-1,
alpha_bar_t = prod_{i<=t} (1 - beta_i) and

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)        (DDPM eq. 4)

All tables are float64 on the CPU; every use gathers the entries of a batch's timesteps and hands
them to the data's device as the data's dtype (float32), because MPS has no float64.

Timesteps ``t`` are a LongTensor [B] (one per image, as in training) or a Python int (one for the
whole batch, as in the samplers).

The network's output ``out`` means, by ``prediction``:
    "eps": the noise eps;   "x0": the clean image x_0;
    "v":   v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0   (Salimans & Ho 2022, sec. 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from helpers.schedules import make_betas

__all__ = ["Diffusion", "PREDICTIONS", "LOSS_WEIGHTINGS"]

PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("none", "snr", "min_snr")


class Diffusion:
    """Schedule tables plus the math of the forward process, the posterior and the loss.

    Args:
        betas: float tensor [T] of variances beta_t in (0, 1).
        prediction: what the network outputs: "eps", "x0" or "v".
        loss_weighting: "none" (plain MSE on the target), "snr" (weight making every target's loss
            equal SNR(t) ||x0_hat - x0||^2, Ho et al.'s eps loss written for any target, so for the
            eps objective it is "none") or "min_snr" (weight making it min(SNR(t), gamma)
            ||x0_hat - x0||^2, Hang et al. 2023).
        min_snr_gamma: gamma of "min_snr".
        schedule: name of the schedule the betas came from (kept for checkpoints; informative).
    """

    def __init__(
        self,
        betas: torch.Tensor,
        prediction: str = "eps",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        schedule: str | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D table of at least 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_t must lie strictly between 0 and 1")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose {', '.join(PREDICTIONS)}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; choose {', '.join(LOSS_WEIGHTINGS)}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.schedule = schedule

        self.T = len(betas)
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        # alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (no noise before the first step)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1 - self.alpha_bars).sqrt()
        self.sqrt_alphas, self.sqrt_betas = self.alphas.sqrt(), betas.sqrt()
        self.snr = self.alpha_bars / (1 - self.alpha_bars)  # SNR(t) = alpha_bar / (1 - alpha_bar)
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I)       (DDPM eq. 6, 7)
        self.posterior_variance = betas * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars)
        self.posterior_mean_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1 - self.alpha_bars)
        self.posterior_mean_coef_xt = (1 - self.alpha_bars_prev) * self.alphas.sqrt() / (1 - self.alpha_bars)
        # the same process in noise-level (VE) units (Karras et al. 2022): x_t / sqrt(ab_t) = x_0 + sigma_t eps
        self.sigmas = ((1 - self.alpha_bars) / self.alpha_bars).sqrt()  # increasing in t
        self.log_sigmas = self.sigmas.log()
        self._device_tables: dict[tuple[int, torch.device], torch.Tensor] = {}

    @classmethod
    def from_schedule(cls, name: str, T: int = 1000, **kwargs: Any) -> Diffusion:
        """``Diffusion(make_betas(name, T), ..., schedule=name)``."""
        return cls(make_betas(name, T), schedule=name, **kwargs)

    def config(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this process (see ``from_config``)."""
        return {
            "schedule": self.schedule,
            "T": self.T,
            "prediction": self.prediction,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Diffusion:
        """Rebuild the process saved by ``config()``."""
        if config.get("schedule") is None:
            raise ValueError("this diffusion config names no schedule, so its betas cannot be rebuilt")
        return cls.from_schedule(
            config["schedule"],
            config["T"],
            prediction=config["prediction"],
            loss_weighting=config.get("loss_weighting", "none"),
            min_snr_gamma=config.get("min_snr_gamma", 5.0),
        )

    def __repr__(self) -> str:
        return (
            f"Diffusion(schedule={self.schedule!r}, T={self.T}, prediction={self.prediction!r}, "
            f"loss_weighting={self.loss_weighting!r})"
        )

    # ---- gathering table entries for a batch ---------------------------------------------------

    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a LongTensor of timesteps, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold integer timesteps, got dtype {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
            raise ValueError(f"t must have shape [{batch}] (one timestep per image), got {tuple(t.shape)}")
        # The range is checked where it is free: reading a device tensor's values would make the
        # host wait for the device on every call (timesteps drawn on a GPU are valid by construction).
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"timesteps must lie in 0..{self.T - 1}, got values {int(t.min())}..{int(t.max())}")
        return t

    def _table_on(self, table: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``table`` itself (float64) on the CPU; elsewhere a float32 copy made once per device
        (converted on the CPU, then moved: MPS has no float64)."""
        if device.type == "cpu":
            return table
        key = (table.data_ptr(), device)
        if key not in self._device_tables:
            self._device_tables[key] = table.to(torch.float32).to(device)
        return self._device_tables[key]

    def _gather(self, table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``table[t]`` on t's device (``_table_on``)."""
        return self._table_on(table, t.device)[t]

    def timestep_of_sigma(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """The fractional timestep t whose sigma_t = sqrt((1 - ab_t) / ab_t) is ``sigma``, linear in
        log sigma between table entries (sigma clamped to sigma_0..sigma_{T-1}).

        A float gives a float. A tensor gives a tensor of its shape on its device, computed there
        (float64 on the CPU, float32 elsewhere), so a GPU caller never waits for the device.
        """
        device = sigma.device if isinstance(sigma, torch.Tensor) else torch.device("cpu")
        table = self._table_on(self.log_sigmas, device)
        lo_sigma, hi_sigma = float(self.sigmas[0]), float(self.sigmas[-1])
        log_sigma = torch.as_tensor(sigma, dtype=table.dtype, device=device).clamp(lo_sigma, hi_sigma).log()
        i = torch.searchsorted(table, log_sigma).clamp(1, self.T - 1)
        lo, hi = table[i - 1], table[i]
        t = i - 1 + (log_sigma - lo) / (hi - lo)
        return float(t) if isinstance(sigma, (float, int)) else t

    def extract(self, table: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor | float:
        """``table[t]`` as x's dtype on x's device, shaped [B, 1, 1, ...] to broadcast against x.

        Timesteps on the CPU gather from the float64 table there and move only the converted
        result; timesteps on x's device gather from a float32 copy already there (no transfer,
        no waiting). A Python int ``t`` (one timestep for the whole batch, as in the samplers)
        gives a Python float: no tensor is made or moved at all.
        """
        if isinstance(t, int):
            if not 0 <= t < self.T:
                raise ValueError(f"timesteps must lie in 0..{self.T - 1}, got {t}")
            return float(table[t])
        t = self._check_t(t, x.shape[0])
        values = self._gather(table, t).to(dtype=x.dtype).to(x.device)
        return values.reshape(-1, *([1] * (x.ndim - 1)))

    @staticmethod
    def _check_same_shape(**tensors: torch.Tensor) -> None:
        shapes = {name: tuple(v.shape) for name, v in tensors.items()}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise ValueError(f"shapes must match: {detail}")

    # ---- forward process and posterior ---------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a sample of q(x_t | x_0) (DDPM eq. 4)."""
        self._check_same_shape(x0=x0, noise=noise)
        return self.extract(self.sqrt_alpha_bars, t, x0) * x0 + self.extract(self.sqrt_one_minus_alpha_bars, t, x0) * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step of the chain, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (DDPM eq. 2)."""
        self._check_same_shape(x_prev=x_prev, noise=noise)
        return self.extract(self.sqrt_alphas, t, x_prev) * x_prev + self.extract(self.sqrt_betas, t, x_prev) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor | int, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7).

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
             + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
        variance = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,  shaped [B, 1, ...]
        (a float for an int t).
        """
        self._check_same_shape(x0=x0, x_t=x_t)
        mean = self.extract(self.posterior_mean_coef_x0, t, x_t) * x0 + self.extract(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, self.extract(self.posterior_variance, t, x_t)

    # ---- the three parameterisations -----------------------------------------------------------

    def predict_x0(self, x_t: torch.Tensor | int, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the network output ``out`` under ``self.prediction``.

        eps: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)   (DDPM eq. 15)
        x0:  x_0 = out
        v:   x_0 = sqrt(ab) x_t - sqrt(1 - ab) v          (Salimans & Ho 2022, sec. 4)
        """
        self._check_same_shape(x_t=x_t, out=out)
        if self.prediction == "x0":
            return out
        a, s = self.extract(self.sqrt_alpha_bars, t, x_t), self.extract(self.sqrt_one_minus_alpha_bars, t, x_t)
        if self.prediction == "eps":
            return (x_t - s * out) / a
        return a * x_t - s * out

    def predict_eps(self, x_t: torch.Tensor | int, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """eps implied by the network output ``out`` under ``self.prediction``.

        eps: eps = out
        x0:  eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)
        v:   eps = sqrt(1 - ab) x_t + sqrt(ab) v
        """
        self._check_same_shape(x_t=x_t, out=out)
        if self.prediction == "eps":
            return out
        a, s = self.extract(self.sqrt_alpha_bars, t, x_t), self.extract(self.sqrt_one_minus_alpha_bars, t, x_t)
        if self.prediction == "x0":
            return (x_t - a * out) / s
        return s * x_t + a * out

    def eps_from_x0(self, x_t: torch.Tensor | int, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab): the noise that takes x_0 to x_t."""
        self._check_same_shape(x_t=x_t, x0=x0)
        a, s = self.extract(self.sqrt_alpha_bars, t, x_t), self.extract(self.sqrt_one_minus_alpha_bars, t, x_t)
        return (x_t - a * x0) / s

    def target(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output at (x_0, t, eps), the arguments of ``q_sample``:
        eps, x_0 or v = sqrt(ab) eps - sqrt(1-ab) x_0."""
        self._check_same_shape(x0=x0, noise=noise)
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a, s = self.extract(self.sqrt_alpha_bars, t, x0), self.extract(self.sqrt_one_minus_alpha_bars, t, x0)
        return a * noise - s * x0

    # ---- the training loss ---------------------------------------------------------------------

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """n timesteps t ~ Uniform{0..T-1} on ``device``, drawn from ``generator`` (on its own device;
        None: the global generator of ``device``)."""
        where = generator.device if generator is not None else device
        return torch.randint(0, self.T, (n,), generator=generator, device=where).to(device)

    def bucket(self, t: torch.Tensor, buckets: int) -> torch.Tensor:
        """Which of ``buckets`` equal ranges of 0..T-1 each timestep falls in."""
        return t * buckets // self.T

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight w(t) on the MSE of ``target`` (float32, on t's device, shape [B]).

        Every target's MSE is a multiple of the x_0 MSE: ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2,
        ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2. A weighting fixes the factor c(t) in
        c(t) ||x0_hat - x0||^2: "snr" takes c = SNR (the eps loss), "min_snr" takes
        c = min(SNR, gamma) (Hang et al. 2023, eq. 7). Dividing c by the target's own factor
        (SNR for eps, 1 for x0, SNR + 1 for v) gives w(t). "none" is w = 1.
        """
        t = self._check_t(t, len(t))
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        snr = self._gather(self.snr, t)
        c = snr if self.loss_weighting == "snr" else snr.clamp(max=self.min_snr_gamma)
        own = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.prediction]
        return (c / own).float()

    def loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        y: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The training loss  E_{t, eps} w(t) || model(x_t, t) - target ||^2  (DDPM eq. 14 when w = 1).

        Unless given, t ~ Uniform{0..T-1} and eps ~ N(0, I) are drawn from the global generator of
        x0's device. ``reduction="none"`` returns one loss per image (shape [B]), for the loss by
        timestep bucket; "mean" their average.
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        b = x0.shape[0]
        # t lives on x0's device from here on: the tables are gathered there, with no transfers
        t = torch.randint(0, self.T, (b,), device=x0.device) if t is None else self._check_t(t, b).to(x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t) if y is None else model(x_t, t, y)
        if out.shape != x0.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, but the images have {tuple(x0.shape)}")
        per_image = F.mse_loss(out.float(), self.target(x0, t, noise).float(), reduction="none").flatten(1).mean(1)
        if self.loss_weighting != "none":
            per_image = per_image * self.loss_weight(t)
        return per_image.mean() if reduction == "mean" else per_image
