"""``python -m helpers sample``: images from a checkpoint, as a PNG grid, an .npz of raw images, or a folder of PNGs.

    python -m helpers sample --checkpoint artifacts/full/checkpoints/03_ddpm_eps.pt --n 64 --out grid.png
    python -m helpers sample --checkpoint pretrained/03_ddpm_eps.pt --sampler ddim --steps 50
    python -m helpers sample --checkpoint pretrained/03_ddpm_eps.pt --sampler dpmpp-2m --nfe 20
    python -m helpers sample --checkpoint pretrained/08_cfg.pt --class-id -1 --guidance-scale 3 --n 10000 --out samples.npz
    python -m helpers sample --checkpoint pretrained/03_ddpm_eps.pt --n 10000 --out samples/
    python -m helpers sample --checkpoint pretrained/11_cd.pt --sampler consistency --nfe 2
    python -m helpers sample --checkpoint artifacts/laptop/checkpoints/10_latent.pt --sampler ddim --steps 50   # decoded by its autoencoder
    python -m helpers sample --checkpoint pretrained/13_text.pt --sampler ddim --steps 20 --prompt "a dark sneaker facing left" --guidance-scale 3

``.npz`` holds ``arr_0``, uint8 [N, H, W, C], and for a conditional model ``arr_1``, the labels:
the layout guided-diffusion's evaluation suite reads. A folder gets one PNG per image, as
clean-fid and torch-fidelity read them. ``python -m helpers.sample`` runs the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import cli
from helpers.autoencoder import Autoencoder
from helpers.checkpoints import CheckpointError, load_model
from helpers.consistency import MultistepConsistency, consistency_record
from helpers.cli import CliError
from helpers.device import cpu_generator, describe
from helpers.latent import decode, recorded_autoencoder, unclipped
from helpers.flow import FLOW_SAMPLERS, FlowEuler
from helpers.samplers import DDIM, DDPM, SPACINGS, VARIANCES, Guided, TextGuided, fits, sample
from helpers.solvers import SOLVERS, Solver
from helpers.text_unet import TextUNet
from helpers.viz import save_grid


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_folder(out: Path) -> bool:
    """``--out`` names a folder (one PNG per image): it ends in /, has no suffix, or is one."""
    return out.suffix == "" or str(out).endswith("/") or out.is_dir()


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
    if is_folder(out):
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(x)):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / f"{i:06d}.png")
        return out
    return save_grid(x, out)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("sample", profile=False)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by notebook 03/06/07/08/10/11/12/13, python -m helpers train or python -m helpers distil, or a shipped one (pretrained/)")
    p.add_argument("--n", type=cli.positive, default=64, help="number of images (default: 64)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="a .png grid, an .npz (arr_0 uint8 NxHxWxC, arr_1 labels), or a folder (ending in / or without a suffix) for one PNG per image (default: grid.png)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", *SOLVERS, "consistency", *FLOW_SAMPLERS), default="ddpm",
                   help="ancestral DDPM over all T steps, DDIM, a noise-level solver (helpers.solvers): euler, heun, dpmpp-2m (ODE), euler-a, pc (SDE), "
                   "consistency for a model distilled by python -m helpers distil, or flow-euler, flow-heun for a flow-matching model (default: ddpm)")
    p.add_argument("--steps", type=cli.positive, default=None, help="DDIM steps (default: T), or a flow sampler's steps (default: 50)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise: 0 deterministic, 1 DDPM-like (default: 0)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="DDIM timestep grid (default: trailing, which starts at t = T-1; Lin et al. 2024)")
    p.add_argument("--nfe", type=cli.positive, default=None, help="network evaluations of a noise-level solver, on a Karras grid (default: 50), or of consistency sampling (default: 1)")
    p.add_argument("--variance", choices=VARIANCES, default=None, help="DDPM step variance: beta tilde (fixed_small, the default) or beta (fixed_large)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument("--class-id", type=int, default=None, help="class of every image, for conditional models; -1 cycles through all classes (default: unconditional)")
    p.add_argument("--prompt", default=None, help="the caption of every image, for a text-to-image model (notebook 13), in its vocabulary (default: none)")
    p.add_argument("--guidance-scale", type=cli.finite, default=1.0, help="classifier-free guidance scale s: 1 plain conditional, 0 unconditional (default: 1)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--autoencoder", type=Path, default=None, help="for a latent model (notebook 10): the autoencoder that decodes its samples (default: the one its checkpoint names; another is refused)")
    p.add_argument("--seed", type=cli.count, default=0, help="seed of the CPU generator behind all noise, the same on any device (default: 0)")
    p.add_argument("--batch-size", type=cli.positive, default=256, help="images per sampling batch (default: 256)")
    return p


def check_destination(out: Path) -> None:
    """Refuse, before any sampling, an ``--out`` that cannot be written (CliError's message says why)."""
    folder = is_folder(out)
    if not folder and out.suffix.lower() not in IMAGE_SUFFIXES + (".npz",):
        raise CliError(f"--out {out}: use a .png grid, an .npz, or a folder (a name without a suffix); {out.suffix} is none of them")
    target = out if folder else out.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"--out {out}: cannot create {target} ({err.strerror})") from None
    if not os.access(target, os.W_OK):
        raise CliError(f"--out {out}: {target} is not writable")


def build_sampler(args: argparse.Namespace) -> DDPM | DDIM | Solver | MultistepConsistency | FlowEuler:
    """The sampler the flags describe; flags of another sampler are an error, not ignored."""
    family = "solver" if args.sampler in (*SOLVERS, "consistency") else "flow" if args.sampler in FLOW_SAMPLERS else args.sampler
    ignored = [flag for flag, value, owners in (("--steps", args.steps, ("ddim", "flow")), ("--eta", args.eta, ("ddim",)),
               ("--spacing", args.spacing, ("ddim",)), ("--variance", args.variance, ("ddpm",)), ("--nfe", args.nfe, ("solver",))) if value is not None and family not in owners]  # fmt: skip
    if args.no_clip and family in ("solver", "flow"):
        ignored.append("--no-clip")  # the noise-level solvers, consistency and flow sampling never clip x0
    if ignored:
        raise CliError(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with --sampler {args.sampler}")
    try:
        if family == "ddpm":
            return DDPM(args.variance or "fixed_small", clip_x0=not args.no_clip)
        if family == "ddim":
            return DDIM(args.steps, 0.0 if args.eta is None else args.eta, args.spacing or "trailing", clip_x0=not args.no_clip)
        if family == "flow":
            return FLOW_SAMPLERS[args.sampler](50 if args.steps is None else args.steps)
        if args.sampler == "consistency":
            return MultistepConsistency(1 if args.nfe is None else args.nfe)
        return Solver(args.sampler, 50 if args.nfe is None else args.nfe)
    except ValueError as err:
        raise CliError(str(err)) from None


def latent_autoencoder(args: argparse.Namespace, ckpt: dict, device: torch.device) -> Autoencoder | None:
    """The autoencoder that decodes a latent model's samples (``--autoencoder``, else the one its
    checkpoint names), checked against the checkpoint; None for a pixel model."""
    try:
        return recorded_autoencoder(ckpt, str(args.checkpoint), device, args.autoencoder)
    except FileNotFoundError as err:
        raise CliError(f"{args.checkpoint} is a latent model and its autoencoder is missing ({err}); pass --autoencoder") from None
    except CheckpointError as err:
        raise CliError(str(err)) from None


def class_ids(args: argparse.Namespace, start: int, b: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels of images start..start+b-1: all ``--class-id``, or 0, 1, 2, ... in turn for -1."""
    if args.class_id is None:
        return None
    return torch.arange(start, start + b) % num_classes if args.class_id == -1 else torch.full((b,), args.class_id)


def draw(args: argparse.Namespace) -> str:
    """Sample as ``args`` say and write the images; return the summary line. Bad input: CliError."""
    device = cli.pick(args)
    if args.class_id is not None and args.class_id < -1:
        raise CliError(f"--class-id must be a class (0 and up) or -1 for all classes in turn, got {args.class_id}")
    if args.guidance_scale != 1 and args.class_id is None and args.prompt is None:
        raise CliError("--guidance-scale needs --class-id or --prompt: guidance steers towards a class or a caption")
    if args.class_id is not None and args.prompt is not None:
        raise CliError("--class-id and --prompt: a model is conditioned on class ids or on captions, give one")
    sampler = build_sampler(args)
    check_destination(args.out)
    try:
        model, d, ckpt = load_model(args.checkpoint, device, ema=not args.raw)
    except (FileNotFoundError, CheckpointError) as err:
        raise CliError(str(err)) from None
    if not fits(d, sampler):
        raise CliError(f"{args.checkpoint} holds a flow-matching model, which predicts a velocity and has no beta schedule for --sampler {args.sampler} "
                       "to step through; sample it with --sampler flow-euler or flow-heun" if d.prediction == "velocity" else
                       f"--sampler {args.sampler} integrates a flow-matching model's velocity, but {args.checkpoint} holds a diffusion model")  # fmt: skip
    record = consistency_record(ckpt)
    if isinstance(sampler, MultistepConsistency) and record is None:
        raise CliError(f"{args.checkpoint} holds a diffusion model; --sampler consistency needs one distilled from it (python -m helpers distil)")
    if record is not None and not isinstance(sampler, MultistepConsistency):
        raise CliError(f"{args.checkpoint} holds a consistency model (distilled from {record['teacher']}); sample it with --sampler consistency --nfe 1 or 2")
    if record is not None:
        sampler = dataclasses.replace(sampler, sigma_max=record["config"]["sigma_max"])
    ae = latent_autoencoder(args, ckpt, device)
    if ae is not None:
        sampler = unclipped(sampler)
    tokenizer = model.tokenizer if isinstance(model, TextUNet) else None
    if tokenizer is None and args.prompt is not None:
        raise CliError(f"--prompt given, but {args.checkpoint} holds a model without text conditioning")
    if tokenizer is not None and args.prompt is None:
        raise CliError(f"{args.checkpoint} holds a text-to-image model: give --prompt, e.g. --prompt \"a dark sneaker facing left\" (its words: {', '.join(tokenizer.vocab[2:])})")
    try:
        ids = tokenizer.encode([args.prompt]) if tokenizer is not None else None
    except ValueError as err:
        raise CliError(f"--prompt: {err}") from None
    if args.class_id is not None and model.num_classes is None:
        raise CliError(f"--class-id given, but {args.checkpoint} holds an unconditional model")
    if args.class_id is not None and args.class_id >= model.num_classes:
        raise CliError(f"--class-id {args.class_id}: {args.checkpoint} knows classes 0..{model.num_classes - 1}")
    if isinstance(sampler, DDIM) and sampler.steps is not None and sampler.steps > d.T:
        raise CliError(f"--steps {sampler.steps}: the model's process has only T = {d.T} steps")
    gen = cpu_generator(args.seed)
    shape = (model.in_channels, model.image_size, model.image_size)
    images = []
    t0 = time.perf_counter()
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        y = class_ids(args, start, b, model.num_classes)
        net = Guided(model, y, args.guidance_scale) if y is not None else TextGuided(model, ids.expand(b, -1), args.guidance_scale) if ids is not None else model
        x = sample(net, d, (b, *shape), sampler, gen, progress=not args.no_progress, clamp=ae is None)
        images.append((decode(ae, x) if ae is not None else x).cpu())
    seconds = time.perf_counter() - t0
    x = torch.cat(images)
    if not torch.isfinite(x).all():
        raise CliError(f"{args.checkpoint} gave non-finite images with {sampler}; its weights hold NaN or inf (nothing was written)")
    try:
        write_images(x, class_ids(args, 0, args.n, model.num_classes), args.out)
    except OSError as err:  # checked before sampling, but a disk can fill up meanwhile
        raise CliError(f"could not write {args.out} ({err.strerror or err})") from None
    # a file without EMA state holds one set of weights: raw ones, or a shipped model's EMA weights
    weights = "saved" if ckpt.get("ema") is None else "raw" if args.raw else "EMA"
    return f"{args.n} images ({weights} weights, step {ckpt['step']}, {sampler}) on {describe(device)} in {seconds:.1f} s -> {args.out}"


def run(args: argparse.Namespace) -> int:
    """Sample as ``args`` say and print what was written; the exit code."""
    print(draw(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
