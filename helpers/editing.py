"""Editing an image with a diffusion model's sampler (notebook 13): SDEdit and inpainting, as samplers
of the course's one protocol (``helpers.samplers.Sampler``), so that ``sample`` runs them with any
model, guided by a caption or not.

* ``SDEdit`` (Meng et al. 2022): noise the image to t_0 = round(strength * T) - 1 by the forward
  process, x_{t_0} = sqrt(ab_{t_0}) x_0 + sqrt(1 - ab_{t_0}) eps, then run DDIM from t_0 down. The
  strength trades faithfulness to the image (small) against obedience to the new caption (large);
  strength 1 starts from almost pure noise and forgets the image.
* ``Inpaint``: DDIM from pure noise, but after every step the region to keep (mask 0) is replaced by
  the image noised to the step's level, x_{t'} = sqrt(ab_{t'}) x_0 + sqrt(1 - ab_{t'}) z with fresh z,
  so that only the masked region (mask 1) is generated and it is generated to fit what surrounds
  it (the replacement step of Lugmayr et al. 2022, RePaint, without its resampling jumps).

The noise ``sample`` draws for x_T is SDEdit's eps. Both steps are ``ddim_step`` at eta = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from helpers.diffusion import Diffusion
from helpers.samplers import Chain, Report, ddim_step, ddim_timesteps
from helpers.validate import integer

__all__ = ["SDEdit", "Inpaint"]


@dataclass(frozen=True, eq=False)
class SDEdit(Chain):
    """SDEdit of ``images`` [B, C, H, W] (in the model's space: pixels, or a latent model's latents) at
    ``strength`` in (0, 1], with ``round(strength * steps)`` DDIM steps (at least one) from t_0 down."""

    images: torch.Tensor
    strength: float
    steps: int = 50
    clip_x0: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must lie in (0, 1] (the fraction of the chain to run), got {self.strength}")
        integer("steps", self.steps)

    def start(self, T: int) -> int:
        """t_0, the timestep the image is noised to."""
        return max(0, round(self.strength * T) - 1)

    def timesteps(self, T: int) -> list[int]:
        t0 = self.start(T)
        return ddim_timesteps(t0 + 1, min(t0 + 1, max(1, round(self.strength * self.steps))))

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return False

    def step(self, d: Diffusion, out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step(d, out, x_t, t, t_prev, clip_x0=self.clip_x0)

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        if x.shape != self.images.shape:
            raise ValueError(f"noise of shape {tuple(x.shape)} for images of shape {tuple(self.images.shape)}")
        t0 = torch.full((len(x),), self.start(d.T), device=x.device, dtype=torch.long)
        return super().run(model, d, d.q_sample(self.images.to(x.device), t0, x), generator, report)

    def __str__(self) -> str:
        taken = max(1, round(self.strength * self.steps))
        return f"SDEdit (strength {self.strength:g}: {taken} steps of DDIM-{self.steps}{'' if self.clip_x0 else ', unclipped'})"


@dataclass(frozen=True, eq=False)
class Inpaint(Chain):
    """Regenerate where ``mask`` is 1 (a tensor of 0s and 1s that broadcasts to ``images``), keep
    ``images`` where it is 0, with DDIM over ``steps`` timesteps."""

    images: torch.Tensor
    mask: torch.Tensor
    steps: int = 50
    clip_x0: bool = True

    def __post_init__(self) -> None:
        integer("steps", self.steps)
        if not ((self.mask == 0) | (self.mask == 1)).all():
            raise ValueError("the mask holds 1 where to generate and 0 where to keep the image, nothing else")
        try:
            torch.broadcast_shapes(self.mask.shape, self.images.shape)
        except RuntimeError:
            raise ValueError(f"a mask of shape {tuple(self.mask.shape)} does not fit images of shape {tuple(self.images.shape)}") from None

    def timesteps(self, T: int) -> list[int]:
        return ddim_timesteps(T, min(T, self.steps))

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return t_prev >= 0

    def step(self, d: Diffusion, out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x_prev, x0 = ddim_step(d, out, x_t, t, t_prev, clip_x0=self.clip_x0)
        known = self.images.to(x_t.device, x_t.dtype)
        if t_prev >= 0:
            known = d.q_sample(known, torch.full((len(known),), t_prev, device=x_t.device, dtype=torch.long), noise)
        mask = self.mask.to(x_t.device, x_t.dtype)
        return mask * x_prev + (1 - mask) * known, x0

    def run(self, model: Callable[..., torch.Tensor], d: Diffusion, x: torch.Tensor, generator: torch.Generator | None, report: Report) -> torch.Tensor:
        if x.shape != self.images.shape:
            raise ValueError(f"noise of shape {tuple(x.shape)} for images of shape {tuple(self.images.shape)}")
        return super().run(model, d, x, generator, report)

    def __str__(self) -> str:
        return f"inpainting (DDIM-{self.steps}{'' if self.clip_x0 else ', unclipped'})"
