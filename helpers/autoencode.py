"""``python -m helpers autoencoder``: train latent diffusion's autoencoder (notebook 10) under a
profile, measure its scale factor, and save it; then train a latent model on it.

    python -m helpers autoencoder --profile laptop
    python -m helpers autoencoder --profile laptop --steps 2400 --resume     # continue it to 2,400 steps
    python -m helpers train --profile laptop --autoencoder artifacts/laptop/checkpoints/10_autoencoder.pt

The run is an ``AutoencoderTrainer`` (``helpers.autoencoder_training``) with the profile's
``AutoencoderConfig``: one run per file, a checkpoint every ten minutes and on Ctrl-C or SIGTERM,
and ``--resume`` continues it exactly. The scale factor is measured on 2,000 training images at
the run's last step (``AutoencoderTrainer``). ``python -m helpers.autoencode`` runs the same command.
"""

from __future__ import annotations

import argparse
import sys

from helpers import cli
from helpers.autoencoder import Autoencoder
from helpers.checkpoints import load_checkpoint
from helpers.config import AutoencoderConfig
from helpers.device import describe, seed_everything
from helpers.paths import CHECKPOINTS

def build_parser() -> argparse.ArgumentParser:
    return cli.parser("autoencoder", "Settings left out come from the profile (or, with --resume, from the checkpoint).",
                      writes=CHECKPOINTS["autoencoder"].file, config=AutoencoderConfig, group="autoencoder")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; the exit code. Bad input: CliError."""
    from helpers.autoencoder_training import AutoencoderTrainer
    from helpers.data import profile_dataset

    device, profile, out, given = cli.start(args, AutoencoderConfig, "autoencoder")
    with cli.setting_up():
        saved = (load_checkpoint(out, "cpu", kind="autoencoder").get("train") or None) if args.resume else None
        config = AutoencoderConfig(**{**saved, **given}) if saved else AutoencoderConfig.from_profile(profile, **given)
        seed_everything(config.seed)
        ae = Autoencoder(**config.model_config(profile.image_size, profile.channels))
        data = profile_dataset(profile)
        trainer = AutoencoderTrainer(ae, data, config, device, progress=not args.no_progress)
        if args.resume:
            cli.resume(trainer, out)
    print(f"{profile.name} profile on {describe(device)}: a {sum(p.numel() for p in ae.parameters()):,}-parameter autoencoder, latents {ae.latent_shape}")
    if not cli.train_to(trainer, out, config.steps, profile=profile.name):
        return 0
    cli.saved(out, trainer.step, f": L1 per pixel {trainer.history[-1]['l1']:.4f}, scale factor {float(ae.scale_factor):.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
