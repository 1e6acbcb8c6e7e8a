"""A 2-D Gaussian mixture whose noisy marginals, score and denoiser are known in closed form.

Data x_0 ~ sum_k w_k N(mu_k, s_k^2 I) noised as x = x_0 + sigma eps (the variance-exploding view of
notebook 09) has the marginal p_sigma(x) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I). With the
responsibilities r_k(x) = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / p_sigma(x):

    score:    grad log p_sigma(x) = sum_k r_k(x) (mu_k - x) / (s_k^2 + sigma^2)
    denoiser: E[x_0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))

and the two satisfy Tweedie's formula E[x_0 | x] = x + sigma^2 grad log p_sigma(x). The straight
interpolant x_t = (1 - t) x_0 + t eps of flow matching has its marginal velocity in closed form
too (``velocity``). The denoiser has
the shape the solvers of ``helpers.solvers`` call, ``denoiser(x, sigma) -> x0_hat``, so every
solver runs on this toy exactly as on a trained network.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Isotropic Gaussian components with means ``means`` [K, D], standard deviations ``stds`` [K]
    and weights ``weights`` [K] (normalised here); float64 throughout."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        k = len(self.means)
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2 or self.stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"need means [K, D], stds [K] and weights [K]; got {tuple(self.means.shape)}, {tuple(self.stds.shape)}, {tuple(weights.shape)}")
        if not (self.stds > 0).all() or not (weights > 0).all():
            raise ValueError("component standard deviations and weights must be positive")
        self.weights = weights / weights.sum()

    @classmethod
    def ring(cls, k: int = 6, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
        """``k`` equal components evenly spaced on a circle: the toy of notebooks 09 and 11."""
        angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        return cls(radius * torch.stack([angles.cos(), angles.sin()], dim=1), torch.full((k,), std, dtype=torch.float64))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x_0 [n, D]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise

    def _log_components(self, x: torch.Tensor, sigma: float, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(log w_k N(x; scale mu_k, (scale^2 s_k^2 + sigma^2) I) [N, K], those component variances [K]):
        the law of scale x_0 + sigma eps (scale = 1: the VE view; scale = 1 - t, sigma = t: the flow's)."""
        var = scale**2 * self.stds**2 + sigma**2
        sq = ((x.to(torch.float64)[:, None, :] - scale * self.means[None]) ** 2).sum(-1)  # [N, K]
        dim = self.means.shape[1]
        return self.weights.log() - 0.5 * sq / var - 0.5 * dim * (2 * math.pi * var).log(), var

    def _responsibilities(self, x: torch.Tensor, sigma: float, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(r [N, K], the noisy component variances [K]) at noise level sigma."""
        log_joint, var = self._log_components(x, sigma, scale)
        return log_joint.softmax(dim=1), var

    def log_prob(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log p_sigma(x) [N] of the noisy marginal."""
        return torch.logsumexp(self._log_components(x, sigma)[0], dim=1)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """grad_x log p_sigma(x) [N, D]."""
        x = x.to(torch.float64)
        r, var = self._responsibilities(x, sigma)
        return (r[:, :, None] * (self.means[None] - x[:, None, :]) / var[None, :, None]).sum(1)

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The marginal velocity u(x, t) = E[eps - x_0 | x_t = x] [N, D] of the straight interpolant
        x_t = (1 - t) x_0 + t eps (``helpers.flow``), for t in [0, 1]. Given component k, x_t is
        Gaussian with mean (1 - t) mu_k and variance v_k = (1 - t)^2 s_k^2 + t^2, and

            E[x_0 | x, k] = mu_k + (1 - t) s_k^2 / v_k (x - (1 - t) mu_k),   E[eps | x, k] = t / v_k (x - (1 - t) mu_k);

        u mixes their difference with the responsibilities of x under the scaled components."""
        x = x.to(torch.float64)
        r, var = self._responsibilities(x, t, scale=1 - t)
        r = r[:, :, None]
        centred = x[:, None, :] - (1 - t) * self.means[None]  # [N, K, D]
        x0 = self.means[None] + ((1 - t) * self.stds**2 / var)[None, :, None] * centred
        eps = (t / var)[None, :, None] * centred
        return (r * (eps - x0)).sum(1)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The exact denoiser E[x_0 | x_0 + sigma eps = x] [N, D], as the mixture of the components' posterior means."""
        x = x.to(torch.float64)
        r, var = self._responsibilities(x, sigma)
        shrink = (self.stds**2 / var)[None, :, None]
        posterior_means = self.means[None] + shrink * (x[:, None, :] - self.means[None])
        return (r[:, :, None] * posterior_means).sum(1)
