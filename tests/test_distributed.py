"""Two processes (gloo, on the CPU) train exactly as one does with the same global batch and seed.

The recipe's batch is the global batch: each process takes its half, draws the same global-batch
t, noise and label dropout, and DDP averages the gradients, so the only difference from one
process is the order of float sums in the all-reduce. Tolerance: 1e-6 absolute on every weight
(the steps move them by about 1e-3). Exact only without dropout and random flips (smoke and
laptop): those draw from each process's own share of the stream (``helpers.distributed``).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from helpers.distributed import ShardedBatches, World
from helpers.data import StepBatchSampler
from helpers.training import Trainer

from test_training import make_trainer, tiny_dataset

ATOL = 1e-6


def _trainer(world: World) -> Trainer:
    """The test_training trainer (conditional v-model, label dropout, EMA, warm-up), without U-Net dropout and flips."""
    return make_trainer(steps=4, batch_size=8, log_every=2, unet_dropout=0.0, flip=False, world=world)


def _two_process_runs(rank: int, port: int, folder: str) -> None:
    """Rank ``rank`` of 2: four steps straight; two steps, saved by rank 0 and resumed; and the
    one-process run's step-2 checkpoint resumed for two more."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = World(rank, 2, rank)
    straight = _trainer(world).train(4)
    half = _trainer(world).train(2, save_to=f"{folder}/two_at_2.pt", save_every=2)
    assert half.step == 2
    resumed = _trainer(world)
    resumed.load(f"{folder}/two_at_2.pt")
    resumed.train(2)
    from_one = _trainer(world)
    from_one.load(f"{folder}/one_at_2.pt")
    from_one.train(2)
    if world.main:
        for name, t in (("straight", straight), ("resumed", resumed), ("from_one", from_one)):
            torch.save({"model": t.model.state_dict(), "ema": t.ema.state_dict(), "history": t.history}, f"{folder}/two_{name}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            err = (a[k] - b[k]).abs().max().item()
            assert err <= ATOL, f"{what}: {k} differs by {err:.2e}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    one = World()
    single = _trainer(one).train(4)
    half = _trainer(one).train(2, save_to=folder / "one_at_2.pt", save_every=2)
    mp.spawn(_two_process_runs, args=(_free_port(), str(folder)), nprocs=2, join=True)
    two = {name: torch.load(folder / f"two_{name}.pt", weights_only=False) for name in ("straight", "resumed", "from_one")}
    return folder, single, half, two


def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    _, single, _, two = runs
    _assert_same_weights(two["straight"]["model"], single.model.state_dict(), "2 processes x 4 steps vs 1 process")
    shadow = single.ema.state_dict()
    _assert_same_weights(two["straight"]["ema"]["shadow"], shadow["shadow"], "EMA weights")
    # the log holds the global batch's loss, as one process logs it
    losses = [(r["step"], r["loss"]) for r in two["straight"]["history"]]
    assert [s for s, _ in losses] == [r["step"] for r in single.history]
    assert all(abs(a - r["loss"]) <= 1e-5 * r["loss"] for (_, a), r in zip(losses, single.history))


def test_two_processes_resume_as_they_would_have_continued(runs):
    _, single, _, two = runs
    _assert_same_weights(two["resumed"]["model"], two["straight"]["model"], "2 processes stopped and resumed")
    _assert_same_weights(two["resumed"]["model"], single.model.state_dict(), "2 processes resumed vs 1 process")


def test_checkpoints_move_between_one_and_two_processes(runs):
    folder, single, _, two = runs
    _assert_same_weights(two["from_one"]["model"], single.model.state_dict(), "1-process checkpoint continued by 2")
    continued = _trainer(World())
    continued.load(folder / "two_at_2.pt")
    continued.train(2)
    _assert_same_weights(continued.model.state_dict(), single.model.state_dict(), "2-process checkpoint continued by 1")


def test_each_process_takes_its_slice_of_every_global_batch():
    batches = StepBatchSampler(64, 8, seed=3, start=5)
    slices = [ShardedBatches(batches, World(r, 4, r)) for r in range(4)]
    for k, (whole, *parts) in enumerate(zip(batches, *slices)):
        assert sum(parts, []) == whole
        if k == 10:
            break


def test_a_global_batch_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="does not divide among 3 processes"):
        World(0, 3, 0).local_batch(8)
    with pytest.raises(ValueError, match="does not divide among 3 processes"):
        Trainer(torch.nn.Conv2d(1, 1, 1), None, tiny_dataset(), make_trainer().config, world=World(0, 3, 0))


def test_each_process_draws_its_own_dropout_and_flips_and_the_shared_stream_goes_on():
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    draws = []
    for rank in (0, 1):
        with World(rank, 2, rank).own_randomness(3, 7, device=cpu):
            draws.append(torch.rand(5))
        assert torch.equal(torch.random.get_rng_state(), before)  # t and noise stay the same on every rank
    assert not torch.equal(draws[0], draws[1])
    with World(0, 2, 0).own_randomness(3, 7, device=cpu):
        assert torch.equal(torch.rand(5), draws[0])  # a function of (seed, step, rank): a resumed run draws the same
    with World().own_randomness(3, 7, device=cpu):
        single = torch.rand(5)
    torch.manual_seed(0)
    assert torch.equal(single, torch.rand(5))  # one process: the global stream itself, as before
