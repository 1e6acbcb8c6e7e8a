"""Shared fixtures: the offline datasets, a throw-away artifacts folder, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.paths import repo_root

SMALL_UNET = dict(
    image_size=16, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(8,), dropout=0.0, norm_groups=4,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_artifacts(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Unit tests never write into the checkout's artifacts/ (the notebooks' checkpoints live there)."""
    path = tmp_path_factory.mktemp("artifacts")
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(path))
    return path


@pytest.fixture(autouse=True)
def _seeded_global_rng() -> None:
    """Every test starts from the same global random state, so an unseeded model's initial weights
    do not depend on which tests ran before it (order, ``-k``, a helper that draws)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """``$DIFFUSION_DATA``, else ``../shared/datasets`` beside the checkout: must hold Fashion-MNIST."""
    root = Path(os.environ.get("DIFFUSION_DATA") or repo_root().parent / "shared" / "datasets").resolve()
    raw = root / "FashionMNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte.gz").exists() and not (raw / "train-images-idx3-ubyte").exists():
        pytest.fail(f"Fashion-MNIST is not in {raw}; set DIFFUSION_DATA to the offline datasets folder")
    return root


@pytest.fixture
def data_env(datasets_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DIFFUSION_DATA", str(datasets_root))
    return datasets_root


def random_unet(**overrides) -> torch.nn.Module:
    """A small U-Net whose zero-initialised layers are re-drawn, so its output depends on its input."""
    from helpers.unet import UNet

    torch.manual_seed(0)
    model = UNet(**{**SMALL_UNET, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    return model.eval()


def network_output(d, x_t: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
    """What a network that believes ``x0`` outputs at timestep ``t`` under ``d.prediction``: x0
    itself, or the eps and v that x_t = a x0 + s eps implies (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t))."""
    ab = d.alpha_bars[t]
    a, s = ab.sqrt().to(x_t.dtype), (1 - ab).sqrt().to(x_t.dtype)
    eps = (x_t - a * x0) / s
    return {"x0": x0, "eps": eps, "v": a * eps - s * x0}[d.prediction]
