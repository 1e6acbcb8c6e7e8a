"""The laptop profile's trained models, shipped in ``pretrained/`` so that a reader on a slow
machine can run the later notebooks (and ``python -m helpers sample``) without training first.

Each model is a small checkpoint in the course's format (the EMA weights as ``model``, no
optimiser state; loads with ``weights_only=True``) beside a JSON card: what it is, the recipe,
steps, minutes and machine it took, and its FID with the real-data floor. Notebooks ask for
their inputs through ``Profile.require`` (``helpers.paths.require``), which falls back to these under the laptop
profile only; smoke runs always train their own.

    python -m helpers pretrained measure pretrained/03_ddpm_eps.pt            # FID/KID/IS now, as JSON
    python -m helpers pretrained measure pretrained/08_cfg.pt --guidance-scale 3 --record   # into its card
    python -m helpers pretrained export artifacts/laptop/checkpoints/03_ddpm_eps.pt --what "..." \
        --made-by 03_training --machine "a 2-core x86_64 CPU" --minutes 33.6   # -> pretrained/03_ddpm_eps.pt + .json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import cli
from helpers.checkpoints import load_checkpoint, load_model, save_checkpoint
from helpers.config import PROFILES
from helpers.paths import card, pretrained_dir

if TYPE_CHECKING:  # the evaluation stack loads only when a model is measured
    from helpers.diffusion import Diffusion
    from helpers.evaluation import Evaluator
    from helpers.flow import FlowMatching
    from helpers.metrics import Features

__all__ = ["REGRESSION_STEPS", "TEXT_PROMPTS", "export", "measure", "measure_text", "regression_evaluator", "main"]

REGRESSION_STEPS = 10  # DDIM steps behind a diffusion model's card (and its regression test)


def regression_evaluator(d: Diffusion | FlowMatching, features: Features, **overrides: Any) -> Evaluator:
    """The laptop Evaluator behind the cards: DDIM with ``REGRESSION_STEPS`` steps at eta = 0
    (deterministic given x_T, whatever eta the notebooks' evaluator uses), ``overrides`` on top."""
    from helpers.evaluation import Evaluator

    return Evaluator.for_profile(PROFILES["laptop"], d, features, **{"steps": REGRESSION_STEPS, "eta": 0.0, **overrides})


def export(checkpoint: str | Path, out: str | Path, info: dict[str, Any]) -> Path:
    """Write ``checkpoint``'s model, with its EMA weights where it has them, as a shipped file
    ``out`` plus its card (``info`` and the step, recipe and process from the checkpoint)."""
    model, _, ckpt = load_model(checkpoint)  # with the EMA weights copied in where there are any
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    slim = {k: ckpt.get(k) for k in ("model_config", "diffusion", "step", "train", "profile", "extra")}  # a distilled model: no train, its record in extra
    out = save_checkpoint(out, {**slim, "model": weights, "ema": None, "history": ckpt.get("history", [])})
    meta = {**info, "step": ckpt["step"], "model_config": ckpt["model_config"], "diffusion": ckpt["diffusion"]}
    meta.update({"train": ckpt["train"]} if ckpt.get("train") else {"distillation": (ckpt.get("extra") or {}).get("consistency")})
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=list) + "\n")
    return out


def measure(path: str | Path, guidance_scale: float | None = None, device: str = "cpu") -> dict[str, Any]:
    """What a card records and the regression tests check: the laptop Evaluator's FID/KID/IS of the
    model at ``path`` (its ``fid_samples`` samples from a fixed seed, classifier features) with the
    real-data floor; for a conditional model also the classifier's accuracy on the asked-for classes
    at ``guidance_scale``. The sampler spends few network evaluations, which keeps the regression
    tests cheap: DDIM with ``REGRESSION_STEPS`` steps at eta = 0 (``regression_evaluator``) for a
    diffusion model, one step for a
    consistency model, flow-Heun with 4 steps (7 evaluations) for a flow model. A text-to-image
    model is measured by ``measure_text`` instead (guidance 3 unless ``guidance_scale``)."""
    from helpers.classifier import classifier_scores, load_or_train_classifier
    from helpers.consistency import MultistepConsistency, consistency_record
    from helpers.flow import FlowHeun
    from helpers.metrics import get_features

    if "text" in load_checkpoint(path)["model_config"]:
        return measure_text(path, 3.0 if guidance_scale is None else guidance_scale, device)
    profile = PROFILES["laptop"]
    model, d, ckpt = load_model(path, device)
    evaluator = regression_evaluator(d, get_features(profile, device, verbose=False))
    record = consistency_record(ckpt)
    if record is not None:
        sampler = MultistepConsistency(1, record["config"]["sigma_max"])
    else:
        sampler = FlowHeun(4) if evaluator.flow else evaluator.sampler
    images, labels = evaluator.images(model, guidance_scale, sampler=sampler)
    q = evaluator.score(images)
    out: dict[str, Any] = {
        "fid": q.fid, "kid": q.kid, "inception_score": q.inception_score, "fid_floor": q.floor.fid,
        "fid_floor_std": q.floor.fid_std, "samples": q.n_fake, "real": q.n_real, "features": q.features,
        "sampler": f"{sampler}, seed {evaluator.seed}",
    }  # fmt: skip
    if labels is not None:
        classifier, _ = load_or_train_classifier(profile, device, progress=False)
        out.update(guidance_scale=evaluator.guidance_scale if guidance_scale is None else guidance_scale,
                   class_accuracy=classifier_scores(classifier, images, labels)["accuracy"])  # fmt: skip
    return out


TEXT_PROMPTS = ("a dark sneaker facing left", "a light plain dress", "a large bag", "a small bag")  # (dark, sneaker), (small, bag) held out
TEXT_SAMPLES = 64  # per prompt


def measure_text(path: str | Path, guidance_scale: float = 3.0, device: str = "cpu") -> dict[str, Any]:
    """What a text-to-image model's card records and its regression test checks: for each of
    ``TEXT_PROMPTS``, ``TEXT_SAMPLES`` samples (DDIM with ``REGRESSION_STEPS`` steps, guidance
    ``guidance_scale``, a fixed seed per prompt), the share that carries every word the prompt asks
    for (the caption maker's measurements, notebook 13) and the share the laptop classifier puts in
    the asked class."""
    import torch

    from helpers.captions import CaptionMaker, read_prompt
    from helpers.classifier import classifier_scores, load_or_train_classifier
    from helpers.device import cpu_generator
    from helpers.latent import draw_images, recorded_autoencoder
    from helpers.samplers import DDIM, TextGuided

    model, d, ckpt = load_model(path, device)
    ae = recorded_autoencoder(ckpt, str(path), device)
    maker = CaptionMaker.from_state(ckpt["extra"]["captions"])
    classifier, _ = load_or_train_classifier(PROFILES["laptop"], device, progress=False)
    sampler, out = DDIM(REGRESSION_STEPS, clip_x0=False), {}
    for k, prompt in enumerate(TEXT_PROMPTS):
        net = TextGuided(model, model.tokenizer.encode([prompt] * TEXT_SAMPLES).to(device), guidance_scale)
        images = draw_images(net, d, ae, TEXT_SAMPLES, sampler, cpu_generator(k))
        labels = torch.full((TEXT_SAMPLES,), read_prompt(prompt)[0])
        out[prompt] = {"all_words": sum(all(o.values()) for o in maker.obeyed(images, [prompt] * TEXT_SAMPLES)) / TEXT_SAMPLES,
                       "class_accuracy": classifier_scores(classifier, images, labels)["accuracy"]}  # fmt: skip
    return {"prompts": out, "samples_per_prompt": TEXT_SAMPLES, "guidance_scale": guidance_scale, "sampler": f"{sampler}, seeds 0..{len(TEXT_PROMPTS) - 1}"}


# ---- python -m helpers pretrained --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("pretrained", common=False)
    actions = p.add_subparsers(dest="action", required=True, metavar="{measure,export}", parser_class=cli.Parser, help="what to do")
    about = "the laptop Evaluator's FID/KID/IS of a model (and a conditional model's class accuracy), or a text model's obedience to four prompts, as JSON"
    m = actions.add_parser("measure", help=about, description=about)
    m.add_argument("checkpoint", type=Path, help="a shipped model (pretrained/*.pt) or a laptop checkpoint")
    m.add_argument("--guidance-scale", type=cli.finite, default=None, help="a conditional model's guidance scale (default: the laptop Evaluator's; 3 for a text model)")
    m.add_argument("--record", action="store_true", help="also write the numbers into the model's card (<name>.json) as its quality")
    cli.add_common(m, profile=False, progress=False)
    about = "write a checkpoint's model (its EMA weights) as a shipped file with its card"
    e = actions.add_parser("export", help=about, description=about)
    e.add_argument("checkpoint", type=Path, help="the checkpoint a notebook or command wrote")
    e.add_argument("--out", type=Path, default=None, help="the shipped file (default: pretrained/<the checkpoint's name>); an existing one is not overwritten")
    e.add_argument("--what", required=True, help="the card's one line on what the model is")
    e.add_argument("--made-by", required=True, help="the notebook that trains it, e.g. 03_training")
    e.add_argument("--machine", required=True, help="the machine it was trained on, e.g. 'a 2-core x86_64 CPU (cloud VM), torch 2.14.1'")
    e.add_argument("--minutes", type=cli.positive_number, required=True, help="the minutes its notebook took on that machine")
    return p


def run(args: argparse.Namespace) -> int:
    """Measure or export as ``args`` say; the exit code. Bad input: CliError."""
    if args.action == "measure":
        device = cli.pick(args)
        with cli.setting_up():
            result = measure(args.checkpoint, args.guidance_scale, str(device))
        print(json.dumps(result, indent=2))
        if args.record:
            path = args.checkpoint.with_suffix(".json")
            with cli.setting_up():
                path.write_text(json.dumps({**card(args.checkpoint), "quality": result}, indent=2, default=list) + "\n")
            print(f"recorded in {path}", file=sys.stderr)
        return 0
    out = cli.check_out(args.out or pretrained_dir() / args.checkpoint.name, resume=None)
    with cli.setting_up():
        written = export(args.checkpoint, out, {"what": args.what, "made_by": args.made_by, "machine": args.machine, "minutes": args.minutes})
    print(f"wrote {written} and {written.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
