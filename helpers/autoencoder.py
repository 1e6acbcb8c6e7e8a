"""A small KL-regularised convolutional autoencoder, the first stage of latent diffusion
(Rombach et al. 2022, section 3.1 and appendix G).

The encoder maps an image to a diagonal Gaussian q(z | x) = N(mu(x), diag sigma(x)^2) over a latent
of shape ``latent_channels x s x s`` (s = the image side padded up to a multiple of 8, over 4: an
even side, which the latent U-Net can halve; 28 -> 32 -> 8); the
decoder maps a latent back to pixels. Training minimises, per image,

    L = ||x - D(z)||_1 + beta KL(q(z | x) || N(0, I)),   z = mu + sigma * eps  (reparameterised),
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2),

with a small beta (Rombach et al. use 1e-6 beside perceptual and adversarial terms; here the
reconstruction term is plain L1). The KL only keeps the latent near the origin; its scale is set
afterwards by ``scale_factor`` = 1 / std(z) measured on data (Stable Diffusion's 0.18215 is that
number for its autoencoder), so that scaled latents have unit variance as the noise schedule expects.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, atomic_torch_save, non_finite, safe_load

__all__ = ["FORMAT", "DiagonalGaussian", "Autoencoder", "train_autoencoder", "save_autoencoder", "load_autoencoder"]

FORMAT = "diffusion-course-autoencoder/1"
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
        eps = torch.randn(self.mean.shape, generator=generator).to(self.mean) if generator is not None else torch.randn_like(self.mean)
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
        h = hashlib.sha256()
        for name, value in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def train_autoencoder(
    ae: Autoencoder,
    dataset: Dataset,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log_every: int = 50,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Minimise L1 reconstruction + ``kl_weight`` KL (per image, summed over pixels and latents)
    with Adam; returns the log (step, L1 per pixel, KL per image, seconds)."""
    from helpers.data import make_loader

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    ae.to(device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batches = iter(make_loader(dataset, batch_size, seed=seed))
    history: list[dict[str, float]] = []
    rec_sum = kl_sum = 0.0
    t0 = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="autoencoder", disable=not progress):
        x = next(batches)[0].to(device)
        recon, posterior = ae(x, gen)
        rec = (recon - x).abs().flatten(1).sum(1)
        kl = posterior.kl()
        loss = (rec + kl_weight * kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec_sum, kl_sum = rec_sum + float(rec.mean().detach()) / x[0].numel(), kl_sum + float(kl.mean().detach())
        if not math.isfinite(rec_sum):
            raise FloatingPointError(f"the reconstruction loss became non-finite at step {step}; lower the learning rate (now {lr:g})")
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            history.append({"step": step, "l1": rec_sum / n, "kl": kl_sum / n, "seconds": time.perf_counter() - t0})
            rec_sum = kl_sum = 0.0
    ae.eval()
    return history


def save_autoencoder(path: str | Path, ae: Autoencoder, history: list[dict[str, float]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the autoencoder (weights with its scale factor, config, fingerprint, log) atomically."""
    broken = non_finite(ae.state_dict().items())
    if broken:
        raise FloatingPointError(f"the autoencoder's weights are not finite ({broken[0]}), so {path} was not written")
    return atomic_torch_save({"format": FORMAT, "config": dict(ae.config), "weights": ae.state_dict(), "fingerprint": ae.fingerprint(),
                              "history": history or [], "extra": extra or {}}, path)  # fmt: skip


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> Autoencoder:
    """Rebuild an autoencoder saved by ``save_autoencoder``; a missing, foreign or damaged file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no autoencoder checkpoint at {path}")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an autoencoder checkpoint of this course (no format {FORMAT!r})")
    try:
        ae = Autoencoder(**ckpt["config"])
        ae.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is a damaged autoencoder checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from err
    if ae.fingerprint() != ckpt["fingerprint"]:
        raise CheckpointError(f"{path}: its weights do not match its recorded fingerprint (a damaged or edited file)")
    return ae.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.autoencoder``: train the profile's autoencoder, measure its scale factor, save it."""
    import argparse
    import sys

    from helpers.config import PROFILES, get_profile
    from helpers.data import DatasetUnavailableError, profile_dataset
    from helpers.device import describe, pick_device, seed_everything

    p = argparse.ArgumentParser(prog="python -m helpers.autoencoder", description="Train notebook 10's autoencoder under a profile (then: python -m helpers.train --autoencoder OUT).")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="data and settings (default: $DIFFUSION_PROFILE, else full on CUDA and laptop elsewhere)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint file (default: artifacts/<profile>/checkpoints/10_autoencoder.pt)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the profile's)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        profile = get_profile(args.profile, device)
        out = args.out or profile.checkpoint("autoencoder")
        if out.is_file():
            raise ValueError(f"{out} exists; pass --out to write elsewhere")
        seed_everything(profile.seed)
        settings = {**profile.autoencoder["train"], **({"steps": args.steps} if args.steps is not None else {})}
        ae = Autoencoder(image_size=profile.image_size, in_channels=profile.channels, **profile.autoencoder["model"])
        data = profile_dataset(profile)
        print(f"training a {sum(p.numel() for p in ae.parameters()):,}-parameter autoencoder on {describe(device)}: latents {ae.latent_shape}")
        history = train_autoencoder(ae, data, device=device, seed=profile.seed, progress=not args.no_progress, **settings)
        scale = ae.measure_scale(data.tensors()[0][:2000])
        save_autoencoder(out, ae, history)
    except (ValueError, DatasetUnavailableError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"saved {out}: L1 per pixel {history[-1]['l1']:.4f}, scale factor {scale:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
