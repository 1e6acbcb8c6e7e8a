"""``python -m helpers distil``: distil a trained diffusion model into a consistency model (notebook 11).

    python -m helpers distil --teacher pretrained/03_ddpm_eps.pt --profile laptop
    python -m helpers distil --teacher artifacts/laptop/checkpoints/03_ddpm_eps.pt --steps 3200 --out cd.pt
    python -m helpers sample --checkpoint artifacts/laptop/checkpoints/11_cd.pt --sampler consistency --nfe 2

The run is the one notebook 11 starts (same ``Distiller`` and the profile's ``DistilConfig``);
the checkpoint names its teacher, and ``--resume`` continues it exactly. ``python -m
helpers.distil`` runs the same command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers import cli
from helpers.checkpoints import load_checkpoint, load_model
from helpers.config import DistilConfig
from helpers.consistency import consistency_record
from helpers.device import describe, seed_everything
from helpers.distillation import Distiller
from helpers.latent import latent_record
from helpers.paths import CHECKPOINTS


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("distil", "Consistency distillation (Song et al. 2023) of a trained eps/x0/v model; settings left out come from the profile.",
                   writes=CHECKPOINTS["consistency"].file, config=DistilConfig, group="distillation")  # fmt: skip
    p.add_argument("--teacher", type=Path, required=True, help="the diffusion checkpoint to distil (its EMA weights), e.g. pretrained/03_ddpm_eps.pt")
    return p


def run(args: argparse.Namespace) -> int:
    """Distil as ``args`` say; the exit code. Bad input: CliError."""
    from helpers.data import profile_dataset

    device, profile, out, given = cli.start(args, DistilConfig, "consistency")
    with cli.setting_up():
        teacher, d, ckpt = load_model(args.teacher, device)
        if consistency_record(ckpt) is not None:
            raise cli.CliError(f"{args.teacher} is itself a consistency model; distil a diffusion model (e.g. pretrained/03_ddpm_eps.pt)")
        if latent_record(ckpt) is not None:
            raise cli.CliError(f"{args.teacher} is a latent model; distillation here runs on pixels, so distil a pixel-space model")
        if (teacher.image_size, teacher.in_channels) != (profile.image_size, profile.channels):
            raise cli.CliError(f"{args.teacher} holds a {teacher.image_size}px model, but the {profile.name} profile's data is {profile.image_size}px; pass --profile {ckpt.get('profile')}")
        if args.resume:
            saved = consistency_record(load_checkpoint(out))
            if saved is None:
                raise cli.CliError(f"{out} holds a diffusion model, not a distillation run to resume")
            config = DistilConfig(**{**saved["config"], **given})
        else:
            config = DistilConfig.from_profile(profile, **given)
        seed_everything(config.seed)
        distiller = Distiller(teacher, d, profile_dataset(profile), config, device, teacher_path=args.teacher, progress=not args.no_progress)
        if args.resume:
            cli.resume(distiller, out)
    print(f"distilling {args.teacher} (step {ckpt['step']}) on {describe(device)}: {config}")
    if not cli.train_to(distiller, out, config.steps, profile=profile.name):
        return 0
    last = distiller.history[-1] if distiller.history else None
    cli.saved(out, distiller.step, f", loss {last['loss']:.4f}" if last else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
