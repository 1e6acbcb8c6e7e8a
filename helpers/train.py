"""``python -m helpers train``: train a diffusion model, writing the checkpoint the notebooks load.

    python -m helpers train --profile full --steps 800000
    python -m helpers train --profile full --steps 800000 --resume      # continue after a stop
    python -m helpers train --profile laptop --prediction v --schedule cosine --loss-weighting min_snr
    python -m helpers train --profile laptop --num-classes 10 --p-uncond 0.1
    python -m helpers train --profile laptop --prediction velocity --time-sampling logit_normal   # flow matching
    python -m helpers train --profile laptop --autoencoder artifacts/laptop/checkpoints/10_autoencoder.pt   # latent diffusion
    python -m helpers train --profile laptop --autoencoder artifacts/laptop/checkpoints/10_autoencoder.pt \
        --clip artifacts/laptop/checkpoints/13_clip.pt   # text-to-image (notebook 13): captions from the CLIP's caption maker
    torchrun --standalone --nproc_per_node 2 -m helpers train --profile smoke   # 2 processes (helpers.distributed)

The run is the one notebook 03 starts (same ``Trainer``), with checkpoints every ten minutes (or
``--save-every`` steps) and on Ctrl-C or SIGTERM, so a long run can be stopped and resumed exactly.
Under torchrun each process takes its share of the same global batch; rank 0 writes the files.
``python -m helpers.train`` runs the same command.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from helpers import cli
from helpers.checkpoints import load_checkpoint
from helpers.config import Profile, TrainConfig
from helpers.device import describe, seed_everything
from helpers.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, Diffusion
from helpers.flow import TIME_SAMPLINGS, FlowMatching, process_from_config
from helpers.distributed import World
from helpers.paths import CHECKPOINTS
from helpers.runs import SAVE_MINUTES
from helpers.schedules import SCHEDULES

# flags that set the model or the process: on --resume they come from the checkpoint
MODEL_FLAGS = ("prediction", "schedule", "loss_weighting", "min_snr_gamma", "time_sampling", "num_classes")
DIFFUSION_FLAGS = ("schedule", "loss_weighting", "min_snr_gamma")  # what a flow model does not have
# every field of TrainConfig is a flag (its help and group in the field's metadata); on --resume
# they come from the checkpoint, and only RESUMABLE_SETTINGS may differ from it


def default_checkpoint(prediction: str, num_classes: int | None) -> str:
    """The run's key in ``helpers.paths.CHECKPOINTS``: the notebooks' cfg (08), eps (03) or v (07) model, x0, or a flow (velocity)."""
    return "cfg" if num_classes is not None else prediction


def build_parser() -> argparse.ArgumentParser:
    files = ", ".join(CHECKPOINTS[k].file for k in ("eps", "v", "x0", "velocity", "cfg", "latent")) + f" or {CHECKPOINTS['text'].file}"
    p = cli.parser("train", "Settings left out come from the profile (or, with --resume, from the checkpoint).", writes=f"<{files}, by the kind of model>")
    p.add_argument("--save-every", type=cli.positive, default=None, help=f"write the checkpoint every N steps, and at the end; Ctrl-C or SIGTERM also save after the step in flight (default: every {SAVE_MINUTES} minutes)")
    g = p.group("model and objective")
    g.add_argument("--prediction", choices=(*PREDICTIONS, "velocity"), default=None, help="what the network predicts; velocity trains a flow-matching model (helpers.flow) instead of a diffusion model (default: the profile's)")
    g.add_argument("--time-sampling", choices=TIME_SAMPLINGS, default=None, help="a flow model's training times t: uniform, or SD3's logit_normal (default: uniform)")
    g.add_argument("--schedule", choices=list(SCHEDULES), default=None, help="noise schedule (default: the profile's)")
    g.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None, help="weight of the MSE per timestep; min_snr is Hang et al. 2023 (default: the profile's)")
    g.add_argument("--min-snr-gamma", type=cli.positive_number, default=None, help="gamma of min-SNR weighting (default: 5)")
    g.add_argument("--num-classes", type=cli.positive, default=None, help="train a class-conditional model with this many classes, 10 for the datasets here (default: unconditional)")
    g.add_argument("--autoencoder", type=Path, default=None, help="train on this autoencoder's scaled latents (python -m helpers autoencoder, notebook 10): latent diffusion; the checkpoint records which autoencoder it needs")
    g.add_argument("--clip", type=Path, default=None, help="with --autoencoder: train a text-to-image model on captions of the training images, read through this CLIP's frozen text encoder (13_clip.pt, notebook 13); the checkpoint holds that text encoder")
    cli.add_config(p, TrainConfig)  # the training settings, straight from their one definition, in their groups
    p.group("logging and evaluation").add_argument("--fid-features", choices=("auto", "inception", "classifier"), default=None, help="features for FID/KID (default: the profile's)")
    p.group("speed").add_argument("--workers", type=cli.count, default=0, help="DataLoader worker processes; 0 loads in the main process, which exact resume needs with CIFAR-10's random flips (default: 0)")
    return p


def lazy_evaluator(profile: Profile, diffusion: Diffusion | FlowMatching, device: torch.device, kind: str | None, world: World) -> Callable[[nn.Module], dict]:
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
        return cli.run_command(build_parser, run, argv)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args: argparse.Namespace, world: World | None = None) -> int:
    """Train as ``args`` say, as process ``world.rank`` of ``world.size`` (default: torchrun's
    environment, else one process); the exit code. Bad input: CliError."""
    from helpers.checkpoints import build_model, load_autoencoder, load_clip
    from helpers.data import profile_dataset
    from helpers.device import fingerprint
    from helpers.latent import LatentDataset, autoencoder_record, check_autoencoder, encode_dataset, latent_record, latent_unet_config, text_records, text_unet_config
    from helpers.text_unet import TextUNet
    from helpers.training import Trainer

    with cli.setting_up():
        world = World.from_env() if world is None else world
    say = print if world.main else lambda *a, **k: None
    latent, text = args.autoencoder is not None, args.clip is not None
    if text and not latent:
        raise cli.CliError("--clip trains a text-to-image model in an autoencoder's latent space: give --autoencoder too")
    if text and args.num_classes is not None:
        raise cli.CliError("--num-classes and --clip: a text-to-image model is conditioned on captions, not class ids")
    kind = lambda profile: "text" if text else "latent" if latent else default_checkpoint(args.prediction or profile.prediction, args.num_classes)  # noqa: E731
    device, profile, out, given = cli.start(args, TrainConfig, kind, world)
    if "ema_decay" in given:
        given["ema_decay"] = given["ema_decay"] or None  # 0 switches EMA off
    if latent:
        pixel_only = [cli.flag(k) for k in ("sample_every", "eval_every") if given.get(k)]
        if pixel_only:
            raise cli.CliError(f"{', '.join(pixel_only)}: grids and FID during training are drawn in pixel space; with --autoencoder, "
                               "sample the saved model with python -m helpers sample")  # fmt: skip
        given.update(sample_every=0, eval_every=0)
    with cli.setting_up():
        ae = load_autoencoder(args.autoencoder, device) if latent else None
        if text and profile.dataset != "fashion_mnist":
            raise cli.CliError(f"--clip: captions are made for Fashion-MNIST's classes, and the {profile.name} profile trains on {profile.dataset}")
        clip, tokenizer, captions, _ = load_clip(args.clip) if text else (None, None, None, None)
        if args.resume:
            ckpt = load_checkpoint(out, kind="unet")
            saved_diffusion, model_config = ckpt["diffusion"], ckpt["model_config"]
            if "text" in model_config and not text:
                raise cli.CliError(f"{out} is a text-to-image model; resume it with --clip {(ckpt.get('extra') or {}).get('clip', {}).get('path', '<its CLIP>')}")
            if text and "text" not in model_config:
                raise cli.CliError(f"{out} is not a text-to-image model; leave out --clip")
            if text and model_config.get("text_fingerprint") != fingerprint(clip.text):
                raise cli.CliError(f"{out} was not trained around the text encoder of the CLIP {args.clip} (fingerprint {fingerprint(clip.text)}); "
                                   f"it needs {ckpt['extra'].get('clip', {}).get('path')}'s (fingerprint {model_config.get('text_fingerprint')})")  # fmt: skip
            record = latent_record(ckpt)
            if record is not None or ae is not None:
                if ae is None:
                    raise cli.CliError(f"{out} is a latent model; resume it with --autoencoder {record['path']}")
                check_autoencoder(record, ae, str(out))
            elif model_config.get("image_size") != profile.image_size or model_config.get("in_channels") != profile.channels:
                raise cli.CliError(f"{out} holds a {model_config.get('image_size')}px model, but the {profile.name} profile trains on "
                                   f"{profile.image_size}px images; resume it under the profile it was trained with ({ckpt.get('profile')})")  # fmt: skip
            saved_model = {**saved_diffusion, "num_classes": model_config.get("num_classes")}
            clash = [f"{cli.flag(k)} {getattr(args, k)} (it has {saved_model.get(k)})" for k in MODEL_FLAGS
                     if getattr(args, k) is not None and getattr(args, k) != saved_model.get(k)]  # fmt: skip
            config = TrainConfig(**{**ckpt["train"], **given})
            # the same rule Trainer.load applies, reported here in terms of the flags
            clash += [f"{cli.flag(k)} {now} (it has {saved})" for k, (saved, now) in config.resume_conflicts(ckpt["train"]).items()]
            if clash:
                raise cli.CliError(f"{out} cannot be resumed with {', '.join(clash)}; leave these flags out to keep its settings")
            diffusion = process_from_config(saved_diffusion)
        else:
            model_config = {**profile.model, "num_classes": args.num_classes}
            if ae is not None:
                model_config = (text_unet_config if text else latent_unet_config)(model_config, ae)
            if args.prediction == "velocity":
                not_flow = [cli.flag(k) for k in DIFFUSION_FLAGS if getattr(args, k) is not None]
                if not_flow:
                    raise cli.CliError(f"{', '.join(not_flow)}: a flow-matching model (--prediction velocity) has no noise schedule or loss weighting")
                diffusion = FlowMatching(args.time_sampling or "uniform")
                given.setdefault("timesteps", "uniform")  # the flow draws t by its own time sampling
            elif args.time_sampling is not None:
                raise cli.CliError("--time-sampling sets a flow-matching model's t; train one with --prediction velocity")
            else:
                given_model = {k: getattr(args, k) for k in ("prediction", *DIFFUSION_FLAGS) if getattr(args, k) is not None}
                diffusion = profile.diffusion(**given_model)
            config = TrainConfig.from_profile(profile, **given)
        seed_everything(config.seed)  # the same on every process: they draw the same global-batch noise
        model = TextUNet.around(clip.text, tokenizer, **model_config) if text and not args.resume else build_model(model_config)
        world.local_batch(config.batch_size)
        world.init(device)
        if not world.main:
            world.barrier()  # rank 0 prepares the data folder first (extracting, downloading)
        dataset = profile_dataset(profile)
        if ae is not None:
            latents = encode_dataset(ae, dataset, progress=not args.no_progress and world.main)
            dataset = latents if not text else LatentDataset(latents.latents, tokenizer.encode(captions.captions(*dataset.tensors())))
        if world.main:
            world.barrier()
        evaluator = lazy_evaluator(profile, diffusion, device, args.fid_features, world) if config.eval_every else None
        trainer = Trainer(
            model, diffusion, dataset, config, device, out_dir=out.parent.parent / "logs" / out.stem,
            evaluator=evaluator, progress=not args.no_progress, num_workers=args.workers, world=world,
            extra=(text_records(ae, args.autoencoder, args.clip, fingerprint(clip.text), captions.state()) if text
                   else {"autoencoder": autoencoder_record(ae, args.autoencoder)}) if ae is not None else None,
        )  # fmt: skip
        if args.resume:
            cli.resume(trainer, out, say)
    processes = f", {world.size} processes, {config.batch_size // world.size} images each per step" if world.distributed else ""
    say(f"profile {profile.name} on {describe(device)}{processes}: {sum(p.numel() for p in model.parameters()):,} parameters, {diffusion}")
    if not cli.train_to(trainer, out, config.steps, say, save_every=args.save_every, profile=profile.name):
        return 0
    last = next((r for r in reversed(trainer.history) if "loss" in r), None)
    cli.saved(out, trainer.step, f", loss {last['loss']:.4f}" if last else "", say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
