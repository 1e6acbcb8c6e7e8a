import dataclasses
import json
import math
import warnings

import pytest
import torch
from torch import nn

from helpers.checkpoints import CheckpointError, load_model
from helpers.data import ImageDataset
from helpers.diffusion import Diffusion
from helpers.runs import Precision
from helpers.train_log import N_BUCKETS, Window
from helpers.training import TrainConfig, Trainer
from helpers.unet import UNet

from conftest import SMALL_UNET


def tiny_dataset(n=64, flip=True):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % 10, tuple(str(i) for i in range(10)), flip=flip)


def make_trainer(seed=0, conditional=True, evaluator=None, out_dir=None, unet_dropout=0.1, flip=True, world=None, **cfg):
    torch.manual_seed(seed)
    model = UNet(**{**SMALL_UNET, "dropout": unet_dropout}, num_classes=10 if conditional else None)
    d = Diffusion.from_schedule("linear", 100, prediction="v")
    config = TrainConfig(**{**dict(steps=8, batch_size=8, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, p_uncond=0.2), **cfg})
    return Trainer(model, d, tiny_dataset(flip=flip), config, progress=False, evaluator=evaluator, out_dir=out_dir, world=world)


def test_resume_is_exact(tmp_path):
    # N steps straight == N/2 steps, save, load into fresh objects, N/2 steps: same losses and weights.
    # Covers dropout, random flips, label dropout, t and noise draws, LR warm-up and EMA.
    straight = make_trainer().train(8)
    first = make_trainer().train(4)
    first.save(tmp_path / "half.pt")
    torch.manual_seed(12345)  # whatever the global RNG did meanwhile must not matter
    resumed = make_trainer(seed=99)  # fresh objects, different initial weights
    resumed.load(tmp_path / "half.pt")
    resumed.train(8)  # to step 8 in total
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name, a in straight.ema.shadow.items():
        assert torch.equal(a, resumed.ema.shadow[name]), name
    assert resumed.step == 8 and resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_the_log_file_holds_exactly_the_runs_rows(tmp_path):
    """A load drops the rows written after the checkpoint; a fresh run drops an earlier run's."""
    def steps_in_file():
        return [json.loads(line)["step"] for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]

    first = make_trainer(out_dir=tmp_path / "logs")
    first.train(2).save(tmp_path / "two.pt")
    first.train(4)
    assert steps_in_file() == [1, 2, 3, 4]
    make_trainer(out_dir=tmp_path / "logs").load(tmp_path / "two.pt")
    assert steps_in_file() == [1, 2]
    make_trainer(out_dir=tmp_path / "logs").train(1)
    assert steps_in_file() == [1]


@pytest.mark.slow
def test_training_lowers_the_loss_and_logs_every_row(tmp_path, data_env):
    from helpers.config import PROFILES
    from helpers.data import profile_dataset

    p = PROFILES["smoke"]
    torch.manual_seed(0)
    trainer = Trainer(
        UNet(**p.model), Diffusion.from_schedule(p.schedule, p.T), profile_dataset(p),
        TrainConfig.from_profile(p, steps=60, sample_every=30, eval_every=0, log_every=10), out_dir=tmp_path, progress=False,
    )  # fmt: skip
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "step_0000999.png").write_bytes(b"an earlier run's grid")
    trainer.train()
    losses = [r["loss"] for r in trainer.history]
    assert losses[-1] < 0.6 * losses[0], losses
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert set(rows[0]) >= {"step", "loss", "loss_smooth", "grad_norm", "lr", "param_norm", "img_per_s", "loss_by_bucket"}
    assert len(rows[0]["loss_by_bucket"]) == N_BUCKETS
    assert [s for s, _ in trainer.grids] == [30, 60]
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step_0000030.png", "step_0000060.png"]
    buckets = trainer.log.bucket_losses()
    # eps is hardest to see at small t (x_t is almost x_0) and easiest at large t (x_t is almost eps)
    assert buckets[0] > buckets[-1]


class Recording(Trainer):
    """A Trainer that keeps what each of its steps returns (per-image losses and their timesteps)."""

    def train_step(self, x0, y):
        out = super().train_step(x0, y)
        self.steps_seen = getattr(self, "steps_seen", []) + [out]
        return out


def test_per_image_losses_fall_into_their_timestep_buckets():
    torch.manual_seed(0)
    d = Diffusion.from_schedule("linear", 100)
    config = TrainConfig(steps=1, batch_size=8, lr=1e-3)
    trainer = Recording(UNet(**SMALL_UNET), d, tiny_dataset(), config, progress=False).train()
    losses = torch.cat([l for l, _, _, _ in trainer.steps_seen]).double()
    t = torch.cat([t for _, t, _, _ in trainer.steps_seen])
    row = trainer.history[-1]["loss_by_bucket"]
    for i in range(N_BUCKETS):  # bucket i: t in [10 i, 10 i + 10) for T = 100
        inside = (t >= 10 * i) & (t < 10 * i + 10)
        assert row[i] == (None if not inside.any() else pytest.approx(float(losses[inside].mean()), rel=1e-6)), i
    assert None in row, "8 timesteps in 10 buckets"
    assert trainer.log.bucket_losses() == row and trainer.log.bucket_losses(since=1) == [None] * N_BUCKETS


def test_label_dropout_respects_p_uncond():
    class Spy(nn.Module):
        num_classes = 10

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.seen = []

        def forward(self, x, t, y):
            self.seen.append(y)
            return x * self.w

    spy = Spy()
    trainer = Trainer(spy, Diffusion.from_schedule("linear", 100), tiny_dataset(flip=False), TrainConfig(steps=1, batch_size=64, lr=1e-3, p_uncond=0.3), progress=False)
    torch.manual_seed(0)
    for _ in range(50):
        trainer.train_step(*next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=64))))
    y = torch.cat(spy.seen)
    rate = (y == 10).float().mean().item()
    # 3,200 labels: standard error of the rate is sqrt(0.3 * 0.7 / 3200) = 0.008; allow 5 of them
    assert abs(rate - 0.3) < 0.04
    kept = y[y != 10]
    assert torch.equal(torch.bincount(kept, minlength=10) > 0, torch.ones(10, dtype=torch.bool))


def test_a_non_finite_loss_stops_training_with_a_clear_message():
    trainer = make_trainer(conditional=False, log_every=2)
    trainer.dataset.images = trainer.dataset.images.clone()
    trainer.dataset.__class__ = type("NaNData", (ImageDataset,), {"batch": lambda self, idx: (torch.full((len(idx), 1, 16, 16), float("nan")), torch.zeros(len(idx), dtype=torch.long))})
    with pytest.raises(FloatingPointError, match="the loss became nan within the 2 steps up to step 2"):
        trainer.train(4)


def test_checkpoint_round_trip_rebuilds_model_and_process_with_ema_weights(tmp_path):
    trainer = make_trainer().train(3)
    trainer.save(tmp_path / "c.pt", profile="test")
    model, d, ckpt = load_model(tmp_path / "c.pt")
    assert d.prediction == "v" and d.T == 100 and ckpt["step"] == 3 and ckpt["profile"] == "test"
    for name, shadow in trainer.ema.shadow.items():
        assert torch.equal(model.state_dict()[name], shadow)
    raw, _, _ = load_model(tmp_path / "c.pt", ema=False)
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), trainer.model.state_dict().values()))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        TrainConfig(steps=1, batch_size=1, lr=1, optimizer="sgd")
    with pytest.raises(ValueError, match="p_uncond must lie in"):
        TrainConfig(steps=1, batch_size=1, lr=1, p_uncond=1.0)
    with pytest.raises(ValueError, match="batch_size 128 exceeds the 64 images"):
        make_trainer(batch_size=128)
    with pytest.raises(ValueError, match="no evaluator"):
        make_trainer(eval_every=5)


def test_evaluations_score_raw_and_ema_weights_into_the_log():
    seen = []

    def evaluator(model):
        seen.append(model.out[-1].weight.detach().clone())
        return {"fid": float(len(seen)), "features": "fake"}

    trainer = make_trainer(conditional=False, evaluator=evaluator, eval_every=2, log_every=2)
    trainer.train(4)
    evals = [r for r in trainer.history if "fid_raw" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert [(r["fid_raw"], r["fid_ema"]) for r in evals] == [(1.0, 2.0), (3.0, 4.0)]
    assert not torch.equal(seen[2], seen[3]), "the EMA evaluation sees the averaged weights"
    assert torch.equal(seen[2], trainer.model.out[-1].weight), "and the raw weights are back afterwards"


def test_resuming_with_different_settings_is_refused_but_switching_ema_on_is_allowed(tmp_path):
    make_trainer(ema_decay=None).train(2).save(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"was trained with batch_size=8 \(not 4\), lr=0.001 \(not 0.01\)"):
        make_trainer(ema_decay=None, batch_size=4, lr=0.01).load(tmp_path / "c.pt")
    resumed = make_trainer(ema_decay=0.9, steps=50, log_every=5)
    resumed.load(tmp_path / "c.pt")
    assert resumed.step == 2 and resumed.ema is not None
    for name, shadow in resumed.ema.shadow.items():
        assert torch.equal(shadow, resumed.model.state_dict()[name]), "the average starts from the loaded weights"


def test_checkpoints_load_to_the_cpu_so_adam_step_counters_stay_there(tmp_path, monkeypatch):
    # On a GPU, Adam's step counters loaded onto the device cost a sync per parameter tensor per step.
    import helpers.runs as runs

    make_trainer().train(2).save(tmp_path / "c.pt")
    seen = []
    real = runs.load_checkpoint
    monkeypatch.setattr(runs, "load_checkpoint", lambda path, map_location, **kw: seen.append(map_location) or real(path, map_location, **kw))
    fresh = make_trainer()
    fresh.load(tmp_path / "c.pt")
    assert seen == ["cpu"]
    assert all(float(s["step"]) == 2 for s in fresh.optimizer.state.values())


@pytest.mark.parametrize("prediction,weighting,timesteps", [("eps", "none", "uniform"), ("v", "min_snr", "importance")])
def test_a_training_step_never_waits_for_the_device(prediction, weighting, timesteps):
    # On the "meta" device any read of a value back to the host (.item(), .cpu(), bool(), a CPU
    # index) raises, so a step that runs there keeps a GPU busy without syncs.
    d = Diffusion.from_schedule("cosine", 100, prediction=prediction, loss_weighting=weighting)
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3, ema_decay=0.9, p_uncond=0.5, timesteps=timesteps)
    trainer = Trainer(UNet(**SMALL_UNET, num_classes=10), d, tiny_dataset(), config, device="meta", progress=False)
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    losses, t, weights, grad_norm = trainer.train_step(x0, y)
    Window(trainer.device).add(losses, t * N_BUCKETS // d.T, weights, grad_norm)
    assert losses.device.type == t.device.type == "meta"


def test_a_shipped_model_is_a_warm_start_from_its_ema_weights(tmp_path, capsys):
    from helpers.pretrained import card, export

    trainer = make_trainer().train(3)
    trainer.save(tmp_path / "full.pt", profile="test")
    slim = export(tmp_path / "full.pt", tmp_path / "slim.pt", {"minutes": 1.0, "machine": "test"})
    assert card(slim)["step"] == 3 and card(slim)["minutes"] == 1.0
    assert slim.stat().st_size < (tmp_path / "full.pt").stat().st_size / 2, "no optimiser state, no second copy of the weights"
    model, _, _ = load_model(slim)
    for name, shadow in trainer.ema.shadow.items():
        assert torch.equal(model.state_dict()[name], shadow), "the shipped weights are the EMA weights"
    warm = make_trainer(seed=1)
    warm.load(slim)
    assert "weights only" in capsys.readouterr().out
    assert warm.step == 3 and all(torch.equal(a, b) for a, b in zip(warm.model.state_dict().values(), model.state_dict().values()))
    assert warm.train(5).step == 5


def test_the_learning_rate_warms_up_linearly_from_the_first_step():
    """Step k of the warm-up runs at lr * k / warmup_steps, then at lr. Adam's first update moves
    every parameter by its learning rate (m / sqrt(v) = sign(g) after bias correction), so the
    first step shows the rate the parameters actually felt, not only the scheduler's number."""
    class Conv(nn.Module):  # every weight gets a gradient at step 1 (the U-Net's last layer starts at zero)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    config = TrainConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=4)
    trainer = Trainer(Conv(), Diffusion.from_schedule("linear", 100), tiny_dataset(), config, progress=False)
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    rates = []
    for _ in range(6):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(x0, y)
        if len(rates) == 1:  # parameters with gradients well above Adam's eps = 1e-8
            params = list(trainer.model.parameters())
            moved = torch.cat([(p.detach() - b)[p.grad.abs() > 1e-5] for p, b in zip(params, before) if p.grad is not None])
            assert moved.numel() == 10 and torch.allclose(moved.abs(), torch.full_like(moved, 0.25e-3), rtol=1e-3)
    assert rates == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3])


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_a_decaying_learning_rate_falls_from_its_peak_to_zero_at_the_last_step(decay):
    """After a 2-step warm-up over 10 steps, f = (k - 2) / 8 runs 0 .. 1: the rate is lr at f = 0,
    lr/2 half way under both shapes, lr (1 + cos(pi/4)) / 2 or lr * 3/4 a quarter of the way, and 0 from
    step 10 on, where a longer train() would otherwise climb back up the cosine. The Trainer's
    optimiser runs at exactly these rates."""
    config = TrainConfig(steps=10, batch_size=8, lr=1e-3, warmup_steps=2, lr_decay=decay)
    quarter = (1 + math.cos(math.pi / 4)) / 2 if decay == "cosine" else 0.75
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: quarter, 6: 0.5, 10: 0.0, 13: 0.0}
    assert {k: config.lr_factor(k) for k in expected} == pytest.approx(expected)
    trainer = Trainer(UNet(**SMALL_UNET), Diffusion.from_schedule("linear", 100), tiny_dataset(), config, progress=False)
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    rates = []
    for _ in range(10):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(x0, y)
    assert rates == pytest.approx([1e-3 * config.lr_factor(k) for k in range(10)])


def test_a_decaying_run_cannot_be_resumed_to_a_different_length():
    """With lr_decay the total steps set the schedule, so they join the settings a resume must keep."""
    config = TrainConfig(steps=10, batch_size=8, lr=1e-3, lr_decay="cosine")
    saved = dataclasses.asdict(config)
    assert config.resume_conflicts(saved) == {}
    assert dataclasses.replace(config, steps=20).resume_conflicts(saved) == {"steps": (10, 20)}
    assert dataclasses.replace(config, lr_decay="none", steps=20).resume_conflicts({**saved, "lr_decay": "none"}) == {}


@pytest.mark.parametrize("clip", [0.01, None])
def test_gradient_clipping_bounds_the_gradient_the_optimiser_sees(clip):
    trainer = make_trainer(conditional=False, grad_clip=clip)
    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    for _ in range(3):
        _, _, _, grad_norm = trainer.train_step(x0, y)
        assert float(grad_norm) > 0.01, "the returned norm is the one before clipping"
        if clip is None:
            assert seen[-1] == pytest.approx(float(grad_norm), rel=1e-5)
        else:
            assert seen[-1] <= clip * (1 + 1e-4)


def test_the_trainer_updates_the_ema_every_k_steps():
    trainer = make_trainer(conditional=False, ema_decay=0.5, ema_update_every=3, steps=20)
    shadows = []
    for k in range(1, 8):
        trainer.train(k)
        shadows.append({k: v.clone() for k, v in trainer.ema.shadow.items()})
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(shadows, shadows[1:])]
    assert changed == [False, True, False, False, True, False], "the average moves at steps 3 and 6 only"
    assert (trainer.ema.step, trainer.ema.num_updates) == (7, 2)


@pytest.mark.parametrize("capability,dtype,scaled", [((7, 5), torch.float16, True), ((8, 0), torch.bfloat16, False), ((9, 0), torch.bfloat16, False), ((6, 1), None, False)])
def test_mixed_precision_follows_the_gpus_compute_capability(monkeypatch, capability, dtype, scaled):
    """bf16 where the GPU has it natively (8.x and later), fp16 with a gradient scaler on 7.x, float32 below."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA GradScaler on a machine without CUDA disables itself, with a warning
        chosen = Precision.choose(torch.device("cuda"), None)
    assert chosen.dtype == dtype and (chosen.scaler is not None) == scaled
    assert Precision.choose(torch.device("cuda"), False).dtype is None, "amp=False: float32 on any GPU"


def test_the_trainer_trains_in_float32_on_the_cpu_and_refuses_mixed_precision_there():
    assert make_trainer().precision == Precision(None, None, "cpu")
    with pytest.raises(ValueError, match="mixed precision was asked for, but cpu has none"):
        make_trainer(amp=True)


def test_float16_steps_scale_the_loss_and_resume_with_the_scaler(tmp_path):
    """The Trainer's fp16 path (its precision as on a 7.x GPU, run on the CPU): the losses it logs are
    float32, the gradient scaler's state is saved, and resuming restores it."""
    def fp16_trainer(seed=0):
        trainer = make_trainer(seed=seed, conditional=False)
        trainer.precision = Precision(torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**8), "cpu")
        return trainer

    trainer = fp16_trainer()
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    losses, _, _, _ = trainer.train_step(x0, y)
    assert losses.dtype == torch.float32
    trainer.train(3)
    trainer.save(tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["scaler"]
    assert saved["scale"] == trainer.precision.scaler.get_scale() and saved["_growth_tracker"] == 3
    resumed = fp16_trainer(seed=1)
    resumed.load(tmp_path / "c.pt")
    assert resumed.precision.scaler.state_dict() == trainer.precision.scaler.state_dict()


def test_a_refused_run_leaves_the_running_ones_log_and_grids_alone(tmp_path):
    """The lock is taken before a fresh run clears the log folder: the live run's files survive."""
    import os

    from helpers.runs import RunLockedError

    logs = tmp_path / "logs"
    (logs / "grids").mkdir(parents=True)
    (logs / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (logs / "grids" / "step_0000001.png").write_bytes(b"the live run's grid")
    (tmp_path / "run.pt.lock").write_text(str(os.getppid()))  # a live process trains into run.pt
    with pytest.raises(RunLockedError):
        make_trainer(out_dir=logs).train(save_to=tmp_path / "run.pt")
    assert (logs / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n' and (logs / "grids" / "step_0000001.png").exists()


def test_importance_sampled_t_resumes_exactly_and_weights_the_step(tmp_path):
    """With timesteps="importance" the sampler's statistics travel in the checkpoint (a resume draws the
    same t as a straight run), and the step descends the weighted loss whose mean the log reports."""
    from helpers.timesteps import ImportanceTimesteps

    def importance_trainer(seed=0):
        trainer = make_trainer(seed=seed, timesteps="importance")
        trainer.importance = ImportanceTimesteps(100, bins=4, warmup=2)  # leaves the warm-up within the test
        return trainer

    straight = importance_trainer()
    steps, train_step = [], straight.train_step
    straight.train_step = lambda x0, y: steps.append(train_step(x0, y)) or steps[-1]
    straight.train(8)
    for row, (losses, _, weights, _) in zip(straight.history, steps):  # a row per step: the weighted mean
        assert row["loss"] == pytest.approx(float((weights * losses).mean()), rel=1e-6)
    assert not torch.allclose(straight.importance.probabilities(), torch.full((4,), 0.25))
    first = importance_trainer().train(4)
    first.save(tmp_path / "half.pt")
    resumed = importance_trainer(seed=99)
    resumed.load(tmp_path / "half.pt")
    resumed.train(8)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert torch.equal(resumed.importance.mean_square, straight.importance.mean_square)
    descended, step = [], straight.precision.step
    straight.precision.step = lambda loss, *args: descended.append(loss.detach()) or step(loss, *args)
    losses, _, weights, _ = straight.train_step(*next(iter(torch.utils.data.DataLoader(straight.dataset, batch_size=8))))
    assert not torch.allclose(weights, torch.ones_like(weights))
    assert torch.allclose(descended[0], (weights * losses).mean())


def test_a_config_refuses_an_unknown_timestep_sampling():
    with pytest.raises(ValueError, match="timesteps"):
        TrainConfig(steps=10, batch_size=8, lr=1e-3, timesteps="lognormal")


def test_a_fine_tune_starts_from_a_decayed_run_that_load_would_refuse_to_extend(tmp_path):
    """``load`` continues a run exactly, so a run whose learning rate decayed to 0 at step 8 cannot be
    extended to 12; ``start_from`` takes its weights and average into a new run at step 0 under its
    own (constant) schedule."""
    decayed = make_trainer(lr_decay="cosine").train(8)
    decayed.save(tmp_path / "decayed.pt")
    assert decayed.scheduler.get_last_lr()[0] == 0.0
    with pytest.raises(CheckpointError, match="steps=8"):
        make_trainer(lr_decay="cosine", steps=12).load(tmp_path / "decayed.pt")
    tune = make_trainer(seed=5, steps=4, warmup_steps=0)
    tune.start_from(tmp_path / "decayed.pt")
    assert tune.step == 0 and tune.history == []
    for (name, a), b in zip(decayed.model.state_dict().items(), tune.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert tune.ema.num_updates == decayed.ema.num_updates
    for name, value in decayed.ema.shadow.items():
        assert torch.equal(tune.ema.shadow[name], value), name
    tune.train()
    assert tune.step == 4 and tune.scheduler.get_last_lr()[0] == tune.config.lr
