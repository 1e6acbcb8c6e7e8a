"""Sample images from a checkpoint: a PNG grid, an .npz of raw images, or a folder of PNGs.

    python -m helpers.sample --checkpoint artifacts/full/checkpoints/03_ddpm_eps.pt --n 64 --out grid.png
    python -m helpers.sample --checkpoint pretrained/03_ddpm_eps.pt --sampler ddim --steps 50
    python -m helpers.sample --checkpoint pretrained/08_cfg.pt --class-id -1 --guidance-scale 3 --n 10000 --out samples.npz
    python -m helpers.sample --checkpoint pretrained/03_ddpm_eps.pt --n 10000 --out samples/

``.npz`` holds ``arr_0``, uint8 [N, H, W, C], and for a conditional model ``arr_1``, the labels:
the layout guided-diffusion's evaluation suite reads. A folder gets one PNG per image, as
clean-fid and torch-fidelity read them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.checkpoints import CheckpointError, load_model
from helpers.device import cpu_generator, describe, pick_device
from helpers.samplers import SPACINGS, VARIANCES, sample
from helpers.viz import save_grid


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [N, C, H, W] -> uint8 [N, H, W, C] (round to nearest)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_images(x: torch.Tensor, labels: torch.Tensor | None, out: Path) -> Path:
    """``out``: an .npz (``arr_0`` images, ``arr_1`` labels), a folder of PNGs, or a PNG grid."""
    if out.suffix == ".npz":
        arrays = {"arr_0": to_uint8(x)} | ({"arr_1": labels.numpy()} if labels is not None else {})
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
        return out
    if out.suffix == "" or str(out).endswith("/") or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(x)):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / f"{i:06d}.png")
        return out
    return save_grid(x, out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m helpers.sample",
        description="Draw images from a trained checkpoint; save a PNG grid, an .npz of uint8 images, or one PNG per image in a folder.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by notebook 03/06/07/08 or python -m helpers.train")
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="a .png grid, an .npz (arr_0 uint8 NxHxWxC, arr_1 labels), or a folder (ending in / or without a suffix) for one PNG per image (default: grid.png)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ancestral DDPM over all T steps, or DDIM (default: ddpm)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: T)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise: 0 deterministic, 1 DDPM-like (default: 0)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="DDIM timestep grid (default: leading)")
    p.add_argument("--variance", choices=VARIANCES, default=None, help="DDPM step variance: beta tilde (fixed_small, the default) or beta (fixed_large)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument("--class-id", type=int, default=None, help="class of every image, for conditional models; -1 cycles through all classes (default: unconditional)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale s: 1 plain conditional, 0 unconditional (default: 1)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the CPU generator behind all noise, the same on any device (default: 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per sampling batch (default: 256)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        print("error: --n must be at least 1", file=sys.stderr)
        return 2
    ignored = [flag for flag, value, sampler in (("--steps", args.steps, "ddim"), ("--eta", args.eta, "ddim"),
               ("--spacing", args.spacing, "ddim"), ("--variance", args.variance, "ddpm")) if value is not None and args.sampler != sampler]  # fmt: skip
    if ignored:
        print(f"error: {', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with --sampler {args.sampler}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    try:
        model, d, ckpt = load_model(args.checkpoint, device, ema=not args.raw)
    except (FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.class_id is not None and model.num_classes is None:
        print(f"error: --class-id given, but {args.checkpoint} holds an unconditional model", file=sys.stderr)
        return 2
    gen = cpu_generator(args.seed)
    shape = (model.in_channels, model.image_size, model.image_size)
    images = []
    t0 = time.perf_counter()
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        y = None
        if args.class_id is not None:
            y = torch.arange(start, start + b) % model.num_classes if args.class_id < 0 else torch.full((b,), args.class_id)
        try:
            x = sample(
                model, d, (b, *shape), args.sampler, args.steps, args.eta or 0.0, y=y, guidance_scale=args.guidance_scale,
                generator=gen, clip_x0=not args.no_clip, variance=args.variance or "fixed_small", spacing=args.spacing or "leading",
            )  # fmt: skip
        except ValueError as err:  # a class id out of range, guidance without labels, too many steps...
            print(f"error: {err}", file=sys.stderr)
            return 2
        images.append(x.cpu())
    seconds = time.perf_counter() - t0
    x = torch.cat(images)
    labels = None
    if args.class_id is not None:
        labels = torch.arange(args.n) % model.num_classes if args.class_id < 0 else torch.full((args.n,), args.class_id)
    write_images(x, labels, args.out)
    # a file without EMA state holds one set of weights: raw ones, or a shipped model's EMA weights
    weights = "saved" if ckpt.get("ema") is None else "raw" if args.raw else "EMA"
    print(f"{args.n} images ({weights} weights, step {ckpt['step']}, {args.sampler}) on {describe(device)} in {seconds:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
