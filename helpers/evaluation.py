"""Measuring a trained model: its samples' FID/KID/IS (``Evaluator``) and what notebooks 07 and 08
look at beside it (x_0 error by timestep, pixel diversity).

``Evaluator`` draws a fixed number of DDIM samples from a fixed seed, so that two models, or raw
and EMA weights, are scored on the same noise; ``helpers.metrics`` turns them into numbers. Under
torchrun (``helpers.distributed``) the processes share the sampling and feature extraction, and
the numbers are the ones one process gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from helpers.autoencoder import Autoencoder
from helpers.config import Profile
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.distributed import World
from helpers.flow import FlowEuler, FlowMatching
from helpers.latent import decode, unclipped
from helpers.metrics import Features, Floor, Quality, extract_both, fid_kid, inception_score, real_features, real_floor
from helpers.samplers import DDIM, Guided, Sampler, sample

__all__ = ["Evaluator", "pixel_diversity", "x0_error_by_timestep"]

MAX_BATCHES = 100_000  # batches per evaluation: batch k of seed s draws from the generator seeded s * MAX_BATCHES + k


class Evaluator:
    """FID/KID of a model's samples against cached real features: ``evaluator(model) -> dict``.

    Samples ``n`` images with DDIM (``steps`` on the ``spacing`` grid, noise level ``eta``) from a
    fixed seed, so that two models (or raw and EMA weights, or two samplers) start from the same noise. A
    class-conditional model gets labels 0, 1, 2, ... in turn and ``guidance_scale``.

    ``world`` (default: one process): the processes that call the evaluator together. Each samples
    a contiguous share of the batches, batch k from the same noise as one process gives it, and
    rank 0 scores the gathered features, so the row does not depend on the number of processes.
    """

    def __init__(
        self,
        diffusion: Diffusion | FlowMatching,
        features: Features,
        real: torch.Tensor,
        n: int,
        steps: int,
        batch_size: int,
        kid_subset_size: int,
        guidance_scale: float = 1.0,
        seed: int = 1234,
        spacing: str = "trailing",
        floor: Floor | None = None,
        eta: float = 0.0,
        world: World | None = None,
    ) -> None:
        self.d, self.features, self.real, self.floor, self.world = diffusion, features, real, floor, world or World()
        self.flow = isinstance(diffusion, FlowMatching)
        self.n, self.steps, self.batch_size, self.spacing, self.eta = n, steps if self.flow else min(steps, diffusion.T), batch_size, spacing, eta
        self.kid_subset_size, self.guidance_scale, self.seed = kid_subset_size, guidance_scale, seed

    @classmethod
    def for_profile(cls, profile: Profile, diffusion: Diffusion, features: Features, **overrides: Any) -> Evaluator:
        """The profile's evaluation settings (sample count, DDIM steps and eta, KID subset size), with the
        real-data floor at the same counts. A smaller ``n`` without a ``kid_subset_size`` of its own
        takes KID subsets of at most ``n``, so that it can be carried out under every profile."""
        s = profile.sample
        kw = dict(n=s.fid_samples, steps=s.ddim_steps, batch_size=s.batch_size, eta=s.ddim_eta)
        kw.update(overrides)
        kw.setdefault("kid_subset_size", min(s.kid_subset_size, kw["n"]))
        real = real_features(features, profile)
        if "floor" not in kw:
            kw["floor"] = real_floor(features, profile, real, kw["n"], kw["kid_subset_size"])
        return cls(diffusion, features, real, **kw)

    @property
    def sampler(self) -> DDIM | FlowEuler:
        """The sampler behind every score: DDIM with this evaluator's steps, eta and spacing (Euler with
        its steps for a flow model)."""
        return FlowEuler(self.steps) if self.flow else DDIM(self.steps, self.eta, self.spacing)

    def _batches(self) -> list[tuple[int, int]]:
        """(first index, size) of each sampling batch."""
        if self.n > MAX_BATCHES * self.batch_size:
            raise ValueError(f"{self.n} samples in batches of {self.batch_size} exceed {MAX_BATCHES} batches, each with its own noise stream; use larger batches")
        return [(start, min(self.batch_size, self.n - start)) for start in range(0, self.n, self.batch_size)]

    @torch.no_grad()
    def _draw(
        self, model: nn.Module, guidance_scale: float | None, sampler: Sampler | None, autoencoder: Autoencoder | None, own: range | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(samples on the CPU, their labels or None) of each batch in ``own`` (default: all). Batch k draws
        from its own generator, seeded ``seed * MAX_BATCHES + k``: it starts from the same x_T under every
        sampler (a stochastic one's extra draws stay within its batch) and in any share of the batches."""
        num_classes = getattr(model, "num_classes", None)
        shape = (model.in_channels, model.image_size, model.image_size)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        sampler = self.sampler if sampler is None else sampler
        if autoencoder is not None:
            sampler = unclipped(sampler)
        batches = self._batches()
        for k in range(len(batches)) if own is None else own:
            start, b = batches[k]
            y = (torch.arange(start, start + b) % num_classes) if num_classes is not None else None
            net = Guided(model, y, scale) if y is not None else model
            gen = cpu_generator(self.seed * MAX_BATCHES + k)
            x = sample(net, self.d, (b, *shape), sampler, gen, progress=False, clamp=autoencoder is None)
            yield (decode(autoencoder, x) if autoencoder is not None else x).cpu(), y

    @torch.no_grad()
    def images(
        self, model: nn.Module, guidance_scale: float | None = None, sampler: Sampler | None = None, autoencoder: Autoencoder | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(samples [n, C, H, W] on the CPU, their labels or None), drawn with ``sampler`` (default:
        this evaluator's DDIM) from the evaluator's seed: the same noise whatever the sampler. A
        latent model (``helpers.latent``) samples unclipped latents, decoded by ``autoencoder``."""
        xs, ys = zip(*self._draw(model, guidance_scale, sampler, autoencoder))
        return torch.cat(xs), (torch.cat(ys) if ys[0] is not None else None)

    @torch.no_grad()
    def sample_features(
        self, model: nn.Module, guidance_scale: float | None = None, sampler: Sampler | None = None, autoencoder: Autoencoder | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features [n, dim], class logits [n, classes]) of the samples ``images`` draws, on rank 0
        (None on the others): each of the ``world``'s processes samples its share of the batches and
        extracts their features, batch by batch, and rank 0 gathers them in batch order, so the
        result does not depend on the number of processes."""
        own = self.world.share(len(self._batches()))
        parts = [extract_both(self.features, x) for x, _ in self._draw(model, guidance_scale, sampler, autoencoder, own)]
        gathered = self.world.gather(parts)
        if gathered is None:
            return None
        feats, logits = zip(*(part for rank in gathered for part in rank))
        return torch.cat(feats), torch.cat(logits)

    def score(self, images: torch.Tensor) -> Quality:
        """FID/KID/IS of ``images`` (in [-1, 1]) against the real features, with the floor."""
        return self._quality(*extract_both(self.features, images))

    def _quality(self, feats: torch.Tensor, logits: torch.Tensor) -> Quality:
        q = fid_kid(self.real, feats, self.features.name, self.kid_subset_size)
        q.inception_score = inception_score(logits, min(10, len(feats)))[0]
        q.floor = self.floor
        return q

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        """The evaluation row (FID, KID, IS, what they were computed from, the floor), the same on every
        process of the ``world``: they sample their shares and rank 0 scores the gathered features."""
        gathered = self.sample_features(model)
        row = None
        if gathered is not None:
            q = self._quality(*gathered)
            row = {"fid": q.fid, "kid": q.kid, "is": q.inception_score, "features": q.features, "n_fake": q.n_fake,
                   "n_real": q.n_real, "kid_subset_size": q.kid_subset_size}  # fmt: skip
            if q.floor is not None:
                row.update(fid_floor=q.floor.fid, fid_floor_std=q.floor.fid_std, kid_floor=q.floor.kid, is_floor=q.floor.inception_score)
        return self.world.broadcast(row)


def pixel_diversity(x: torch.Tensor) -> float:
    """Mean over pixels of the variance across the batch: 0 when every image is the same."""
    if len(x) < 2:
        raise ValueError("diversity needs at least 2 images")
    return float(x.float().var(dim=0).mean())


@torch.no_grad()
def x0_error_by_timestep(
    model: nn.Module, d: Diffusion, x0: torch.Tensor, timesteps: list[int], seed: int = 0, batch_size: int = 256
) -> list[float]:
    """Mean squared error of the predicted x_0 at each timestep, on images ``x0`` in [-1, 1].

    The same quantity for every parameterisation (eps, x0 or v), so models trained on different
    targets can be compared on one axis; each t uses the same noise (from ``seed``).
    """
    model.eval()
    device = next(model.parameters()).device
    errors = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=cpu_generator(seed), dtype=x0.dtype)
        total = 0.0
        for xb, nb in zip(x0.split(batch_size), noise.split(batch_size)):
            xb, nb = xb.to(device), nb.to(device)
            tt = torch.full((len(xb),), t, dtype=torch.long)
            x_t = d.q_sample(xb, tt, nb)
            x0_hat = d.predict_x0(x_t, tt, model(x_t, tt.to(device)).float())
            total += float(((x0_hat - xb) ** 2).sum())
        errors.append(total / x0.numel())
    return errors
