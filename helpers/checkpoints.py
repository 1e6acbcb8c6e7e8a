"""Checkpoints: atomic save, safe load on any device, and one-sentence errors.

A checkpoint is a dict of plain data and tensors, read back with ``torch.load(weights_only=True)``
(no pickled code runs) and ``map_location`` (a CUDA checkpoint opens on MPS or a CPU):

    format       "diffusion-course/1"
    model        the U-Net's state_dict          model_config   UNet keyword arguments
    diffusion    Diffusion.config()              step           optimiser steps taken
    optimizer, scheduler, ema                    state_dicts (optional)
    train        training settings, incl. p_uncond for conditional models
    history      metrics log rows                rng            random generator states
    profile      name of the profile             extra          anything else (plain data)
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from helpers.diffusion import Diffusion
from helpers.unet import UNet

__all__ = ["FORMAT", "CheckpointError", "atomic_torch_save", "save_checkpoint", "first_line", "damaged", "non_finite", "safe_load", "load_checkpoint", "load_model", "rng_state", "set_rng_state"]

FORMAT = "diffusion-course/1"


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


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` (with the format tag added) to ``path`` atomically."""
    for key in ("model", "model_config", "diffusion", "step"):
        if key not in checkpoint:
            raise ValueError(f"a checkpoint needs the key {key!r}")
    return atomic_torch_save({"format": FORMAT, **checkpoint}, path)


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


def load_checkpoint(
    path: str | Path,
    map_location: torch.device | str = "cpu",
    model_config: dict[str, Any] | None = None,
    prediction: str | None = None,
) -> dict[str, Any]:
    """Read a checkpoint; check it against the model config and prediction type it is meant for.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for a corrupt or
    foreign file, a different model configuration, or a different prediction type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = safe_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this course (no format {FORMAT!r})")
    if model_config is not None:
        diff = _config_diff(ckpt["model_config"], model_config)
        if diff:
            raise CheckpointError(f"{path} holds a model with {diff}; build the model from its model_config instead")
    if prediction is not None and ckpt["diffusion"]["prediction"] != prediction:
        raise CheckpointError(
            f"{path} holds a model trained to predict {ckpt['diffusion']['prediction']}, not {prediction}"
        )
    return ckpt


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    ema: bool = True,
    prediction: str | None = None,
) -> tuple[UNet, Diffusion, dict[str, Any]]:
    """Rebuild (model, diffusion, checkpoint) from a checkpoint, ready to sample.

    The model gets the EMA weights when the checkpoint has them and ``ema`` is true. ``prediction``
    (if given) must match the checkpoint's: a v model is never silently used as an eps model.
    """
    ckpt = load_checkpoint(path, map_location="cpu", prediction=prediction)
    try:
        model = UNet(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        if ema and ckpt.get("ema") is not None:
            state = model.state_dict()
            for name, value in ckpt["ema"]["shadow"].items():
                state[name].copy_(value)
        d = Diffusion.from_config(ckpt["diffusion"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise damaged(path, err) from err
    broken = non_finite(model.state_dict().items())
    if broken:
        raise CheckpointError(f"{path} holds non-finite weights ({len(broken)} tensors, e.g. {broken[0]}): its training diverged")
    return model.to(device).eval(), d, ckpt


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
