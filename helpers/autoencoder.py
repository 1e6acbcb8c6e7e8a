"""A small KL-regularised convolutional autoencoder, the first stage of latent diffusion
(Rombach et al. 2022, section 3.1 and appendix G).

The encoder maps an image to a diagonal Gaussian q(z | x) = N(mu(x), diag sigma(x)^2) over a latent
of shape ``latent_channels x s x s`` (s = the image side padded up to a multiple of 8, over 4: an
even side, which the latent U-Net can halve; 28 -> 32 -> 8); the
decoder maps a latent back to pixels. Training (``helpers.autoencoder_training``) minimises, per image,

    L = ||x - D(z)||_1 + beta KL(q(z | x) || N(0, I)),   z = mu + sigma * eps  (reparameterised),
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2),

with a small beta (Rombach et al. use 1e-6 beside perceptual and adversarial terms; here the
reconstruction term is plain L1). The KL only keeps the latent near the origin; its scale is set
afterwards by ``scale_factor`` = 1 / std(z) measured on data (Stable Diffusion's 0.18215 is that
number for its autoencoder), so that scaled latents have unit variance as the noise schedule expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from helpers.device import fingerprint, randn

__all__ = ["DiagonalGaussian", "Autoencoder"]

DOWNSAMPLES = 2  # the latent side is the (padded) image side / 4


class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)), per image; log-variances clamped to [-30, 20] as in
    Rombach et al.'s code, so that exp never overflows."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)
        self.std = (0.5 * self.logvar).exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps with eps ~ N(0, I) (the reparameterisation trick: z is differentiable
        in mean and logvar); eps from ``generator`` on the CPU if given."""
        eps = randn(self.mean.shape, generator, self.mean.device).to(self.mean.dtype) if generator is not None else torch.randn_like(self.mean)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image [B], in closed form: 1/2 sum (mean^2 + var - 1 - logvar)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class _Block(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the input (a 1x1 conv when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """Encoder: pad to a multiple of 8, conv, [block, stride-2 conv] x 2, block, -> 2 x latent_channels
    (mean and log-variance). Decoder: the mirror image with nearest-neighbour upsampling, cropped
    back to ``image_size``. ``scale_factor`` (a buffer, saved with the weights) is 1 until measured."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, ch: int = 32, latent_channels: int = 4, norm_groups: int = 8) -> None:
        super().__init__()
        if ch % norm_groups:
            raise ValueError(f"norm_groups={norm_groups} does not divide the width {ch}")
        self.config = dict(image_size=image_size, in_channels=in_channels, ch=ch, latent_channels=latent_channels, norm_groups=norm_groups)
        self.image_size, self.in_channels, self.latent_channels = image_size, in_channels, latent_channels
        self.padded = math.ceil(image_size / 2 ** (DOWNSAMPLES + 1)) * 2 ** (DOWNSAMPLES + 1)  # an even latent side
        self.latent_size = self.padded // 2**DOWNSAMPLES
        wide = 2 * ch
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, ch, 3, padding=1),
            _Block(ch, ch, norm_groups), nn.Conv2d(ch, ch, 3, stride=2, padding=1),
            _Block(ch, wide, norm_groups), nn.Conv2d(wide, wide, 3, stride=2, padding=1),
            _Block(wide, wide, norm_groups), nn.GroupNorm(norm_groups, wide), nn.SiLU(),
            nn.Conv2d(wide, 2 * latent_channels, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, wide, 3, padding=1),
            _Block(wide, wide, norm_groups), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(wide, wide, 3, padding=1),
            _Block(wide, ch, norm_groups), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1),
            _Block(ch, ch, norm_groups), nn.GroupNorm(norm_groups, ch), nn.SiLU(),
            nn.Conv2d(ch, in_channels, 3, padding=1),
        )  # fmt: skip
        self.register_buffer("scale_factor", torch.ones(()))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for images x in [-1, 1] [B, C, H, W]; unscaled latents [B, latent_channels, s, s]."""
        pad = self.padded - self.image_size
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0) if pad else x  # pad with black
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (not clamped) from unscaled latents."""
        x = self.decoder(z)
        lo = (self.padded - self.image_size) // 2
        return x[..., lo : lo + self.image_size, lo : lo + self.image_size]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(reconstruction from a sampled latent, the posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    @torch.no_grad()
    def measure_scale(self, x: torch.Tensor, batch_size: int = 500) -> float:
        """Set ``scale_factor`` = 1 / std of the posterior means of the images ``x`` (all elements
        together), the latents a latent model trains on (``helpers.latent``); returns it. Stable
        Diffusion measured its 0.18215 on sampled latents; with a small KL weight the posterior is
        narrow and the two agree."""
        zs = [self.encode(xb.to(self.scale_factor.device)).mean for xb in x.split(batch_size)]
        std = float(torch.cat(zs).float().std())
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"the latents have std {std}: the autoencoder is untrained or broken")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std

    def fingerprint(self) -> str:
        """A short hash of the weights and the scale factor: a latent model records the autoencoder it was trained on by it."""
        return fingerprint(self)

