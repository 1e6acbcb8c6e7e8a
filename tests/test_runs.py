"""The one guarded run loop (``helpers.runs``) under each of the three runs that use it: the U-Net
``Trainer``, the consistency ``Distiller`` and the ``AutoencoderTrainer``.

Each guard is tested in-process on every run: ``steps`` is the total to reach; the lock refuses a
live second run and takes over a dead one's; SIGINT or SIGTERM (sent to this process from inside
the run, while it loads a batch) finish the step, save, raise KeyboardInterrupt, and the saved run
resumes to exactly the weights of a run never stopped; weights that are not finite are never
saved; checkpoints come every ``save_every`` steps or every ``save_minutes`` (a fake clock); and
with several processes only rank 0 locks and saves, while a signal to any process stops all.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from conftest import SMALL_UNET, random_unet
from helpers.autoencoder import Autoencoder
from helpers.autoencoder_training import AutoencoderTrainer
from helpers.checkpoints import load_checkpoint, read_checkpoint
from helpers.config import AutoencoderConfig, DistilConfig, TrainConfig
from helpers.data import ImageDataset
from helpers.diffusion import Diffusion
from helpers.distillation import Distiller
from helpers.runs import GuardedRun, RunLockedError, deferred_interrupts
from helpers.training import Trainer
from helpers.unet import UNet

NO_SUCH_PROCESS = 2**22 + 1  # above Linux's largest pid_max (and macOS's 99999): never a live process


class Probe(Dataset):
    """Images in [-1, 1] (16 x 16, no flips) that call ``hook(i)`` at the i-th item they hand out:
    the run under test sees an ordinary dataset, and the test acts between its steps."""

    def __init__(self, n: int = 64, hook: Callable[[int], None] | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = ImageDataset(torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8), torch.arange(n) % 10, tuple("0123456789"))
        self.hook, self.calls = hook, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        return self.data[i]


BATCH = 8


def make(kind: str, data: Dataset | None = None, init: int = 0, **settings: Any) -> GuardedRun:
    """A small run of ``kind`` (initial weights from seed ``init``), logging every step, ``steps`` = 6."""
    data = Probe() if data is None else data
    torch.manual_seed(init)
    if kind == "unet":
        config = TrainConfig(**{"steps": 6, "batch_size": BATCH, "lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9, "log_every": 1, **settings})
        return Trainer(UNet(**{**SMALL_UNET, "dropout": 0.1}), Diffusion.from_schedule("linear", 100), data, config, progress=False)
    if kind == "consistency":
        config = DistilConfig(**{"steps": 6, "batch_size": BATCH, "lr": 1e-3, "n_levels": 6, "log_every": 1, **settings})
        return Distiller(random_unet(), Diffusion.from_schedule("linear", 100), data, config, teacher_path="teacher.pt", progress=False)
    config = AutoencoderConfig(**{"steps": 6, "batch_size": BATCH, "lr": 2e-3, "log_every": 1, "ch": 16, **settings})
    return AutoencoderTrainer(Autoencoder(**config.model_config(16, 1)), data, config, progress=False)


RUNS = ["unet", "consistency", "autoencoder"]
LOSS = {"unet": "loss", "consistency": "loss", "autoencoder": "l1"}


def weights(run: GuardedRun) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", RUNS)
def test_steps_is_the_total_to_reach(kind):
    run = make(kind)
    assert run.train(3).step == 3 and len(run.history) == 3
    before = weights(run)
    assert run.train(2).step == 3 and run.train(3).step == 3, "a total already reached: nothing to do"
    assert len(run.history) == 3 and same_weights(before, weights(run))
    assert run.train(4).step == 4
    assert run.train().step == run.config.steps == 6, "by default, the config's total"


@pytest.mark.parametrize("kind", RUNS)
def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(kind, tmp_path):
    path, lock = tmp_path / "run.pt", tmp_path / "run.pt.lock"
    seen: list[str] = []
    run = make(kind, Probe(hook=lambda i: seen.append(lock.read_text()) if i == 1 else None))
    lock.write_text(str(os.getppid()))  # a live process, not this one
    with pytest.raises(RunLockedError, match=f"is being trained by process {os.getppid()}"):
        run.train(2, save_to=path)
    assert run.step == 0 and not path.exists() and lock.read_text() == str(os.getppid()), "nothing trained, the lock untouched"
    lock.write_text(str(NO_SUCH_PROCESS))  # left by a run that was killed
    run.train(2, save_to=path)
    assert seen == [str(os.getpid())], "the run holds the lock while it trains"
    assert not lock.exists() and read_checkpoint(path)["step"] == 2


def stop_at(step: int, sig: signal.Signals) -> Callable[[int], None]:
    """A Probe hook that sends ``sig`` to this process while the run loads the batch of step ``step + 1``."""
    return lambda i: os.kill(os.getpid(), sig) if i == step * BATCH + 1 else None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("kind", RUNS)
def test_a_signal_finishes_the_step_saves_and_the_run_resumes_exactly(kind, sig, tmp_path):
    path = tmp_path / "run.pt"
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN when started in the background
    straight = make(kind).train()
    cut = make(kind, Probe(hook=stop_at(2, sig)))
    with pytest.raises(KeyboardInterrupt, match=rf"{sig.name} after step 3: saved .*run.pt; load it .* to continue exactly"):
        cut.train(save_to=path)
    assert signal.getsignal(signal.SIGINT) is before, "the handlers are back"
    assert not (tmp_path / "run.pt.lock").exists()
    assert read_checkpoint(path)["step"] == cut.step == 3, "the step in flight finished and was saved"
    resumed = make(kind, init=7)  # other initial weights: everything must come from the file
    torch.manual_seed(1234)  # whatever the global generators did meanwhile must not matter
    resumed.load(path)
    resumed.train()
    assert resumed.step == 6 and same_weights(weights(resumed), weights(straight))
    assert [r[LOSS[kind]] for r in resumed.history] == [r[LOSS[kind]] for r in straight.history]


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupts() as received, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert received == [signal.SIGTERM, signal.SIGINT], "recorded, not raised"
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("kind", RUNS)
def test_weights_that_are_not_finite_are_never_saved(kind, tmp_path):
    path = tmp_path / "run.pt"
    holder: list[GuardedRun] = []

    def poison(i: int) -> None:  # while the batch of step 3 loads: a weight becomes NaN
        if i == 2 * BATCH + 1:
            with torch.no_grad():
                next(holder[0].model.parameters()).view(-1)[0] = float("nan")

    run = make(kind, Probe(hook=poison), log_every=100)  # no log row before the end to catch the loss
    holder.append(run)
    with pytest.raises(FloatingPointError, match=f"the weights became non-finite by step 3 .*so {path} was not overwritten"):
        run.train(4, save_to=path, save_every=1)
    saved = read_checkpoint(path)
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run.pt.lock").exists()


def spy_saves(run: GuardedRun) -> list[int]:
    """The steps at which ``run`` saves (its ``save``, wrapped on this one object)."""
    steps: list[int] = []
    real = run.save
    run.save = lambda path, **kw: steps.append(run.step) or real(path, **kw)  # type: ignore[method-assign]
    return steps


@pytest.mark.parametrize("kind", RUNS)
def test_checkpoints_come_every_n_steps_or_every_n_minutes_and_at_the_end(kind, tmp_path):
    by_steps = make(kind)
    saves = spy_saves(by_steps)
    by_steps.train(5, save_to=tmp_path / "a.pt", save_every=2)
    assert saves == [2, 4, 5]
    by_time = make(kind)
    saves = spy_saves(by_time)
    ticks = iter(range(0, 10**6, 6 * 60))  # each look at the clock: six minutes later
    by_time.clock = lambda: next(ticks)
    by_time.train(5, save_to=tmp_path / "b.pt")
    assert saves == [2, 4, 5], "ten minutes after the last save (and at the end)"
    assert load_checkpoint(tmp_path / "b.pt", kind=by_time.kind)["step"] == 5


# ---- several processes -----------------------------------------------------------------------------


class Count(GuardedRun):
    """The smallest run: one weight, steps that count; it records whether its lock file exists."""

    kind, desc = "classifier", "counting"

    def __init__(self, world: Any, path: Path) -> None:
        self.world, self.path, self.model = world, path, torch.nn.Linear(1, 1)
        self.config, self.step, self.locked = TrainConfig(steps=5, batch_size=1, lr=1.0), 0, []

    def begin(self) -> Iterator[Any]:
        return iter(range(10**6))

    def advance(self, batches: Iterator[Any], end: int) -> None:
        next(batches)
        self.step += 1
        self.locked.append(self.path.with_name(self.path.name + ".lock").exists())

    def state_dict(self, **options: Any) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "model_config": {}, "step": self.step}


class TwoProcesses:
    """``World`` as rank ``rank`` of 2 sees it, the other rank being signalled at step ``signal_at``."""

    size, distributed = 2, True

    def __init__(self, rank: int, signal_at: int) -> None:
        self.rank, self.main, self.signal_at, self.barriers, self.run = rank, rank == 0, signal_at, [], None

    def any(self, flag: bool, device: torch.device) -> bool:
        return flag or self.run.step == self.signal_at

    def barrier(self) -> None:
        self.barriers.append(self.run.step)


@pytest.mark.parametrize("rank", [0, 1])
def test_with_several_processes_rank_0_locks_and_saves_and_a_signal_to_another_stops_all(rank, tmp_path):
    world = TwoProcesses(rank, signal_at=3)
    run = Count(world, tmp_path / "run.pt")
    world.run = run
    with pytest.raises(KeyboardInterrupt, match="a signal to another process after step 3"):
        run.train(save_to=tmp_path / "run.pt", save_every=2)
    assert run.step == 3 and world.barriers == [2, 3], "every process waits for each checkpoint"
    if rank == 0:
        assert all(run.locked) and read_checkpoint(tmp_path / "run.pt")["step"] == 3
    else:
        assert not any(run.locked) and not (tmp_path / "run.pt").exists(), "only rank 0 writes"
