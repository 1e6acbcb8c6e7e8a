"""Latent diffusion (Rombach et al. 2022): the course's process, U-Net and samplers, unchanged, on
an autoencoder's latents instead of pixels.

Training data are the scaled posterior means z = scale_factor * mu(x) of ``helpers.autoencoder``
(unit variance, as the noise schedule assumes of its data); a sample is z_0 from any sampler with
clipping and clamping off (latents are not in [-1, 1]), decoded as D(z_0 / scale_factor). A latent
model's checkpoint records the autoencoder it was trained on (``autoencoder_record``: its path
and fingerprint), and ``check_autoencoder`` refuses any other.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from helpers.autoencoder import Autoencoder
from helpers.checkpoints import CheckpointError, load_autoencoder
from helpers.paths import portable_path, pretrained_dir, repo_root
from helpers.diffusion import Diffusion
from helpers.samplers import sample

__all__ = ["LatentDataset", "encode_dataset", "latent_unet_config", "text_unet_config", "autoencoder_record", "text_records", "latent_record", "check_autoencoder", "recorded_autoencoder", "decode", "draw_images"]


class LatentDataset(Dataset):
    """(scaled latent [c, s, s], label) pairs, held in memory; a label is a class id, or a caption's
    token ids [L] for a text-to-image model (notebook 13)."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        if len(latents) != len(labels):
            raise ValueError(f"{len(latents)} latents but {len(labels)} labels")
        self.latents, self.labels = latents, labels

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        label = self.labels[i]
        return self.latents[i], int(label) if label.ndim == 0 else label


@torch.no_grad()
def encode_dataset(ae: Autoencoder, dataset: Dataset, batch_size: int = 500, progress: bool = True) -> LatentDataset:
    """Every image of ``dataset`` (images in [-1, 1], labels) as its scaled posterior mean, on the CPU."""
    device = ae.scale_factor.device
    xs, ys = dataset.tensors() if hasattr(dataset, "tensors") else map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in dataset]))
    latents = [ae.encode(xb.to(device)).mean.mul(ae.scale_factor).cpu() for xb in tqdm(xs.split(batch_size), desc="encoding", disable=not progress)]
    return LatentDataset(torch.cat(latents), ys)


def latent_unet_config(model_config: dict[str, Any], ae: Autoencoder) -> dict[str, Any]:
    """A pixel U-Net's configuration for ``ae``'s latents: the same network with the latent's channels
    and side, and attention at the same depths (levels) as in the pixel model."""
    pixel_sides = [model_config["image_size"] // 2**i for i in range(len(model_config["ch_mult"]))]
    depths = [pixel_sides.index(r) for r in model_config["attn_resolutions"]]
    side = ae.latent_size
    if side % 2 ** (len(model_config["ch_mult"]) - 1):
        raise ValueError(f"a {side}x{side} latent cannot be halved {len(model_config['ch_mult']) - 1} times")
    return {**model_config, "image_size": side, "in_channels": ae.latent_channels, "attn_resolutions": tuple(side // 2**k for k in depths)}


def text_unet_config(model_config: dict[str, Any], ae: Autoencoder) -> dict[str, Any]:
    """``latent_unet_config`` with attention, and so cross-attention to the caption, at the two lowest
    resolutions of the U-Net (notebook 13): where each position's features see most of the image, as
    Stable Diffusion attends to its caption at its lower levels."""
    config = latent_unet_config(model_config, ae)
    sides = [config["image_size"] // 2**i for i in range(len(config["ch_mult"]))]
    return {**config, "attn_resolutions": tuple(sides[-2:])}


def autoencoder_record(ae: Autoencoder, path: str | Path) -> dict[str, Any]:
    """What a latent model's checkpoint keeps of its autoencoder (in ``extra['autoencoder']``)."""
    return {"path": portable_path(path), "fingerprint": ae.fingerprint(), "scale_factor": float(ae.scale_factor), "latent_shape": list(ae.latent_shape)}


def text_records(ae: Autoencoder, ae_path: str | Path, clip_path: str | Path, text_fingerprint: str, captions: dict[str, Any]) -> dict[str, Any]:
    """What a text-to-image model's checkpoint keeps in ``extra`` (notebook 13, ``train --clip``): its
    autoencoder (``autoencoder_record``), the CLIP whose text encoder it holds (path and the encoder's
    fingerprint) and the caption maker's state, which scores its samples."""
    return {"autoencoder": autoencoder_record(ae, ae_path), "clip": {"path": portable_path(clip_path), "fingerprint": text_fingerprint}, "captions": captions}


def latent_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The autoencoder a checkpoint's model was trained on, or None for a pixel model."""
    return (ckpt.get("extra") or {}).get("autoencoder")


def check_autoencoder(record: dict[str, Any] | None, ae: Autoencoder, what: str) -> None:
    """Raise CheckpointError unless ``what`` (a latent model, described by ``record``) was trained on ``ae``."""
    if record is None:
        raise CheckpointError(f"{what} holds a pixel-space model; it needs no autoencoder")
    if record["fingerprint"] != ae.fingerprint():
        raise CheckpointError(
            f"{what} was trained on the latents of another autoencoder ({record['path']}, fingerprint {record['fingerprint']}); "
            f"this one has fingerprint {ae.fingerprint()}"
        )


def recorded_autoencoder(ckpt: dict[str, Any], what: str, device: torch.device | str = "cpu", path: str | Path | None = None) -> Autoencoder | None:
    """The autoencoder that decodes a latent model's samples (None for a pixel model): ``path`` if
    given, else the first of the file its checkpoint records (relative to the repository) and the
    shipped one of that name in ``pretrained/`` whose fingerprint is the recorded one.
    FileNotFoundError when neither file exists, CheckpointError for another autoencoder."""
    record = latent_record(ckpt)
    if record is None:
        if path is not None:
            raise CheckpointError(f"an autoencoder was given, but {what} holds a pixel-space model")
        return None
    if path is not None:
        ae = load_autoencoder(path, device)
        check_autoencoder(record, ae, what)
        return ae
    recorded = Path(record["path"])
    candidates = [recorded if recorded.is_absolute() else repo_root() / recorded, pretrained_dir() / recorded.name]  # portable_path: repo-relative
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no autoencoder at {candidates[0]} or {candidates[1]}")
    for p in found:
        ae = load_autoencoder(p, device)
        if ae.fingerprint() == record["fingerprint"]:
            return ae
    raise CheckpointError(f"{what} was trained on the latents of the autoencoder with fingerprint {record['fingerprint']}; "
                          f"{' and '.join(str(p) for p in found)} {'is' if len(found) == 1 else 'are'} another: pass its file with --autoencoder")


@torch.no_grad()
def decode(ae: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents: D(z / scale_factor), clamped."""
    return ae.decode(z.to(ae.scale_factor.device) / ae.scale_factor).clamp(-1, 1)


def unclipped(sampler: Any) -> Any:
    """``sampler`` with x_0 clipping off (any sampler with a ``clip_x0`` setting: DDPM, DDIM): the
    [-1, 1] bound belongs to pixels, not latents."""
    settings = {f.name for f in fields(sampler)} if is_dataclass(sampler) else set()
    return replace(sampler, clip_x0=False) if "clip_x0" in settings else sampler


@torch.no_grad()
def draw_images(
    model: nn.Module, d: Diffusion, ae: Autoencoder, n: int, sampler: Any, generator: torch.Generator | None = None, progress: bool = False
) -> torch.Tensor:
    """n decoded images from a latent model: ``samplers.sample`` in latent space (unclipped, unclamped), then ``decode``."""
    z = sample(model, d, (n, *ae.latent_shape), unclipped(sampler), generator, progress=progress, clamp=False)
    return decode(ae, z)
