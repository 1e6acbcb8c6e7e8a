"""Checkpoints: one format for every model the course trains, atomic save, safe load on any
device, and one-sentence errors.

A checkpoint is a dict of plain data and tensors, read back with ``torch.load(weights_only=True)``
(no pickled code runs) and ``map_location`` (a CUDA checkpoint opens on MPS or a CPU):

    format       "diffusion-course/1"           kind     what it holds (KINDS): unet, consistency,
    model        the network's state_dict                 autoencoder, classifier or clip
    model_config the network's keyword arguments         step     optimiser steps taken
    diffusion    Diffusion.config() (unet, consistency), or FlowMatching.config() for a flow model
    optimizer, scheduler, scaler, ema, target_ema        state_dicts (optional)
    train        the run's settings (TrainConfig, DistilConfig or AutoencoderConfig as a dict)
    history      metrics log rows                rng     random generator states
    profile      name of the profile             extra   anything else (plain data)
    fingerprint  an autoencoder's (helpers.autoencoder)  info     a classifier's accuracy and data
    tokenizer, captions   a CLIP's vocabulary and caption maker (helpers.text, helpers.captions)

``save_checkpoint`` writes it, ``load_checkpoint`` reads it and refuses another kind in one line
("x.pt holds an autoencoder, not a U-Net"). Files of earlier versions still load: the course
format without a kind (a U-Net, or a consistency model when ``extra['consistency']`` is there:
``pretrained/*.pt``), the classifier's ``{config, model, info}`` and the autoencoder's own
format ``diffusion-course-autoencoder/1``.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from helpers.autoencoder import Autoencoder
from helpers.captions import CaptionMaker
from helpers.clip import CLIP
from helpers.diffusion import Diffusion
from helpers.flow import FlowMatching, process_from_config
from helpers.text import Tokenizer
from helpers.text_unet import TextUNet
from helpers.unet import UNet

__all__ = [
    "FORMAT", "KINDS", "DIFFUSION_KINDS", "CheckpointError", "atomic_torch_save", "save_checkpoint", "first_line", "damaged",
    "non_finite", "safe_load", "read_checkpoint", "kind_of", "load_checkpoint", "build_model", "load_model", "save_autoencoder",
    "load_autoencoder", "save_clip", "load_clip", "rng_state", "set_rng_state",
]  # fmt: skip

FORMAT = "diffusion-course/1"
KINDS = {"unet": "a U-Net", "consistency": "a consistency model", "autoencoder": "an autoencoder", "classifier": "a classifier", "clip": "a CLIP"}
DIFFUSION_KINDS = ("unet", "consistency")  # U-Nets under a diffusion process: what load_model and the samplers take
_NEEDS = {"unet": ("model", "model_config", "diffusion", "step"), "consistency": ("model", "model_config", "diffusion", "step"),
          "autoencoder": ("model", "model_config", "step"), "classifier": ("model", "model_config"),
          "clip": ("model", "model_config", "step", "tokenizer", "captions")}  # fmt: skip
_OLD_AUTOENCODER = "diffusion-course-autoencoder/1"  # helpers.autoencoder's own format before the kinds


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this course, or one that does not fit what it is loaded into."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace``
    onto ``path``: a save cut off at any moment (a kill, a power cut, a full disk) leaves the
    previous file whole. Temporary files of an earlier save that was killed are removed first;
    the file gets the permissions of the user's umask, as any other file they write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:  # torch reports a failed write as "unexpected pos ..."
                raise OSError(f"could not write {path} ({first_line(err)[:120]}); is the disk full?") from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder to flush it
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any], kind: str | None = None) -> Path:
    """Write ``checkpoint`` with the format tag and its ``kind`` (default: the one it names, else
    ``kind_of`` it) to ``path`` atomically."""
    kind = kind or checkpoint.get("kind") or kind_of(checkpoint)
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose {', '.join(KINDS)}")
    for key in _NEEDS[kind]:
        if key not in checkpoint:
            raise ValueError(f"a checkpoint of {KINDS[kind]} needs the key {key!r}")
    return atomic_torch_save({**checkpoint, "format": FORMAT, "kind": kind}, path)


def kind_of(checkpoint: dict[str, Any]) -> str:
    """The kind a checkpoint names, or for one written before kinds, what it holds: a consistency
    model if it carries a distillation record, else a U-Net."""
    return checkpoint.get("kind") or ("consistency" if (checkpoint.get("extra") or {}).get("consistency") is not None else "unet")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (torch's run to paragraphs), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def damaged(path: str | Path, err: BaseException) -> CheckpointError:
    """The error for a checkpoint whose contents do not fit the model or process they describe."""
    return CheckpointError(f"{path} is damaged or was written by another version of the course: {first_line(err)}")


def non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or inf (weights of a diverged run)."""
    return [name for name, v in named_tensors if v.is_floating_point() and not torch.isfinite(v).all()]


def safe_load(path: Path, remedy: str = "", map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file it cannot read is a one-line CheckpointError
    that names the file and ends with ``remedy``. (torch's own message may advise
    ``weights_only=False``, which must never be followed for a file one cannot vouch for.)"""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        detail = first_line(err)
        detail = "" if "weights_only" in detail or "Weights only" in detail or not str(err).strip() else f": {detail}"
        raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch checkpoint ({type(err).__name__}{detail}){remedy}") from err


def read_checkpoint(path: str | Path, map_location: torch.device | str = "cpu", remedy: str = "") -> dict[str, Any]:
    """Any checkpoint of the course, in the current layout and with its ``kind`` (the earlier
    layouts of the module docstring are read too). Raises ``FileNotFoundError`` for a missing
    file and ``CheckpointError`` (ending with ``remedy``) for a corrupt or foreign one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = safe_load(path, remedy, map_location)
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        kind = kind_of(ckpt)
        if kind not in KINDS:
            raise CheckpointError(f"{path} holds a {kind!r}, which this version of the course does not know{remedy}")
        return {**ckpt, "kind": kind}
    if isinstance(ckpt, dict) and ckpt.get("format") == _OLD_AUTOENCODER and {"config", "weights"} <= set(ckpt):
        history = ckpt.get("history") or []
        return {"format": FORMAT, "kind": "autoencoder", "model": ckpt["weights"], "model_config": ckpt["config"],
                "fingerprint": ckpt.get("fingerprint"), "history": history, "extra": ckpt.get("extra") or {},
                "step": history[-1]["step"] if history else 0}  # fmt: skip
    if isinstance(ckpt, dict) and "format" not in ckpt and set(ckpt) == {"config", "model", "info"}:  # the classifier's
        return {"format": FORMAT, "kind": "classifier", "model": ckpt["model"], "model_config": ckpt["config"], "info": ckpt["info"]}
    raise CheckpointError(f"{path} is not a checkpoint of this course (no format {FORMAT!r}){remedy}")


def load_checkpoint(
    path: str | Path,
    map_location: torch.device | str = "cpu",
    model_config: dict[str, Any] | None = None,
    prediction: str | None = None,
    kind: str | tuple[str, ...] = DIFFUSION_KINDS,
    remedy: str = "",
) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` (one, or any of several; default: a U-Net or a consistency
    model); check it against the model config and prediction type it is meant for.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for a corrupt or
    foreign file, another kind, a different model configuration, or a different prediction type.
    """
    ckpt = read_checkpoint(path, map_location, remedy)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if ckpt["kind"] not in kinds:
        raise CheckpointError(f"{path} holds {KINDS[ckpt['kind']]}, not {' or '.join(KINDS[k] for k in kinds)}{remedy}")
    missing = [key for key in _NEEDS[ckpt["kind"]] if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is damaged or was written by another version of the course: it has no {missing[0]!r}{remedy}")
    if model_config is not None:
        diff = _config_diff(ckpt["model_config"], model_config)
        if diff:
            raise CheckpointError(f"{path} holds a model with {diff}; build the model from its model_config instead")
    if prediction is not None and ckpt["diffusion"]["prediction"] != prediction:
        raise CheckpointError(
            f"{path} holds a model trained to predict {ckpt['diffusion']['prediction']}, not {prediction}"
        )
    return ckpt


def build_model(model_config: dict[str, Any]) -> UNet | TextUNet:
    """The network a checkpoint's ``model_config`` describes: a U-Net, or a text model (``helpers.text_unet``)
    when it names a text encoder."""
    return TextUNet(**model_config) if "text" in model_config else UNet(**model_config)


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    ema: bool = True,
    prediction: str | None = None,
) -> tuple[UNet | TextUNet, Diffusion | FlowMatching, dict[str, Any]]:
    """Rebuild (model, diffusion, checkpoint) from a checkpoint, ready to sample.

    The model gets the EMA weights when the checkpoint has them and ``ema`` is true. ``prediction``
    (if given) must match the checkpoint's: a v model is never silently used as an eps model.
    """
    ckpt = load_checkpoint(path, map_location="cpu", prediction=prediction, kind=DIFFUSION_KINDS)
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        if ema and ckpt.get("ema") is not None:
            state = model.state_dict()
            for name, value in ckpt["ema"]["shadow"].items():
                state[name].copy_(value)
        if isinstance(model, TextUNet):
            model.check_text()
        d = process_from_config(ckpt["diffusion"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise damaged(path, err) from err
    broken = non_finite(model.state_dict().items())
    if broken:
        raise CheckpointError(f"{path} holds non-finite weights ({len(broken)} tensors, e.g. {broken[0]}): its training diverged")
    return model.to(device).eval(), d, ckpt


def save_autoencoder(path: str | Path, ae: Autoencoder, history: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the autoencoder alone (weights with its scale factor, config, fingerprint, log), as
    a checkpoint of kind "autoencoder" without training state; never weights that are not finite.
    (``helpers.autoencoder_training.AutoencoderTrainer.save`` writes the same kind with the run's state.)"""
    broken = non_finite(ae.state_dict().items())
    if broken:
        raise FloatingPointError(f"the autoencoder's weights are not finite ({broken[0]}), so {path} was not written")
    history = list(history or [])
    return save_checkpoint(path, {"model": ae.state_dict(), "model_config": dict(ae.config), "fingerprint": ae.fingerprint(),
                                  "step": history[-1]["step"] if history else 0, "history": history, "extra": extra or {}}, "autoencoder")  # fmt: skip


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> Autoencoder:
    """The autoencoder of a checkpoint of kind "autoencoder" (a finished or interrupted run, or
    ``save_autoencoder``'s file), in eval mode on ``device``; its weights must match its fingerprint."""
    ckpt = load_checkpoint(path, "cpu", kind="autoencoder")
    try:
        ae = Autoencoder(**ckpt["model_config"])
        ae.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise damaged(path, err) from err
    if ckpt.get("fingerprint") is not None and ae.fingerprint() != ckpt["fingerprint"]:
        raise CheckpointError(f"{path}: its weights do not match its recorded fingerprint (a damaged or edited file)")
    if "scale_step" in ckpt and ckpt["scale_step"] != ckpt["step"]:
        raise CheckpointError(f"{path} stopped at step {ckpt['step']} before its scale factor was measured for those weights; "
                              f"finish its training (python -m helpers autoencoder --resume) first")  # fmt: skip
    broken = non_finite(ae.state_dict().items())
    if broken:
        raise CheckpointError(f"{path} holds non-finite weights ({len(broken)} tensors, e.g. {broken[0]}): its training diverged")
    return ae.to(device).eval()


def save_clip(path: str | Path, clip: CLIP, tokenizer: Tokenizer, captions: CaptionMaker, history: list[dict[str, Any]] | None = None,
              extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write a trained CLIP with what reads and writes its captions (the tokenizer's vocabulary, the
    caption maker's thresholds and held-out pairs): a checkpoint of kind "clip"; never non-finite weights."""
    broken = non_finite(clip.state_dict().items())
    if broken:
        raise FloatingPointError(f"the CLIP's weights are not finite ({broken[0]}), so {path} was not written")
    history = list(history or [])
    return save_checkpoint(path, {"model": clip.state_dict(), "model_config": dict(clip.config), "tokenizer": tokenizer.state(),
                                  "captions": captions.state(), "step": history[-1]["step"] if history else 0, "history": history,
                                  "extra": extra or {}}, "clip")  # fmt: skip


def load_clip(path: str | Path, device: torch.device | str = "cpu") -> tuple[CLIP, Tokenizer, CaptionMaker, dict[str, Any]]:
    """(CLIP in eval mode on ``device``, its tokenizer, its caption maker, the checkpoint) from ``save_clip``'s file."""
    ckpt = load_checkpoint(path, "cpu", kind="clip")
    try:
        clip = CLIP(**ckpt["model_config"])
        clip.load_state_dict(ckpt["model"])
        tokenizer, captions = Tokenizer.from_state(ckpt["tokenizer"]), CaptionMaker.from_state(ckpt["captions"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise damaged(path, err) from err
    return clip.to(device).eval(), tokenizer, captions, ckpt


def rng_state() -> dict[str, Any]:
    """The states of Python's, torch's CPU and (if present) CUDA's global generators."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``rng_state`` (those that exist on this machine)."""
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())


def _as_python_state(state: Any) -> tuple:
    # torch.save keeps tuples, but be tolerant of lists from other writers
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _config_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'ch=64 (not 32), dropout=0.1 (not 0.0)' for keys that differ; '' when they agree."""
    keys = sorted(set(saved) | set(wanted))
    parts = [
        f"{k}={saved.get(k)!r} (not {wanted.get(k)!r})"
        for k in keys
        if _plain(saved.get(k)) != _plain(wanted.get(k))
    ]
    return ", ".join(parts)


def _plain(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v
