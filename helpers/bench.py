"""``python -m helpers bench``: training speed, sampling speed, and sample quality at equal minutes.

    python -m helpers bench train [--profile full] [--steps 20] [--reference diffusers]
    python -m helpers bench train --nproc 1 2 [--profile full]     # several processes (DDP)
    python -m helpers bench evaluate --nproc 1 2 [--profile full]  # sharded FID sampling
    python -m helpers bench sample [--profile full] [--n 64]
    python -m helpers bench quality --minutes 10 20 [--fid-n 1000] [--dims 64,matched]
    python -m helpers bench gpu [--reference diffusers]            # the GPU owner's one command (under 8 minutes)
    python -m helpers bench budget [--profile gpu]                 # estimated minutes per notebook per GPU class

``train`` times ``Trainer.train_step`` (the step notebook 03 takes) on the profile's U-Net and
batch size: eager vs ``torch.compile``, float32 vs bf16 (fp16 on compute capability 7.x) autocast where the device has it, and
(with ``--reference diffusers``, if diffusers is installed) diffusers' ``UNet2DModel`` of the
same widths in the same step. With ``--nproc`` it times the same step under DistributedDataParallel
instead, for each process count (``helpers.distributed``: the global batch split among the
processes, gloo on the CPU, one GPU per process with NCCL), and ``evaluate`` times the sharded
FID evaluation (``Evaluator`` with its sampling shared) at each count.
``sample`` times DDPM over all T steps, DDIM-50 and DPM-Solver++(2M) at 20 NFE, and how much of the time is spent outside
the network (the sampler's overhead). ``quality`` trains the profile's recipe (the same profile
object and ``Trainer`` as notebook 03) and lucidrains' denoising-diffusion-pytorch at its own
defaults (``helpers.reference``) for the same wall-clock minutes on the same device and data, then
samples each with its default fast sampler (DDIM) at the same number of network evaluations and
prints FID/KID/IS beside the real-data floor. ``gpu`` is the one command a GPU owner runs
(``bench_gpu``): step timings at batch 128 and 256 (eager fp32 and bf16, compiled bf16; diffusers'
model beside ours with ``--reference diffusers``), the loader's time per batch beside the step's,
and a 3,000-step run of the profile's recipe scored by FID on 5,000 samples, each as a markdown
table for the README. ``budget`` prints ``helpers.budget``'s estimate of every notebook's minutes
per GPU class, without a GPU. ``python -m helpers.bench`` runs the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from helpers import cli
from helpers.config import PROFILES, Profile
from helpers.device import amp_dtype, configure_cuda, cpu_generator, describe, peak_memory_mb, reset_peak_memory, sync
from helpers.diffusion import Diffusion
from helpers.distributed import World, free_port
from helpers.samplers import DDIM, DDPM, Sampler, sample
from helpers.solvers import Solver
from helpers.unet import UNet

if TYPE_CHECKING:  # imported where used: it pulls in torchmetrics and torchvision
    from helpers.evaluation import Evaluator

__all__ = [
    "bench_train", "bench_processes", "bench_sample", "sampler_overhead", "bench_quality",
]  # fmt: skip


def _time(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def _reference_unet(profile: Profile) -> nn.Module:
    """diffusers' UNet2DModel with the profile's widths, blocks and attention levels."""
    from diffusers import UNet2DModel

    m = profile.model
    sides = [m["image_size"] // 2**i for i in range(len(m["ch_mult"]))]
    attn = [s in m["attn_resolutions"] for s in sides]
    return UNet2DModel(
        sample_size=m["image_size"], in_channels=m["in_channels"], out_channels=m["in_channels"],
        block_out_channels=tuple(m["ch"] * k for k in m["ch_mult"]), layers_per_block=m["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=m["norm_groups"], dropout=m["dropout"],
    )  # fmt: skip


class _Diffusers(nn.Module):
    """Calls a diffusers UNet2DModel the way ``Diffusion.loss`` calls ours."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def bench_train(
    profile: Profile, device: torch.device, steps: int = 20, warmup: int = 5, compile_: bool = True, reference: bool = False,
    batch_sizes: list[int] | None = None, compile_fp32: bool = True, compile_reference: bool = True,
) -> list[dict[str, Any]]:
    """Training img/s and peak memory of the profile's model for each variant that runs here, at
    each of ``batch_sizes`` (default: the profile's batch).

    Each variant runs ``Trainer.train_step``, the step notebook 03 and the training CLI take (loss,
    backward, gradient clipping, Adam, warm-up, EMA, label dropout where the model is conditional),
    on one fixed batch: data loading is not timed. Each compiled variant costs a compilation (tens
    of seconds on a GPU): ``compile_fp32=False`` compiles only in mixed precision, where the
    device has it, and ``compile_reference=False`` leaves diffusers' model eager.
    """
    from helpers.training import TrainConfig, Trainer

    d = profile.diffusion()
    mixed = amp_dtype(device)
    precisions = [("fp32", False)] + ([({torch.bfloat16: "bf16", torch.float16: "fp16"}[mixed], True)] if mixed else [])
    models: list[tuple[str, Callable[[], nn.Module]]] = [("ours", lambda: UNet(**profile.model))]
    if reference:
        models.append(("diffusers UNet2DModel", lambda: _Diffusers(_reference_unet(profile))))
    rows = []
    for bs in batch_sizes or [profile.train.batch_size]:
        x0, y = _fixed_batch(profile, bs)
        batch = torch.utils.data.TensorDataset(x0, y)
        x0, y = x0.to(device), y.to(device)  # already where the step needs them: no copy is timed
        for name, build in models:
            compiles = compile_ and (compile_reference or name == "ours")
            for mode in ["eager"] + (["compile"] if compiles else []):
                for precision, amp in precisions:
                    if mode == "compile" and not amp and not compile_fp32 and mixed:
                        continue
                    torch.manual_seed(0)
                    if mode == "compile":
                        torch._dynamo.reset()  # a graph of its own for this shape, not one made dynamic by an earlier batch size
                    config = TrainConfig.from_profile(profile, batch_size=bs, amp=amp, compile=mode == "compile", sample_every=0, eval_every=0)
                    trainer = Trainer(build(), d, batch, config, device, progress=False)
                    reset_peak_memory(device)
                    seconds = _time(lambda: trainer.train_step(x0, y), device, steps, warmup)
                    mem, what = peak_memory_mb(device)
                    params = sum(p.numel() for p in trainer.model.parameters())
                    rows.append({"model": name, "params": params, "mode": mode, "precision": precision, "batch": bs,
                                 "img_per_s": bs / seconds, "ms_per_step": 1000 * seconds, "memory_mb": mem, "memory": what})  # fmt: skip
    return rows


def bench_loader(profile: Profile, device: torch.device, batches: int = 50) -> dict[str, Any]:
    """Milliseconds per training batch from the loader a run uses (``GuardedRun.loader``: the images
    on the GPU when they fit, ``helpers.data.on_device``), the batch waited for on the device."""
    from helpers.data import profile_dataset
    from helpers.runs import GuardedRun

    run = GuardedRun()
    run.device = device
    dataset = profile_dataset(profile)
    it = run.loader(dataset, profile.train.batch_size, profile.seed)
    seconds = _time(lambda: next(it)[0].to(device, non_blocking=True), device, batches, 2)
    where = "GPU" if next(it)[0].device.type == "cuda" else "host"
    return {"batch": profile.train.batch_size, "ms_per_batch": 1000 * seconds, "images_held_on": where}


def bench_gpu(
    profile: Profile, device: torch.device, steps: int = 20, warmup: int = 5, train_steps: int = 3_000, fid_n: int = 5_000,
    batch_sizes: tuple[int, ...] = (128, 256), reference: bool = True, compile_: bool = True,
) -> dict[str, Any]:
    """The GPU owner's one command (issue 35): ``bench_train`` at ``batch_sizes`` (eager in fp32 and
    mixed precision, compiled in mixed precision; diffusers' UNet2DModel of the same widths beside
    ours, eager), ``bench_loader``, then a ``train_steps``-step run of the profile's recipe (its
    learning rate decayed over those steps) and the FID of ``fid_n`` DDIM samples of its EMA weights
    against the real-data floor at the same count (the run's minutes and img/s include its
    compilation). Returns {"steps": rows, "loader": row, "run": row}."""
    from helpers.evaluation import Evaluator
    from helpers.data import profile_dataset
    from helpers.metrics import get_features
    from helpers.training import TrainConfig, Trainer

    rows = bench_train(profile, device, steps, warmup, compile_, reference, list(batch_sizes), compile_fp32=False, compile_reference=False)
    loader = bench_loader(profile, device)
    torch.manual_seed(profile.seed)
    config = TrainConfig.from_profile(profile, steps=train_steps, warmup_steps=min(profile.train.warmup_steps, train_steps // 10),
                                      compile=compile_ and profile.train.compile, sample_every=0, eval_every=0)  # fmt: skip
    d = profile.diffusion()
    torch._dynamo.reset()  # the run compiles for its own batch, as notebook 03's does
    trainer = Trainer(UNet(**profile.model), d, profile_dataset(profile), config, device, progress=True)
    sync(device)
    t0 = time.perf_counter()
    trainer.train()
    sync(device)
    minutes = (time.perf_counter() - t0) / 60
    evaluator = Evaluator.for_profile(profile, d, get_features(profile, device), n=fid_n)
    with trainer.ema.averaged(trainer.model) if trainer.ema is not None else contextlib.nullcontext():
        q = evaluator.score(evaluator.images(trainer.model)[0])
    run = {"steps": train_steps, "batch": config.batch_size, "minutes": minutes, "img_per_s": train_steps * config.batch_size / (60 * minutes),
           "fid": q.fid, "samples": q.n_fake, "sampler": str(evaluator.sampler), "features": q.features,
           "floor": q.floor.fid if q.floor else float("nan"), "floor_std": q.floor.fid_std if q.floor else float("nan")}  # fmt: skip
    return {"steps": rows, "loader": loader, "run": run}


def _fixed_batch(profile: Profile, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [-1, 1] of the profile's shape and n labels, the same in every process (seed 0)."""
    gen = cpu_generator(0)
    x0 = torch.rand(n, profile.channels, profile.image_size, profile.image_size, generator=gen) * 2 - 1
    return x0, torch.randint(0, 10, (n,), generator=gen)


def _process_worker(rank: int, size: int, port: int, what: str, profile: Profile, device_name: str, steps: int, warmup: int, out: str) -> None:
    """Process ``rank`` of ``size`` (torch.multiprocessing): time ``steps`` training steps of the
    global batch, or ``steps`` FID evaluations, after ``warmup``; rank 0 writes the seconds to ``out``."""
    from helpers.training import TrainConfig, Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = World(rank, size, rank)
    device = world.device(torch.device(device_name))
    configure_cuda(device)  # a spawned process starts with torch's defaults
    if device.type == "cpu":  # the cores shared out, as torchrun's one thread per process does on 2 cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    world.init(device)
    torch.manual_seed(0)
    model = UNet(**profile.model)
    if what == "train":
        config = TrainConfig.from_profile(profile, compile=False, sample_every=0, eval_every=0)
        batch = _fixed_batch(profile, config.batch_size)
        trainer = Trainer(model, profile.diffusion(), torch.utils.data.TensorDataset(*batch), config, device, progress=False, world=world)
        x0, y = (world.shard(v).to(device) for v in batch)  # this process's slice of the global batch
        fn: Callable[[], Any] = lambda: trainer.train_step(x0, y)
    else:
        evaluator = _random_evaluator(profile, model.to(device), world)
        fn = lambda: evaluator(model)
    world.barrier()
    seconds = _time(fn, device, steps, warmup)
    world.barrier()
    if world.main:
        torch.save({"seconds": seconds, "threads": torch.get_num_threads()}, out)
    if world.distributed:
        torch.distributed.destroy_process_group()


def _random_evaluator(profile: Profile, model: nn.Module, world: World) -> Evaluator:
    """The profile's Evaluator (sample count, batch, DDIM steps and eta) with the features of an untrained
    classifier: what it costs, not what it scores."""
    from helpers.classifier import Classifier
    from helpers.evaluation import Evaluator
    from helpers.metrics import ClassifierFeatures, extract

    device = next(model.parameters()).device
    features = ClassifierFeatures(Classifier(profile.channels, profile.image_size), profile.dataset).to(device)
    real = extract(features, _fixed_batch(profile, 64)[0])
    s = profile.sample
    return Evaluator(profile.diffusion(), features, real, s.fid_samples, s.ddim_steps, s.batch_size, min(s.kid_subset_size, 64), eta=s.ddim_eta, world=world)


def bench_processes(profile: Profile, device: torch.device, what: str, counts: list[int], steps: int, warmup: int) -> list[dict[str, Any]]:
    """For each process count N: ``what`` = "train": img/s of the global batch through ``Trainer.train_step``
    under DistributedDataParallel (eager, mixed precision where the device has it), each process taking batch/N;
    "evaluate": samples/s of the profile's FID evaluation with the sampling shared. One
    torch.multiprocessing run per count; on the CPU the N processes share the cores."""
    import tempfile

    import torch.multiprocessing as mp

    if device.type == "cuda" and max(counts) > torch.cuda.device_count():
        raise ValueError(f"{max(counts)} processes need as many GPUs; this machine has {torch.cuda.device_count()}")
    if device.type == "mps" and max(counts) > 1:
        raise ValueError("several processes need CUDA GPUs or the CPU; MPS has no DistributedDataParallel backend")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in counts:
            if what == "train":
                World(0, n, 0).local_batch(profile.train.batch_size)  # an error now, not in n processes
            out = f"{folder}/{n}.pt"
            mp.spawn(_process_worker, args=(n, free_port(), what, profile, str(device), steps, warmup, out), nprocs=n, join=True)
            r = torch.load(out)
            images = profile.train.batch_size if what == "train" else profile.sample.fid_samples
            row = {"processes": n, "threads_each": r["threads"] if device.type == "cpu" else "-", "images": images,
                   "img_per_s": images / r["seconds"], "s_per_call": r["seconds"]}  # fmt: skip
            row["speed_up"] = row["img_per_s"] / rows[0]["img_per_s"] if rows else 1.0
            rows.append(row)
    return rows


@torch.no_grad()
def sampler_overhead(
    model: nn.Module, d: Diffusion, shape: tuple[int, ...], sampler: Sampler, device: torch.device, repeats: int = 2
) -> dict[str, float]:
    """Seconds of a full sampling run (``samplers.sample``), of the same number of bare forward passes, and
    the share of the total spent outside the network. Each is the best of ``repeats`` runs after a
    warm-up; a slightly negative share means the overhead is below the timing noise."""
    model.eval()
    calls: list[int] = []

    def counted(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # how many calls a run makes, for any sampler
        calls.append(1)
        return model(x_t, t)

    sample(counted, d, shape, sampler, cpu_generator(0), progress=False, device=device)
    n_calls = len(calls)
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), d.T // 2, device=device, dtype=torch.long)

    def forward_only() -> None:
        for _ in range(n_calls):
            model(x, t)

    def full() -> None:
        sample(model, d, shape, sampler, cpu_generator(0), progress=False)

    forward_only()  # warm-up (kernel selection, caches)
    best = {}
    for name, fn in (("total_s", full), ("forward_s", forward_only)):
        best[name] = min(_time(fn, device, 1, 0) for _ in range(repeats))
    best["overhead"] = 1 - best["forward_s"] / best["total_s"]  # negative: below the timing noise
    return best


def bench_sample(profile: Profile, device: torch.device, n: int = 64) -> list[dict[str, Any]]:
    """Images/s of DDPM (all T steps), DDIM-50 and DPM-Solver++(2M) at 20 NFE with a freshly built model of the profile."""
    d = Diffusion.from_schedule(profile.schedule, profile.T)
    model = UNet(**profile.model).to(device)
    shape = (n, profile.channels, profile.image_size, profile.image_size)
    rows = []
    for sampler in (DDPM(), DDIM(min(50, d.T)), Solver("dpmpp-2m", 20)):
        reset_peak_memory(device)
        r = sampler_overhead(model, d, shape, sampler, device)
        mem, what = peak_memory_mb(device)
        label = f"DDPM-{d.T}" if isinstance(sampler, DDPM) else f"DDIM-{sampler.steps}" if isinstance(sampler, DDIM) else f"DPM-Solver++(2M)-{sampler.spent}"
        rows.append({"sampler": label, "batch": n, "img_per_s": n / r["total_s"], "ms_per_image": 1000 * r["total_s"] / n,
                     "overhead": r["overhead"], "memory_mb": mem, "memory": what})  # fmt: skip
    return rows


def bench_quality(
    profile: Profile, device: torch.device, minutes: list[float], n: int, lucidrains_dims: list[int], nfe: int,
    chunk: int = 10, seed: int = 0,
) -> list[dict[str, Any]]:
    """FID/KID/IS at each of ``minutes`` (training wall-clock) for our recipe and lucidrains' at each dim.

    Each system trains once, for ``max(minutes)``; at every mark the clock stops, its EMA model
    samples ``n`` images with DDIM (eta = 0) in ``nfe`` network evaluations, and they are scored.
    Both libraries keep a constant learning rate after warm-up, so the model at a mark is the model
    a run of exactly that many minutes ends with. Ours samples on the trailing grid, the default (it
    starts at t = T-1, as lucidrains' DDIM grid does).
    """
    from helpers.data import profile_dataset
    from helpers.evaluation import Evaluator
    from helpers.metrics import get_features, real_features, real_floor
    from helpers.reference import LucidrainsRun
    from helpers.training import TrainConfig, Trainer

    features = get_features(profile, device)
    real = real_features(features, profile)
    kid_subset = min(profile.sample.kid_subset_size, n)
    floor = real_floor(features, profile, real, n, kid_subset)
    print(f"real-data floor for {n} images ({features.name} features): {floor}")
    d = profile.diffusion()
    evaluator = Evaluator(d, features, real, n, nfe, profile.sample.batch_size, kid_subset, floor=floor)
    data = profile_dataset(profile)
    marks = sorted(minutes)
    side = profile.image_size

    def ours() -> tuple[int, Callable[[], int], Callable[[], torch.Tensor]]:
        torch.manual_seed(seed)
        trainer = Trainer(UNet(**profile.model), d, data, TrainConfig.from_profile(profile, sample_every=0, eval_every=0), device, progress=False)

        def sample_ema() -> torch.Tensor:
            with trainer.ema.averaged(trainer.model) if trainer.ema is not None else contextlib.nullcontext():
                return evaluator.images(trainer.model)[0]

        return sum(p.numel() for p in trainer.model.parameters()), lambda: trainer.train(trainer.step + chunk).step, sample_ema

    def theirs(dim: int) -> Callable[[], tuple[int, Callable[[], int], Callable[[], torch.Tensor]]]:
        def build() -> tuple[int, Callable[[], int], Callable[[], torch.Tensor]]:
            run = LucidrainsRun(dim, profile.channels, 8 * math.ceil(side / 8), nfe, device, seed)
            x, _ = data.tensors()
            order = torch.Generator().manual_seed(seed)
            steps = 0

            def train_chunk() -> int:
                nonlocal steps
                for _ in range(chunk):
                    run.step(x[torch.randint(len(x), (run.batch_size,), generator=order)])
                    steps += 1
                return steps

            return run.params, train_chunk, lambda: run.sample(n, side, profile.sample.batch_size)

        return build

    systems = [("ours (profile recipe)", ours)] + [(f"lucidrains dim={dim}", theirs(dim)) for dim in lucidrains_dims]
    rows = []
    for name, build in systems:
        params, train_chunk, sample_fn = build()
        print(f"{name}: {params:,} parameters, training for {marks[-1]:g} minutes", flush=True)
        trained, steps = 0.0, 0
        for mark in marks:
            bar_start = time.perf_counter()
            while trained + (time.perf_counter() - bar_start) < 60 * mark:
                steps = train_chunk()
            sync(device)
            trained += time.perf_counter() - bar_start
            t0 = time.perf_counter()
            images = sample_fn()
            sample_s = time.perf_counter() - t0
            q = evaluator.score(images)
            row = {"system": name, "params": params, "minutes": mark, "steps": steps, "ms_per_step": 1000 * trained / steps,
                   "nfe": nfe, "samples_per_s": n / sample_s, "fid": q.fid, "fid_floor": floor.fid,
                   "kid": q.kid, "is": q.inception_score, "is_floor": floor.inception_score}  # fmt: skip
            print(_table([row], list(row)), flush=True)
            rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as a markdown table, its columns padded to line up in a terminal too (README-ready)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(row) for row in cells])


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("bench", "train times the Trainer's step, sample the samplers, evaluate the sharded FID evaluation, and quality our recipe against lucidrains' library.", progress=False)
    p.add_argument("what", choices=("train", "evaluate", "sample", "quality", "gpu", "budget"),
                   help="what to measure (evaluate needs --nproc; gpu: the GPU owner's one command; budget: estimated minutes per notebook per GPU class, no GPU needed)")
    p.add_argument("--steps", type=cli.positive, default=20, help="timed training steps per variant (evaluate: timed evaluations) (default: 20)")
    p.add_argument("--warmup", type=cli.count, default=5, help="untimed steps first, where compilation happens (default: 5)")
    p.add_argument("--batch-size", type=cli.positive, default=None, help="override the profile's training batch size (default: the profile's)")
    p.add_argument("--n", type=cli.positive, default=64, help="images per sampling batch (default: 64)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--reference", choices=("diffusers",), default=None, help="also time diffusers' UNet2DModel of the same widths (needs diffusers)")
    p.add_argument("--nproc", type=cli.positive, nargs="+", default=None, help="train/evaluate: time DDP with each of these process counts (e.g. 1 2); one GPU per process on CUDA")
    g = p.group("gpu")
    g.add_argument("--train-steps", type=cli.positive, default=3_000, help="steps of the profile's recipe to train and score (default: 3000)")
    g.add_argument("--batch-sizes", type=cli.positive, nargs="+", default=[128, 256], help="batch sizes of the step timings (default: 128 256)")
    g = p.group("quality")
    g.add_argument("--minutes", type=cli.positive_number, nargs="+", default=[10.0, 20.0], help="training minutes per system; one run per system, scored at each mark (default: 10 20)")
    g.add_argument("--fid-n", type=cli.positive, default=None, help="generated images per score; the floor uses as many held-out real ones (default: 1000; gpu: 5000)")
    g.add_argument("--dims", default="64,matched", help="lucidrains U-Net widths, comma-separated; 'matched' is the one closest to ours in parameters (default: 64,matched)")
    g.add_argument("--nfe", type=cli.positive, default=None, help="network evaluations (DDIM steps) per sample, the same for every system (default: the profile's ddim_steps)")
    return p


def run(args: argparse.Namespace) -> int:
    """Measure as ``args`` say and print the table; the exit code. Bad input: CliError."""
    if args.what == "budget":  # an estimate for GPUs, made on any machine: the gpu profile unless another is named
        from helpers.budget import GPU_CLASSES, budget_table

        profile = PROFILES[args.profile or "gpu"]
        print(f"estimated minutes per notebook under the {profile.name} profile (helpers.budget: FLOPs per image x images, at the "
              f"training throughput of DDPM's 35.7M U-Net on each GPU)\n{budget_table(profile)}")  # fmt: skip
        print("\n".join(f"- {g.name}: {g.basis}" for g in GPU_CLASSES.values()))
        return 0
    device = cli.pick(args)
    profile = cli.profile_of(args, device)
    if args.nproc is not None or args.what == "evaluate":
        if args.what not in ("train", "evaluate") or args.nproc is None:
            raise cli.CliError("--nproc takes process counts of at least 1, for train or evaluate (evaluate needs it)")
    if args.fid_n is not None and args.fid_n < 10:
        raise cli.CliError(f"--fid-n must be at least 10 (the Inception Score splits the samples in 10), got {args.fid_n}")
    if args.batch_size:
        profile = replace(profile, train=replace(profile.train, batch_size=args.batch_size))
    print(f"{profile.name} profile on {describe(device)}, torch {torch.__version__}, {platform.platform()}")
    if args.what == "gpu":
        reference = args.reference == "diffusers"
        if reference:
            _require_diffusers()
        out = bench_gpu(profile, device, args.steps, args.warmup, args.train_steps, args.fid_n or 5_000, tuple(args.batch_sizes), reference, not args.no_compile)
        print(_table(out["steps"], ["model", "params", "mode", "precision", "batch", "img_per_s", "ms_per_step", "memory_mb"]))
        loader = out["loader"]  # beside the fastest step of ours, per image times the loader's batch
        loader["step_ms_at_this_batch"] = min(r["ms_per_step"] / r["batch"] for r in out["steps"] if r["model"] == "ours") * loader["batch"]
        print(f"\n{_table([loader], list(loader))}")
        print(f"\n{_table([out['run']], list(out['run']))}")
        return 0
    if args.nproc is not None:
        with cli.setting_up():
            rows = bench_processes(profile, device, args.what, args.nproc, args.steps, args.warmup)
        print(_table(rows, list(rows[0])))
    elif args.what == "train":
        if args.reference == "diffusers":
            _require_diffusers()
        rows = bench_train(profile, device, args.steps, args.warmup, not args.no_compile, args.reference == "diffusers")
        print(_table(rows, ["model", "params", "mode", "precision", "batch", "img_per_s", "ms_per_step", "memory_mb", "memory"]))
    elif args.what == "quality":
        from helpers.reference import matched_dim, require_lucidrains

        try:
            require_lucidrains()
        except RuntimeError as err:
            raise cli.CliError(str(err)) from None
        ours = sum(q.numel() for q in UNet(**profile.model).parameters())
        try:
            dims = list(dict.fromkeys(matched_dim(ours, profile.channels) if v == "matched" else int(v) for v in args.dims.split(",")))
        except ValueError:
            raise cli.CliError(f"--dims takes widths and 'matched', comma-separated, got {args.dims!r}") from None
        rows = bench_quality(profile, device, args.minutes, args.fid_n or 1000, dims, args.nfe or profile.sample.ddim_steps)
        print(f"\n{_table(rows, list(rows[0]))}")
    else:
        rows = bench_sample(profile, device, args.n)
        for r in rows:
            r["overhead"] = f"{r['overhead']:+.1%}"
        print(_table(rows, ["sampler", "batch", "img_per_s", "ms_per_image", "overhead", "memory_mb", "memory"]))
    return 0


def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise cli.CliError("--reference diffusers needs diffusers: pip install diffusers") from None


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
