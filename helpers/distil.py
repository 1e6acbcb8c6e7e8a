"""Distil a trained diffusion model into a consistency model (notebook 11) from the command line.

    python -m helpers.distil --teacher pretrained/03_ddpm_eps.pt --profile laptop
    python -m helpers.distil --teacher artifacts/laptop/checkpoints/03_ddpm_eps.pt --steps 3200 --out cd.pt
    python -m helpers.sample --checkpoint artifacts/laptop/checkpoints/11_cd.pt --sampler consistency --nfe 2

The run is the one notebook 11 starts (same ``Distiller`` and the profile's ``DistilConfig``);
the checkpoint names its teacher, and ``--resume`` continues it exactly.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from helpers.checkpoints import CheckpointError, load_checkpoint, load_model
from helpers.config import PROFILES, get_profile
from helpers.config import DistilConfig
from helpers.consistency import consistency_record
from helpers.distillation import Distiller
from helpers.device import describe, pick_device, seed_everything
from helpers.latent import latent_record

_TYPES = {"int": int, "float": float, "float | None": float, "str": str}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m helpers.distil",
        description="Consistency distillation (Song et al. 2023) of a trained eps/x0/v model; settings left out come from the profile.",
    )
    p.add_argument("--teacher", type=Path, required=True, help="the diffusion checkpoint to distil (its EMA weights), e.g. pretrained/03_ddpm_eps.pt")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="data and settings (default: $DIFFUSION_PROFILE, else full on CUDA and laptop elsewhere)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint file (default: artifacts/<profile>/checkpoints/11_cd.pt)")
    p.add_argument("--resume", action="store_true", help="continue --out exactly; its settings are kept")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: $DIFFUSION_DEVICE, else the best available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")
    g = p.add_argument_group("distillation")
    for f in fields(DistilConfig):  # every setting, from its one definition
        g.add_argument(f"--{f.name.replace('_', '-')}", type=_TYPES[f.type], default=None, help=f"{f.metadata['help']} (default: the profile's)")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from helpers.data import DatasetUnavailableError, profile_dataset

    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        profile = get_profile(args.profile, device)
    except ValueError as err:
        return _fail(str(err))
    out = args.out or profile.checkpoint("consistency")
    if args.resume and not out.is_file():
        return _fail(f"--resume, but there is no checkpoint at {out}")
    if not args.resume and out.is_file():
        return _fail(f"{out} exists; pass --resume to continue it, or --out to write elsewhere")
    given = {f.name: getattr(args, f.name) for f in fields(DistilConfig) if getattr(args, f.name) is not None}
    try:
        teacher, d, ckpt = load_model(args.teacher, device)
        if consistency_record(ckpt) is not None:
            return _fail(f"{args.teacher} is itself a consistency model; distil a diffusion model (e.g. pretrained/03_ddpm_eps.pt)")
        if latent_record(ckpt) is not None:
            return _fail(f"{args.teacher} is a latent model; distillation here runs on pixels, so distil a pixel-space model")
        if (teacher.image_size, teacher.in_channels) != (profile.image_size, profile.channels):
            return _fail(f"{args.teacher} holds a {teacher.image_size}px model, but the {profile.name} profile's data is {profile.image_size}px; pass --profile {ckpt.get('profile')}")
        if args.resume:
            saved = consistency_record(load_checkpoint(out))
            if saved is None:
                return _fail(f"{out} holds a diffusion model, not a distillation run to resume")
            config = DistilConfig(**{**saved["config"], **given})
        else:
            config = DistilConfig.from_profile(profile, **given)
        seed_everything(config.seed)
        distiller = Distiller(teacher, d, profile_dataset(profile), config, device, teacher_path=args.teacher, progress=not args.no_progress)
        if args.resume:
            distiller.load(out)
            print(f"resuming {out} at step {distiller.step}")
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, DatasetUnavailableError) as err:
        return _fail(str(err))
    print(f"distilling {args.teacher} (step {ckpt['step']}) on {describe(device)}: {config}")
    try:
        distiller.train(save_to=out, profile=profile.name)
    except FloatingPointError as err:
        return _fail(str(err), 1)
    except KeyboardInterrupt:
        print("stopped; nothing was saved after the last checkpoint", file=sys.stderr)
        return 130
    except OSError as err:
        return _fail(f"could not write {out} ({err.strerror or err})", 1)
    last = distiller.history[-1] if distiller.history else None
    print(f"saved {out} at step {distiller.step}" + (f", loss {last['loss']:.4f}" if last else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
