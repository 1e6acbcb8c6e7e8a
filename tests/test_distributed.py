"""Two processes (gloo, on the CPU) train and evaluate exactly as one does with the same global batch and seed.

The recipe's batch is the global batch: each process takes its half, draws the same global-batch
t, noise and label dropout, and DDP averages the gradients, so the only difference from one
process is the order of float sums in the all-reduce. Tolerance: 1e-6 absolute on every weight
(the steps move them by about 1e-3). Exact only without dropout and random flips (smoke and
laptop): those draw from each process's own share of the stream (``helpers.distributed``).

Evaluation: each process samples its share of the batches and rank 0 scores the gathered
features; batch k gets the same noise in any share, so the features, and the FID, are those of
one process (compared to 1e-6).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

from conftest import random_unet
from helpers.classifier import Classifier
from helpers.consistency import MultistepConsistency
from helpers.data import StepBatchSampler
from helpers.diffusion import Diffusion
from helpers.distributed import ShardedBatches, World, free_port
from helpers.evaluation import Evaluator
from helpers.metrics import ClassifierFeatures, extract
from helpers.samplers import DDPM
from helpers.solvers import Solver
from helpers.timesteps import ImportanceTimesteps
from helpers.training import Trainer

from test_training import make_trainer, tiny_dataset

ATOL = 1e-6
TIMEOUT = timedelta(seconds=120)  # a collective left waiting (processes out of step) fails the test instead of hanging CI


def _join(rank: int, port: int) -> World:
    """Rank ``rank`` of 2 in a gloo group whose collectives give up after TIMEOUT (``World.init``
    then finds the group already there), on one thread as under torchrun: two processes of two
    threads on two cores wait at every op for a thread the scheduler has parked."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=TIMEOUT)
    return World(rank, 2, rank)


def _evaluator(world: World, diffusion: Diffusion, n: int = 12, batch_size: int = 5, **kw) -> Evaluator:
    """An evaluator of 16px images with a small random classifier's features (the same in every
    process) and ``n`` samples in batches of ``batch_size``: 12 in 5, 5, 2, so that the shares of
    two processes differ in size and rank 1 starts after two batches."""
    torch.manual_seed(0)
    features = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    real = extract(features, torch.rand(24, 1, 16, 16) * 2 - 1)
    return Evaluator(diffusion, features, real, n=n, steps=3, batch_size=batch_size, kid_subset_size=4, world=world, **kw)


def _trainer(world: World) -> Trainer:
    """The test_training trainer (conditional v-model, label dropout, EMA, warm-up), without U-Net
    dropout and flips, evaluating at step 4 (raw and EMA weights, guidance scale 2), with t
    importance-sampled (4 bins, out of their warm-up after a step: every process must fold in the
    global batch's losses to keep drawing the t one process would)."""
    evaluator = _evaluator(world, Diffusion.from_schedule("linear", 100, prediction="v"), guidance_scale=2.0)
    trainer = make_trainer(
        steps=4, batch_size=8, log_every=2, unet_dropout=0.0, flip=False, world=world, evaluator=evaluator, eval_every=4, timesteps="importance"
    )
    trainer.importance = ImportanceTimesteps(100, bins=4, warmup=1)
    return trainer


def _two_process_runs(rank: int, port: int, folder: str) -> None:
    """Rank ``rank`` of 2: four steps straight; two steps, saved by rank 0 and resumed; the
    one-process run's step-2 checkpoint resumed for two more; and the evaluations of
    ``_evaluations``. One spawn for all: starting two processes and importing torch, torchvision
    and torchmetrics in each costs 10 to 20 s on a 2-core CPU, more than the work they do."""
    world = _join(rank, port)
    torch.save(_evaluations(world), f"{folder}/evaluations_{rank}.pt")
    straight = _trainer(world).train(4)
    half = _trainer(world).train(2, save_to=f"{folder}/two_at_2.pt", save_every=2)
    assert half.step == 2
    resumed = _trainer(world)
    resumed.load(f"{folder}/two_at_2.pt")
    resumed.train(4)  # to step 4 in total
    from_one = _trainer(world)
    from_one.load(f"{folder}/one_at_2.pt")
    from_one.train(4)
    if world.main:
        for name, t in (("straight", straight), ("resumed", resumed), ("from_one", from_one)):
            torch.save({"model": t.model.state_dict(), "ema": t.ema.state_dict(), "history": t.history}, f"{folder}/two_{name}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            err = (a[k] - b[k]).abs().max().item()
            assert err <= ATOL, f"{what}: {k} differs by {err:.2e}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process runs, and the two-process ones (``_two_process_runs``) in ``folder``."""
    folder = tmp_path_factory.mktemp("ddp")
    one = World()
    single = _trainer(one).train(4)
    half = _trainer(one).train(2, save_to=folder / "one_at_2.pt", save_every=2)
    mp.spawn(_two_process_runs, args=(free_port(), str(folder)), nprocs=2, join=True)
    two = {name: torch.load(folder / f"two_{name}.pt", weights_only=False) for name in ("straight", "resumed", "from_one")}
    return folder, single, half, two


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    _, single, _, two = runs
    _assert_same_weights(two["straight"]["model"], single.model.state_dict(), "2 processes x 4 steps vs 1 process")
    shadow = single.ema.state_dict()
    _assert_same_weights(two["straight"]["ema"]["shadow"], shadow["shadow"], "EMA weights")
    # the log holds the global batch's loss, as one process logs it, and the same evaluation
    assert [r["step"] for r in two["straight"]["history"]] == [r["step"] for r in single.history]
    for a, r in zip(two["straight"]["history"], single.history):
        assert a.keys() == r.keys()
        for k in ("loss", "fid_raw", "fid_ema", "kid_ema", "is_ema"):
            if k in r:
                assert abs(a[k] - r[k]) <= 1e-5 * abs(r[k]), f"step {r['step']}: {k} {a[k]} vs {r[k]}"
    assert any("fid_ema" in r for r in single.history), "the runs evaluate"


@pytest.mark.slow
def test_two_processes_resume_as_they_would_have_continued(runs):
    _, single, _, two = runs
    _assert_same_weights(two["resumed"]["model"], two["straight"]["model"], "2 processes stopped and resumed")
    _assert_same_weights(two["resumed"]["model"], single.model.state_dict(), "2 processes resumed vs 1 process")


@pytest.mark.slow
def test_checkpoints_move_between_one_and_two_processes(runs):
    folder, single, _, two = runs
    _assert_same_weights(two["from_one"]["model"], single.model.state_dict(), "1-process checkpoint continued by 2")
    continued = _trainer(World())
    continued.load(folder / "two_at_2.pt")
    continued.train(4)
    _assert_same_weights(continued.model.state_dict(), single.model.state_dict(), "2-process checkpoint continued by 1")


def test_each_process_takes_its_slice_of_every_global_batch():
    batches = StepBatchSampler(64, 8, seed=3, start=5)
    slices = [ShardedBatches(batches, World(r, 4, r)) for r in range(4)]
    for k, (whole, *parts) in enumerate(zip(batches, *slices)):
        assert sum(parts, []) == whole
        if k == 10:
            break


EVAL_SAMPLERS = {"ddim": None, "ddpm": DDPM(), "euler-a": Solver("euler-a", 3), "pc": Solver("pc", 3), "consistency": MultistepConsistency(2)}


def _evaluations(world: World) -> dict[str, tuple]:
    """(features, logits, row) of a 12-sample evaluation of a random U-Net with each of EVAL_SAMPLERS
    (deterministic and stochastic ones), and of a class-conditional one with guidance; on rank 0."""
    d = Diffusion.from_schedule("linear", 20)
    evaluator, model = _evaluator(world, d), random_unet()
    out = {}
    for name, sampler in EVAL_SAMPLERS.items():
        out[name] = (evaluator.sample_features(model, sampler=sampler), evaluator(model) if sampler is None else None)
    conditional = random_unet(num_classes=10)
    out["guided"] = (evaluator.sample_features(conditional, guidance_scale=3.0, sampler=DDPM()), None)
    return out


@pytest.mark.slow
def test_two_processes_evaluate_as_one(runs):
    """Each process samples its share (rank 0 batches 0-1, rank 1 batch 2, after passing over the
    first two); the gathered features and the row equal one process's, for stochastic samplers too."""
    folder = runs[0]
    single = _evaluations(World())
    first, second = (torch.load(folder / f"evaluations_{r}.pt", weights_only=False) for r in (0, 1))
    for name, ((feats, logits), row) in single.items():
        (feats2, logits2), row2 = first[name]
        assert feats2.shape == feats.shape == (12, 8)
        err = max((feats2 - feats).abs().max().item(), (logits2 - logits).abs().max().item())
        assert err <= ATOL, f"{name}: features differ by {err:.2e}"
        assert second[name][0] is None, "the features are gathered on rank 0 only"
        if row is not None:
            assert row2 == second[name][1], "every process returns rank 0's row"
            assert row2.keys() == row.keys() and abs(row2["fid"] - row["fid"]) <= 1e-6 * row["fid"]


def test_shares_cover_every_batch_once_in_order():
    for count in (0, 1, 5, 12):
        for size in (1, 2, 3, 8):
            shares = [World(r, size, r).share(count) for r in range(size)]
            assert [k for s in shares for k in s] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


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
