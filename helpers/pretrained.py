"""The laptop profile's trained models, shipped in ``pretrained/`` so that a reader on a slow
machine can run the later notebooks (and ``python -m helpers.sample``) without training first.

Each model is a small checkpoint in the course's format (the EMA weights as ``model``, no
optimiser state; loads with ``weights_only=True``) beside a JSON card: what it is, the recipe,
steps, minutes and machine it took, and its FID with the real-data floor. Notebooks ask for
their inputs through ``helpers.checkpoints.require``, which falls back to these under the laptop
profile only; smoke runs always train their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.checkpoints import load_model, save_checkpoint
from helpers.config import PROFILES

__all__ = ["export", "measure"]


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
    model at ``path`` (its ``fid_samples`` DDIM samples from a fixed seed, or one-step samples for a
    consistency model; classifier features) with the real-data floor; for a conditional model also
    the classifier's accuracy on the asked-for classes at ``guidance_scale``."""
    from helpers.classifier import classifier_scores, load_or_train_classifier
    from helpers.consistency import MultistepConsistency, consistency_record
    from helpers.evaluation import Evaluator
    from helpers.metrics import get_features

    profile = PROFILES["laptop"]
    model, d, ckpt = load_model(path, device)
    evaluator = Evaluator.for_profile(profile, d, get_features(profile, device, verbose=False))
    record = consistency_record(ckpt)
    sampler = MultistepConsistency(1, record["config"]["sigma_max"]) if record is not None else evaluator.sampler
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
