"""The library people would use instead, at its own defaults: lucidrains' denoising-diffusion-pytorch.

``python -m helpers bench quality`` trains it beside the course's recipe for the same minutes.
It is a dev-only tool, never a runtime dependency of the course:

    pip install denoising-diffusion-pytorch ema-pytorch

Everything here follows that library's defaults (version 2.x): ``Unet(dim, channels)`` with
``dim_mults=(1, 2, 4, 8)``; ``GaussianDiffusion`` with v-prediction, the sigmoid schedule and
T = 1000, sampling with DDIM (eta = 0) when ``sampling_timesteps`` < T; and its ``Trainer``'s
optimisation: batch 16, Adam(lr 1e-4, betas (0.9, 0.99)), gradient norm clipped at 1, random
horizontal flips, and ``ema_pytorch.EMA`` with decay 0.995 updated every 10 steps. Its U-Net
halves the image three times, so Fashion-MNIST goes in padded to 32x32 and its samples are
cropped back to the central 28x28 for scoring.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LucidrainsRun", "lucidrains_params", "matched_dim", "require_lucidrains"]

INSTALL = "pip install denoising-diffusion-pytorch ema-pytorch"


def require_lucidrains() -> tuple[Any, Any]:
    """The ``denoising_diffusion_pytorch`` and ``ema_pytorch`` modules, or an error saying how to install them."""
    try:
        import denoising_diffusion_pytorch
        import ema_pytorch
    except ImportError as err:
        raise RuntimeError(f"the side-by-side benchmark needs lucidrains' library (dev-only): {INSTALL}") from err
    return denoising_diffusion_pytorch, ema_pytorch


def lucidrains_params(dim: int, channels: int = 1) -> int:
    """Parameters of ``Unet(dim=dim, channels=channels)`` at the library's defaults."""
    ddp, _ = require_lucidrains()
    return sum(p.numel() for p in ddp.Unet(dim=dim, channels=channels).parameters())


def matched_dim(params: int, channels: int = 1, dims: range = range(4, 129, 4)) -> int:
    """The ``dim`` among ``dims`` whose default U-Net's parameter count is closest to ``params``."""
    return min(dims, key=lambda d: abs(lucidrains_params(d, channels) - params))


class LucidrainsRun:
    """One training run of the library at its defaults: ``step(x)`` on a batch in [-1, 1],
    ``sample(n)`` from its EMA model with its own DDIM sampler.

    Args:
        dim: base width of its U-Net.
        channels: image channels.
        image_size: side the U-Net sees (a multiple of 8); smaller images are zero-padded to it.
        sampling_steps: DDIM steps (network evaluations) per sample.
        device: where to train and sample.
        seed: initial weights and the noise of training and sampling.
    """

    batch_size = 16  # Trainer(train_batch_size=16)

    def __init__(self, dim: int, channels: int, image_size: int, sampling_steps: int, device: torch.device, seed: int = 0) -> None:
        ddp, ema_pytorch = require_lucidrains()
        if image_size % 8:
            raise ValueError(f"lucidrains' default U-Net halves the image three times; {image_size} is not a multiple of 8")
        torch.manual_seed(seed)
        self.device, self.image_size = device, image_size
        unet = ddp.Unet(dim=dim, channels=channels)
        self.diffusion = ddp.GaussianDiffusion(unet, image_size=image_size, timesteps=1000, sampling_timesteps=sampling_steps).to(device)
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = ema_pytorch.EMA(self.diffusion, beta=0.995, update_every=10).to(device)
        self.params = sum(p.numel() for p in unet.parameters())
        self.gen = torch.Generator().manual_seed(seed)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.image_size - x.shape[-1]) // 2
        return torch.nn.functional.pad(x, [p, p, p, p], value=-1.0)  # -1 is black, as the padding of our data

    def step(self, x: torch.Tensor) -> float:
        """One optimiser step on images in [-1, 1] (the library normalises [0, 1] input itself)."""
        mirror = torch.rand(len(x), generator=self.gen) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        self.diffusion.train()
        loss = self.diffusion((self._pad(x).to(self.device) + 1) / 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.ema.update()
        return float(loss.detach())

    @torch.no_grad()
    def sample(self, n: int, side: int, batch_size: int = 250) -> torch.Tensor:
        """``n`` images in [-1, 1] on the CPU from the EMA model, cropped to ``side`` x ``side``."""
        ddp, _ = require_lucidrains()
        model = self.ema.ema_model.eval()
        crop = (self.image_size - side) // 2
        out = []
        library = ddp.denoising_diffusion_pytorch
        bar, library.tqdm = library.tqdm, lambda iterable, **kwargs: iterable  # its per-batch bars, silenced
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1234)
                for start in range(0, n, batch_size):
                    x = model.sample(batch_size=min(batch_size, n - start)) * 2 - 1
                    out.append(x[..., crop : crop + side, crop : crop + side].cpu())
        finally:
            library.tqdm = bar
        return torch.cat(out)
