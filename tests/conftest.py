"""Shared fixtures: the offline datasets, a throw-away artifacts folder, tiny models.

The tests run torch on one thread, and so do the processes they start, unless ``OMP_NUM_THREADS``
says otherwise. On a 2-core machine shared with another busy process, every parallel torch op
waits at its OpenMP barrier for the thread the scheduler has parked: 20 small convolutions took
630 ms on two threads against 3 ms on one, the unit tests of the samplers, U-Net, diffusion and
solvers 31 s against 11 s, and a command-line training run of test_cli_errors 76 s against 11 s.
On a lightly loaded machine the small tests take the same time either way, and the big ones
(sampling the shipped models) about 1.6x longer on one thread: ``OMP_NUM_THREADS=2 pytest`` on a
machine of your own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.paths import repo_root

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_in_child_processes():
    """The command-line runs the tests start (``python -m helpers ...``) inherit one thread too; the
    notebooks, run after the tests in the same session, keep the machine's default."""
    with pytest.MonkeyPatch.context() as m:
        if "OMP_NUM_THREADS" not in os.environ:
            m.setenv("OMP_NUM_THREADS", "1")
        yield


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
