"""Where things live: the checkout, the artifacts and data folders, every checkpoint file the course
writes (one registry of names), and the shipped models in ``pretrained/``.

A leaf module (it imports nothing from ``helpers``), so that any layer can ask where a file is.

    artifacts/<profile>/checkpoints/<file>     what a notebook or command saves (``checkpoint``)
    pretrained/<file> + <file stem>.json       the laptop profile's shipped stand-ins and their cards
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointName",
    "CHECKPOINTS",
    "checkpoint_file",
    "repo_root",
    "portable_path",
    "artifacts_root",
    "data_root",
    "checkpoint",
    "pretrained_dir",
    "shipped_for",
    "card",
    "require",
]


@dataclass(frozen=True)
class CheckpointName:
    """One file the course writes: its name under ``artifacts/<profile>/checkpoints/`` and the
    notebook or command that makes it (what a reader is told to run when it is missing)."""

    file: str
    made_by: str


# every checkpoint file of the course, by what it holds; code asks for ``CHECKPOINTS[key].file``
CHECKPOINTS: dict[str, CheckpointName] = {
    "unet_config": CheckpointName("02_unet_config.json", "notebook 02_unet"),
    "eps": CheckpointName("03_ddpm_eps.pt", "notebook 03_training"),
    "ema": CheckpointName("06_ddpm_ema.pt", "notebook 06_ema_fid"),
    "v": CheckpointName("07_v.pt", "notebook 07_v_prediction"),
    "x0": CheckpointName("train_x0.pt", "python -m helpers train --prediction x0"),
    "cfg": CheckpointName("08_cfg.pt", "notebook 08_classifier_free_guidance"),
    "velocity": CheckpointName("12_flow.pt", "notebook 12_flow_matching"),
    "autoencoder": CheckpointName("10_autoencoder.pt", "notebook 10_latent_diffusion"),
    "latent": CheckpointName("10_latent.pt", "notebook 10_latent_diffusion"),
    "consistency": CheckpointName("11_cd.pt", "notebook 11_consistency"),
    "clip": CheckpointName("13_clip.pt", "notebook 13_text_to_image"),
    "text": CheckpointName("13_text.pt", "notebook 13_text_to_image"),
}


def checkpoint_file(key: str) -> str:
    """The file name of the checkpoint ``key`` of ``CHECKPOINTS`` (a clear error for another key)."""
    if key not in CHECKPOINTS:
        raise KeyError(f"no checkpoint named {key!r}; the course writes {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[key].file


def repo_root() -> Path:
    """The checkout this package lives in (it is installed in editable mode)."""
    return Path(__file__).resolve().parents[1]


def portable_path(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (as a checkpoint records the files
    it was made from, so that the record holds on another machine), else as given."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def artifacts_root() -> Path:
    """``$DIFFUSION_ARTIFACTS`` or ``<repo>/artifacts``."""
    return Path(os.environ.get("DIFFUSION_ARTIFACTS") or repo_root() / "artifacts").resolve()


def data_root() -> Path:
    """``$DIFFUSION_DATA`` or ``<repo>/data``: where datasets are found or downloaded to."""
    return Path(os.environ.get("DIFFUSION_DATA") or repo_root() / "data").resolve()


def checkpoint(profile: str, name: str) -> Path:
    """``artifacts/<profile>/checkpoints/<name>``."""
    return artifacts_root() / profile / "checkpoints" / name


def pretrained_dir() -> Path:
    """``<repo>/pretrained``: the laptop profile's trained models, shipped with the course."""
    return repo_root() / "pretrained"


def shipped_for(path: str | Path) -> Path | None:
    """The shipped stand-in for the laptop checkpoint ``path``, or None (another profile, or none shipped)."""
    path = Path(path)
    if path.resolve() != checkpoint("laptop", path.name).resolve():
        return None
    shipped = pretrained_dir() / path.name
    return shipped if shipped.is_file() else None


def card(path: str | Path) -> dict[str, Any]:
    """The JSON card beside a shipped file (``<name>.json``)."""
    return json.loads(Path(path).with_suffix(".json").read_text())


def require(path: str | Path, made_by: str) -> Path:
    """``path`` if it exists; under the laptop profile, else the shipped model in ``pretrained/``
    (saying so in one line); else a FileNotFoundError telling the reader what makes it (``made_by``,
    e.g. "notebook 03_training")."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = shipped_for(path)
    if shipped is None:
        raise FileNotFoundError(f"{path} is missing: run {made_by} first, it saves this file")
    info = card(shipped)
    print(f"{path.name} is not in {path.parent}: using the shipped {shipped.relative_to(shipped.parent.parent)} "
          f"({made_by} makes it in about {info['minutes']:.0f} minutes on {info['machine']})")  # fmt: skip
    return shipped
