import dataclasses
from dataclasses import dataclass

import pytest
import torch

import helpers.bench as bench_mod
from helpers.samplers import DDIM
from helpers.bench import bench_sample, bench_train, sampler_overhead
from helpers.device import peak_memory_mb
from helpers.config import PROFILES
from helpers.diffusion import Diffusion
from helpers.solvers import Solver



class ClockedNet(torch.nn.Module):
    """A network whose every call advances a fake clock by 1 s."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.p = clock, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        self.clock[0] += 1.0
        return torch.zeros_like(x)


def test_sampler_overhead_is_the_share_of_time_spent_outside_the_network(monkeypatch):
    # A fake clock instead of a timing assertion: each network call costs 1 s and each sampler
    # step 0.25 s of it, so 10 DDIM steps take 12.5 s of which 2.5 s (20%) are the sampler's.
    clock = [0.0]
    monkeypatch.setattr(bench_mod.time, "perf_counter", lambda: clock[0])

    @dataclass(frozen=True)
    class SlowDDIM(DDIM):  # a sampler whose own work (outside the network) costs 0.25 s a step
        def step(self, *args):
            clock[0] += 0.25
            return super().step(*args)

    r = sampler_overhead(ClockedNet(clock), Diffusion.from_schedule("linear", 20), (2, 1, 16, 16), SlowDDIM(10), torch.device("cpu"))
    assert (r["total_s"], r["forward_s"]) == (12.5, 10.0) and r["overhead"] == pytest.approx(0.2)


def test_quality_benchmark_without_the_reference_library_says_how_to_install_it(monkeypatch, capsys):
    import helpers.reference as reference

    def missing():
        raise RuntimeError(f"the side-by-side benchmark needs lucidrains' library (dev-only): {reference.INSTALL}")

    monkeypatch.setattr(reference, "require_lucidrains", missing)
    assert bench_mod.main(["quality", "--profile", "smoke"]) == 2
    assert "pip install denoising-diffusion-pytorch ema-pytorch" in capsys.readouterr().err


def test_lucidrains_width_matched_to_our_parameter_count():
    pytest.importorskip("denoising_diffusion_pytorch")
    from helpers.reference import lucidrains_params, matched_dim

    dim = matched_dim(1_000_000)
    gaps = {d: abs(lucidrains_params(d) - 1_000_000) for d in (dim - 4, dim, dim + 4) if d >= 4}
    assert min(gaps, key=gaps.get) == dim


def test_bench_train_times_the_trainers_own_step_on_the_profile_recipe(monkeypatch):
    from helpers.training import Trainer

    smoke = PROFILES["smoke"]
    profile = dataclasses.replace(smoke, T=20, train=dataclasses.replace(smoke.train, batch_size=4))
    configs = []
    real_step = Trainer.train_step

    def spy(self, x0, y):
        configs.append(self.config)
        return real_step(self, x0, y)

    ticks = iter(range(100))
    monkeypatch.setattr(Trainer, "train_step", spy)
    monkeypatch.setattr(bench_mod.time, "perf_counter", lambda: float(next(ticks)))  # the timed loop spans 1 s
    rows = bench_train(profile, torch.device("cpu"), steps=2, warmup=1, compile_=False)
    assert [(r["model"], r["mode"], r["precision"]) for r in rows] == [("ours", "eager", "fp32")]
    assert (rows[0]["ms_per_step"], rows[0]["img_per_s"]) == (500.0, 8.0)
    assert len(configs) == 3, "one warm-up step and two timed ones, all through the Trainer"
    recipe = profile.train
    assert (configs[0].lr, configs[0].grad_clip, configs[0].ema_decay) == (recipe.lr, recipe.grad_clip, recipe.ema_decay)


def test_sampler_overhead_of_a_solver_counts_its_network_evaluations(monkeypatch):
    # Each network call costs 1 s and nothing else does: Heun at a budget of 9 makes 9 calls, and
    # the bare forward passes it is compared with must be the same 9.
    clock = [0.0]
    monkeypatch.setattr(bench_mod.time, "perf_counter", lambda: clock[0])

    r = sampler_overhead(ClockedNet(clock), Diffusion.from_schedule("linear", 20), (2, 1, 16, 16), Solver("heun", 9), torch.device("cpu"))
    assert (r["total_s"], r["forward_s"], r["overhead"]) == (9.0, 9.0, 0.0)


def test_bench_sample_runs_ddpm_ddim_and_dpm_solver():
    smoke = PROFILES["smoke"]
    profile = dataclasses.replace(smoke, T=20)
    assert [r["sampler"] for r in bench_sample(profile, torch.device("cpu"), n=2)] == ["DDPM-20", "DDIM-20", "DPM-Solver++(2M)-20"]
    mb, what = peak_memory_mb(torch.device("cpu"))
    assert mb > 0 and what == "process peak RSS"


def test_bench_processes_runs_ddp_at_each_count_and_refuses_what_cannot_run(capsys):
    smoke = PROFILES["smoke"]
    profile = dataclasses.replace(smoke, T=20, train=dataclasses.replace(smoke.train, batch_size=4))
    rows = bench_mod.bench_processes(profile, torch.device("cpu"), "train", [1, 2], steps=1, warmup=0)
    assert [(r["processes"], r["images"]) for r in rows] == [(1, 4), (2, 4)], "the global batch at every count"
    assert rows[1]["speed_up"] == rows[1]["img_per_s"] / rows[0]["img_per_s"]
    with pytest.raises(ValueError, match="does not divide among 3 processes"):
        bench_mod.bench_processes(profile, torch.device("cpu"), "train", [3], steps=1, warmup=0)
    assert bench_mod.main(["sample", "--nproc", "2", "--profile", "smoke"]) == 2
    assert "--nproc takes process counts" in capsys.readouterr().err


def test_bench_gpu_prints_the_step_timings_the_loader_and_a_scored_short_run(monkeypatch, capsys):
    """The GPU owner's one command, end to end on the CPU at smoke scale: features of an untrained
    classifier and no floor, since what is checked is the wiring, not a score."""
    import helpers.evaluation as evaluation_mod
    import helpers.metrics as metrics_mod
    from helpers.classifier import Classifier
    from helpers.metrics import ClassifierFeatures

    monkeypatch.setattr(metrics_mod, "get_features", lambda profile, device, **k: ClassifierFeatures(Classifier(1, 16), "fashion_mnist"))
    monkeypatch.setattr(evaluation_mod, "real_features", lambda features, profile: torch.randn(64, 128, dtype=torch.float64))
    monkeypatch.setattr(evaluation_mod, "real_floor", lambda *a, **k: None)
    argv = ["gpu", "--profile", "smoke", "--device", "cpu", "--steps", "1", "--warmup", "0", "--train-steps", "2", "--fid-n", "16", "--batch-sizes", "4", "8", "--no-compile"]
    assert bench_mod.main(argv) == 0
    out = capsys.readouterr().out
    tables = [[line.split("|")[1:-1] for line in block.splitlines() if line.startswith("|")] for block in out.split("\n\n")]
    steps, loader, run = [t for t in tables if t]
    assert [c.strip() for c in steps[0][:5]] == ["model", "params", "mode", "precision", "batch"]
    assert [r[4].strip() for r in steps[2:]] == ["4", "8"], "one eager fp32 row per batch size on the CPU"
    assert loader[2][2].strip() == "host", "on the CPU the images stay where they are"
    row = dict(zip((c.strip() for c in run[0]), (c.strip() for c in run[2])))
    assert (row["steps"], row["samples"]) == ("2", "16") and float(row["fid"]) > 0
