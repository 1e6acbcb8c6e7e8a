"""Train a diffusion model from the command line, writing the checkpoint the notebooks load.

    python -m helpers.train --profile full --steps 800000
    python -m helpers.train --profile full --steps 800000 --resume      # continue after a stop
    python -m helpers.train --profile laptop --prediction v --schedule cosine --loss-weighting min_snr
    python -m helpers.train --profile laptop --num-classes 10 --p-uncond 0.1
    python -m helpers.train --profile laptop --autoencoder artifacts/laptop/checkpoints/10_autoencoder.pt   # latent diffusion
    torchrun --standalone --nproc_per_node 2 -m helpers.train --profile smoke   # 2 processes (helpers.distributed)

The run is the one notebook 03 starts (same ``Trainer``), with checkpoints every ten minutes (or
``--save-every`` steps) and on Ctrl-C or SIGTERM, so a long run can be stopped and resumed exactly.
Under torchrun each process takes its share of the same global batch; rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from helpers.checkpoints import CheckpointError, load_checkpoint
from helpers.config import PROFILES, Profile, TrainConfig, get_profile
from helpers.device import describe, pick_device, seed_everything
from helpers.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, Diffusion
from helpers.distributed import World
from helpers.runs import SAVE_MINUTES, RunLockedError
from helpers.schedules import SCHEDULES

# flags that set the model or the process: on --resume they come from the checkpoint
MODEL_FLAGS = ("prediction", "schedule", "loss_weighting", "min_snr_gamma", "num_classes")
# every field of TrainConfig is a flag (its help and group in the field's metadata); on --resume
# they come from the checkpoint, and only RESUMABLE_SETTINGS may differ from it
TRAIN_FLAGS = tuple(f.name for f in fields(TrainConfig))
_TYPES = {"int": int, "float": float, "float | None": float, "str": str}


def default_checkpoint(prediction: str, num_classes: int | None) -> str:
    """The run's key in ``helpers.paths.CHECKPOINTS``: the notebooks' cfg (08), eps (03) or v (07) model, or x0."""
    return "cfg" if num_classes is not None else prediction


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train the course's U-Net under a profile; resumable, same checkpoints as the notebooks. "
        "Settings left out come from the profile (or, with --resume, from the checkpoint).",
    )
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="scale of the run (default: $DIFFUSION_PROFILE, else full on CUDA and laptop elsewhere)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint file (default: artifacts/<profile>/checkpoints/ with the notebooks' name for this kind of model)")
    p.add_argument("--resume", action="store_true", help="continue --out exactly (weights, optimiser, EMA, data position, RNG); its model and optimisation settings are kept, and a flag that contradicts them is an error")
    p.add_argument("--save-every", type=int, default=None, help=f"write the checkpoint every N steps, and at the end; Ctrl-C or SIGTERM also save after the step in flight (default: every {SAVE_MINUTES} minutes)")
    g = p.add_argument_group("model and objective")
    g.add_argument("--prediction", choices=PREDICTIONS, default=None, help="what the network predicts (default: the profile's)")
    g.add_argument("--schedule", choices=list(SCHEDULES), default=None, help="noise schedule (default: the profile's)")
    g.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None, help="weight of the MSE per timestep; min_snr is Hang et al. 2023 (default: the profile's)")
    g.add_argument("--min-snr-gamma", type=float, default=None, help="gamma of min-SNR weighting (default: 5)")
    g.add_argument("--num-classes", type=int, default=None, help="train a class-conditional model with this many classes, 10 for the datasets here (default: unconditional)")
    g.add_argument("--autoencoder", type=Path, default=None, help="train on this autoencoder's scaled latents (helpers.autoencoder, notebook 10): latent diffusion; the checkpoint records which autoencoder it needs")
    groups = {name: p.add_argument_group(name) for name in ("optimisation", "logging and evaluation", "speed")}
    for f in fields(TrainConfig):  # the training settings, straight from their one definition
        kw: dict = {"default": None, "help": f"{f.metadata['help']} (default: the profile's)"}
        if f.type in ("bool", "bool | None"):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.type in _TYPES:
            kw.update(type=_TYPES[f.type], choices=f.metadata.get("choices"))
        else:
            raise TypeError(f"TrainConfig.{f.name} has the type {f.type}, which has no command-line form here")
        groups[f.metadata["group"]].add_argument(f"--{f.name.replace('_', '-')}", **kw)
    g = groups["logging and evaluation"]
    g.add_argument("--fid-features", choices=("auto", "inception", "classifier"), default=None, help="features for FID/KID (default: the profile's)")
    g = groups["speed"]
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: $DIFFUSION_DEVICE, else the best available)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes; 0 loads in the main process, which exact resume needs with CIFAR-10's random flips (default: 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def lazy_evaluator(profile: Profile, diffusion: Diffusion, device: torch.device, kind: str | None, world: World) -> Callable[[nn.Module], dict]:
    """An evaluator built at its first call: the FID features (a classifier trained for minutes
    offline) are made only if an evaluation actually falls inside the run. Every process of
    ``world`` calls it together and shares the sampling; rank 0 builds first (training the
    classifier, caching the real features), the others then read its caches. Building it leaves
    the training's random streams where they were, so a run does not depend on what was cached."""

    @functools.cache
    def build() -> Callable[[nn.Module], dict]:
        from helpers.evaluation import Evaluator
        from helpers.metrics import get_features

        if not world.main:
            world.barrier()
        # making the classifier draws from the global generators: the run's stream must not see it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            evaluator = Evaluator.for_profile(profile, diffusion, get_features(profile, device, kind, verbose=world.main), world=world)
        if world.main:
            world.barrier()
        return evaluator

    return lambda model: build()(model)


def main(argv: list[str] | None = None) -> int:
    try:
        world = World.from_env()
    except ValueError as err:
        return _fail(str(err))
    try:
        return run(build_parser().parse_args(argv), world)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args: argparse.Namespace, world: World) -> int:
    """Train as ``args`` say, as process ``world.rank`` of ``world.size``; the exit code."""
    from helpers.autoencoder import load_autoencoder
    from helpers.data import DatasetUnavailableError, profile_dataset
    from helpers.latent import autoencoder_record, check_autoencoder, encode_dataset, latent_record, latent_unet_config
    from helpers.training import Trainer
    from helpers.unet import UNet

    if args.save_every is not None and args.save_every < 1:
        return _fail(f"--save-every must be at least 1 step, got {args.save_every}")
    say = print if world.main else lambda *a, **k: None
    try:
        device = world.device(pick_device(args.device))
        profile = get_profile(args.profile, device)
    except ValueError as err:  # DIFFUSION_DEVICE or DIFFUSION_PROFILE names something unknown
        return _fail(str(err))
    latent = args.autoencoder is not None
    out = args.out or profile.checkpoint("latent" if latent else default_checkpoint(args.prediction or profile.prediction, args.num_classes))
    if args.resume and not out.is_file():
        return _fail(f"--resume, but there is no checkpoint at {out}")
    if not args.resume and out.is_file():
        return _fail(f"{out} exists; pass --resume to continue it, or --out to write elsewhere")

    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if "ema_decay" in given:
        given["ema_decay"] = given["ema_decay"] or None  # 0 switches EMA off
    if latent:
        pixel_only = [f"--{k.replace('_', '-')}" for k in ("sample_every", "eval_every") if given.get(k)]
        if pixel_only:
            return _fail(f"{', '.join(pixel_only)}: grids and FID during training are drawn in pixel space; with --autoencoder, "
                         "sample the saved model with python -m helpers.sample")  # fmt: skip
        given.update(sample_every=0, eval_every=0)
    try:
        ae = load_autoencoder(args.autoencoder, device) if latent else None
        if args.resume:
            ckpt = load_checkpoint(out)
            saved_diffusion, model_config = ckpt["diffusion"], ckpt["model_config"]
            record = latent_record(ckpt)
            if record is not None or ae is not None:
                if ae is None:
                    return _fail(f"{out} is a latent model; resume it with --autoencoder {record['path']}")
                check_autoencoder(record, ae, str(out))
            elif model_config.get("image_size") != profile.image_size or model_config.get("in_channels") != profile.channels:
                return _fail(f"{out} holds a {model_config.get('image_size')}px model, but the {profile.name} profile trains on "
                             f"{profile.image_size}px images; resume it under the profile it was trained with ({ckpt.get('profile')})")  # fmt: skip
            saved_model = {**saved_diffusion, "num_classes": model_config.get("num_classes")}
            clash = [f"--{k.replace('_', '-')} {getattr(args, k)} (it has {saved_model[k]})" for k in MODEL_FLAGS
                     if getattr(args, k) is not None and getattr(args, k) != saved_model[k]]  # fmt: skip
            config = TrainConfig(**{**ckpt["train"], **given})
            # the same rule Trainer.load applies, reported here in terms of the flags
            clash += [f"--{k.replace('_', '-')} {now} (it has {saved})" for k, (saved, now) in config.resume_conflicts(ckpt["train"]).items()]
            if clash:
                return _fail(f"{out} cannot be resumed with {', '.join(clash)}; leave these flags out to keep its settings")
            diffusion = Diffusion.from_config(saved_diffusion)
        else:
            model_config = {**profile.model, "num_classes": args.num_classes}
            if ae is not None:
                model_config = latent_unet_config(model_config, ae)
            given_model = {k: getattr(args, k) for k in ("schedule", "prediction", "loss_weighting", "min_snr_gamma") if getattr(args, k) is not None}
            diffusion = profile.diffusion(**given_model)
            config = TrainConfig.from_profile(profile, **given)
        seed_everything(config.seed)  # the same on every process: they draw the same global-batch noise
        model = UNet(**model_config)
        world.local_batch(config.batch_size)
        world.init(device)
        if not world.main:
            world.barrier()  # rank 0 prepares the data folder first (extracting, downloading)
        dataset = profile_dataset(profile)
        if ae is not None:
            dataset = encode_dataset(ae, dataset, progress=not args.no_progress and world.main)
        if world.main:
            world.barrier()
        evaluator = lazy_evaluator(profile, diffusion, device, args.fid_features, world) if config.eval_every else None
        trainer = Trainer(
            model, diffusion, dataset, config, device, out_dir=out.parent.parent / "logs" / out.stem,
            evaluator=evaluator, progress=not args.no_progress, num_workers=args.workers, world=world,
            extra={"autoencoder": autoencoder_record(ae, args.autoencoder)} if ae is not None else None,
        )  # fmt: skip
        if args.resume:
            trainer.load(out)
            say(f"resuming {out} at step {trainer.step}")
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, DatasetUnavailableError) as err:  # bad settings, a damaged checkpoint, no data
        return _fail(str(err))
    except OSError as err:  # e.g. a read-only artifacts folder
        return _fail(f"cannot write the run's files ({err.strerror or err}: {err.filename})")
    processes = f", {world.size} processes, {config.batch_size // world.size} images each per step" if world.distributed else ""
    say(f"profile {profile.name} on {describe(device)}{processes}: {sum(p.numel() for p in model.parameters()):,} parameters, {diffusion}")
    if trainer.step >= config.steps:
        say(f"{out} is already at step {trainer.step} (target {config.steps}); nothing to do")
        return 0
    try:
        trainer.train(save_to=out, save_every=args.save_every, profile=profile.name)
    except (RunLockedError, CheckpointError, DatasetUnavailableError) as err:  # another run; a damaged cache at an evaluation
        return _fail(str(err))
    except KeyboardInterrupt as err:
        print(f"stopped: {err}" if str(err) else "stopped before the first checkpoint", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # the loss or the weights stopped being finite
        return _fail(str(err), 1)
    except OSError as err:  # a read-only folder, a full disk
        return _fail(f"could not write the run's files ({err.strerror or err}: {err.filename or out})", 1)
    last = next((r for r in reversed(trainer.history) if "loss" in r), None)
    say(f"saved {out} at step {trainer.step}" + (f", loss {last['loss']:.4f}" if last else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
