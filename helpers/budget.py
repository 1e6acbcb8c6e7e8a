"""What the course costs on a GPU, estimated before any GPU has run it: FLOPs counted, throughput published.

Each notebook's work under a profile is listed as ``Work``: so many images through one network,
forward only or forward and backward, from the same profile fields (and the same few constants)
the notebook reads, so that a change of budget in the profile changes the estimate. The list keeps
the terms that matter on a GPU: the training runs, every FID evaluation's sampling and feature
extraction, DDPM's T-step chains, reflow's pairs, an allowance for each compilation; it leaves
out the handful-of-images figures and everything that runs on the CPU (bootstrap intervals, the
2-D toys).

FLOPs per image come from torch's own counter (``torch.utils.flop_counter``, two per multiply-add)
on the meta device: shapes only, no memory and no arithmetic. Minutes then follow from one number
per GPU class, the training throughput of DDPM's 35.7M-parameter U-Net (``full``'s) in images per
second, read as effective FLOP/s: ``img/s x FLOPs per image of that step``. Every network is
assumed to run at that rate, sampling included; a small network usually runs below it and
inference above it, so these are estimates to plan with, to be replaced by ``python -m helpers
bench gpu`` on the machine itself.

    >>> from helpers.budget import GPU_CLASSES, notebook_minutes
    >>> notebook_minutes(PROFILES["gpu"], GPU_CLASSES["A100"].low)   # {"01": ..., "13": ...}: minutes
    python -m helpers bench budget                                   # the same as a table, per GPU class
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import inception_v3

from helpers.autoencoder import Autoencoder
from helpers.classifier import Classifier
from helpers.config import PROFILES, Profile
from helpers.latent import latent_unet_config, text_unet_config
from helpers.unet import UNet

__all__ = ["GpuClass", "GPU_CLASSES", "COURSE_MINUTES", "Work", "flops", "course_work", "notebook_minutes", "budget_table"]

COURSE_MINUTES = 120  # what a reader with one A100-class GPU should need for notebooks 01-13 (issue 35)
CIFAR_TRAIN, TEST_SPLIT = 50_000, 10_000  # CIFAR-10's training split (Krizhevsky 2009); every dataset's test split
INCEPTION_SIDE = 299  # FID's Inception-v3 sees images resized to 299x299
COMPILE_MINUTES = 1.0  # an allowance per torch.compile of a U-Net's training step, not a measurement


@dataclass(frozen=True)
class GpuClass:
    """Training img/s of DDPM's 35.7M U-Net (batch 128) on one GPU: a range ``low``..``high`` and its source."""

    name: str
    low: float
    high: float
    basis: str


# The figures filed with issue 35 (user reports, not measured here); the A100's and the T4's are
# estimates from them, and the first GPU that runs ``bench gpu`` replaces its row with a measurement.
_A100 = (1_250.0, 2_500.0)
GPU_CLASSES: dict[str, GpuClass] = {
    "T4": GpuClass("T4 (fp16)", _A100[0] / 5, _A100[1] / 4, "estimate: a fifth to a quarter of an A100"),
    "V100": GpuClass("V100 (fp32)", 235.0, 235.0, "user report, fp32; the course trains it in fp16 (compute capability 7.0), likely faster"),
    "3080Ti": GpuClass("RTX 3080 Ti (AMP)", 500.0, 500.0, "user report with mixed precision"),
    "4090": GpuClass("RTX 4090 (AMP)", 750.0, 750.0, "user report"),
    "A100": GpuClass("A100 (bf16 + compile)", *_A100, "estimate filed with issue 35 from the reports above and torch.compile's x1.35 in one A100 report"),
}


@dataclass(frozen=True)
class Work:
    """``images`` through ``network`` ("pixel", "latent", "text", "autoencoder", "encoder",
    "decoder", "features", "classifier"), each ``passes`` times, with a backward pass if ``train``;
    or, with ``network`` "compile", ``images`` compilations of ``COMPILE_MINUTES`` each."""

    what: str
    network: str
    images: float
    passes: float = 1
    train: bool = False


def _count(model: nn.Module, inputs: Callable[[], tuple], train: bool) -> float:
    """FLOPs of one image through ``model`` (forward, and backward of the summed output if ``train``), on meta tensors."""
    with FlopCounterMode(display=False) as counter:
        out = model(*inputs())
        out = out[0] if isinstance(out, tuple) else out
        if train:
            out.float().sum().backward()
    return float(counter.get_total_flops())


_COUNTED: dict[tuple[str, str, bool], float] = {}  # by the networks' settings (a repr: they hold dicts)


def flops(profile: Profile, network: str, train: bool) -> float:
    """FLOPs per image of ``network`` (see ``Work``) under ``profile``, forward or forward + backward."""
    networks = (profile.model, profile.autoencoder.model_config(profile.image_size, profile.channels), profile.classifier_width, profile.sample.fid_features)
    key = (repr(networks), network, train)
    if key not in _COUNTED:
        _COUNTED[key] = _network_flops(profile, network, train)
    return _COUNTED[key]


def _network_flops(profile: Profile, network: str, train: bool) -> float:
    image = lambda: (torch.empty(1, profile.channels, profile.image_size, profile.image_size),)
    with torch.device("meta"):
        if network == "features":
            if profile.sample.fid_features == "classifier":
                return flops(profile, "classifier", train)
            net: nn.Module = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
            return _count(net, lambda: (torch.empty(1, 3, INCEPTION_SIDE, INCEPTION_SIDE),), train)
        if network == "classifier":
            return _count(Classifier(profile.channels, profile.image_size, width=profile.classifier_width), image, train)
        ae = Autoencoder(**profile.autoencoder.model_config(profile.image_size, profile.channels))  # the latent's shape, or the network itself
        if network in ("autoencoder", "encoder", "decoder"):
            latent = lambda: (torch.empty(1, *ae.latent_shape),)
            fn = {"autoencoder": (ae, image), "encoder": (lambda x: ae.encode(x).mean, image), "decoder": (ae.decode, latent)}[network]
            return _count(fn[0], fn[1], train)  # type: ignore[arg-type]
        config = {"pixel": profile.model, "latent": latent_unet_config(profile.model, ae), "text": text_unet_config(profile.model, ae)}[network]
        net = UNet(**{**config, "dropout": 0.0})
        shape = (1, config["in_channels"], config["image_size"], config["image_size"])
        return _count(net, lambda: (torch.empty(shape), torch.zeros(1, dtype=torch.long)), train)


def course_work(profile: Profile) -> dict[str, list[Work]]:
    """The GPU work of each notebook under ``profile`` (its dominant terms, as the module docstring says)."""
    s, t = profile.sample, profile.train
    n, steps, b, c = s.fid_samples, s.ddim_steps, t.batch_size, profile.compare_steps
    train_split = profile.subset or (CIFAR_TRAIN if profile.dataset == "cifar10" else 60_000)
    grid = min(36, t.grid_size)
    few = min(16, grid)
    eval_sets = lambda k: Work(f"features of {k} sample sets", "features", k * n, 2)  # score + extract_both: two passes each
    d = profile.distil
    work = {
        "01": [Work("DDIM-50 grid", "pixel", 36, 50)],
        "02": [Work("shape check", "pixel", 16)],
        "03": [Work("training", "pixel", t.steps * b, train=True), Work("demo and resume steps", "pixel", 30 * b, train=True),
               Work("sample grids", "pixel", (t.steps // t.sample_every if t.sample_every else 0) * t.grid_size, t.grid_ddim_steps)],
        "04": [Work("DDPM chains", "pixel", 4 * few + grid, profile.T)],
        "05": [Work("DDIM FID runs (10+20+50, 20+50, leading 10)", "pixel", n, 160), eval_sets(6),
               Work("real features: training and test images", "features", s.fid_real + TEST_SPLIT)],
        "06": [Work("raw and EMA FID runs", "pixel", 2 * n, steps), eval_sets(2), Work("fine-tuning and a fresh run", "pixel", 150 * b, train=True),
               Work("classifier (trained even beside Inception)", "classifier", profile.classifier_epochs * train_split, train=True)],
        "07": [Work("four objectives", "pixel", 4 * c * b, train=True), Work("FID runs", "pixel", 4 * n, min(20, steps)), eval_sets(4)],
        "08": [Work("conditional model and its control", "pixel", 2 * 2 * c * b, train=True),
               Work("guided FID runs (6 settings, 2 NFE a step where guided)", "pixel", n, steps // 2 * 8), eval_sets(6)],
        "09": [Work("DDPM and seven samplers at 10/20/50 NFE", "pixel", min(100, n), profile.T + 554), Work("features", "features", 22 * min(100, n), 2)],
        "10": [Work("autoencoder", "autoencoder", profile.autoencoder.steps * profile.autoencoder.batch_size, train=True),
               Work("encoding the training set", "encoder", train_split + n + 2_000), Work("latent U-Net (03's steps)", "latent", t.steps * b, train=True),
               Work("pixel FID runs (DDIM-50, DPM-10)", "pixel", n, min(50, profile.T) + 10), Work("latent FID runs", "latent", n, min(50, profile.T) + 10),
               Work("decoding", "decoder", 3 * n), eval_sets(5)],
        "11": [Work("distillation: student forward and backward", "pixel", d.steps * d.batch_size, train=True),
               Work("distillation: teacher Heun step and target", "pixel", d.steps * d.batch_size, 3),
               Work("tau search", "pixel", 5 * min(250, n), 2), Work("FID runs (student and teacher)", "pixel", n, 29), eval_sets(8)],
        "12": [Work("flow model (03's steps)", "pixel", t.steps * b, train=True), Work("uniform and logit-normal t", "pixel", 2 * c * b, train=True),
               Work("reflow pairs (flow-Heun, 15 NFE)", "pixel", c * b // 6, 15), Work("reflow training", "pixel", c * b, train=True),
               Work("FID runs (NFE table, reflow)", "pixel", n, 2 * 20 + 89 + 1 + 7), Work("features", "features", 19 * n, 2)],
    }
    if t.compile:  # each Trainer compiles its model once (torch.compile; later ones partly from inductor's cache)
        for key, runs in {"03": 4, "06": 2, "07": 4, "08": 2, "10": 3, "12": 4}.items():
            work[key].append(Work("compiling the model of each Trainer", "compile", runs))
    if profile.dataset == "fashion_mnist":
        work["13"] = [Work("text U-Net (03's steps)", "text", t.steps * b, train=True), Work("encoding the training set", "encoder", train_split),
                      Work("obedience and FID runs (DDIM-20, guided)", "text", 66 * max(4, n // 32) * 7 + 80 * n, 20), eval_sets(3)]
    return work


def _minutes(profile: Profile, work: list[Work], rate: float) -> float:
    """Minutes of ``work`` at ``rate`` effective FLOP/s, with ``COMPILE_MINUTES`` per compilation."""
    compiling = sum(w.images for w in work if w.network == "compile") * COMPILE_MINUTES
    return compiling + sum(w.images * w.passes * flops(profile, w.network, w.train) for w in work if w.network != "compile") / rate / 60


def notebook_minutes(profile: Profile, img_per_s: float) -> dict[str, float]:
    """Estimated minutes of each notebook under ``profile`` on a GPU that trains DDPM's 35.7M U-Net
    at ``img_per_s``. Notebook 13 needs Fashion-MNIST: under a CIFAR-10 profile it runs the profile's
    ``captions_profile`` on the same GPU, and its estimate is that profile's (a lower bound there:
    laptop-sized networks leave a GPU waiting on kernel launches, which FLOPs do not count)."""
    rate = img_per_s * flops(PROFILES["full"], "pixel", True)  # effective FLOP/s
    work = course_work(profile)
    minutes = {k: _minutes(profile, ws, rate) for k, ws in work.items()}
    if "13" not in work:
        captions = profile.for_captions()
        minutes["13"] = _minutes(captions, course_work(captions)["13"], rate)
    return minutes


def budget_table(profile: Profile, classes: dict[str, GpuClass] = GPU_CLASSES) -> str:
    """A markdown table: estimated minutes per notebook and for the course, per GPU class (low..high throughput)."""
    rows = {key: (notebook_minutes(profile, g.high), notebook_minutes(profile, g.low)) for key, g in classes.items()}
    notebooks = list(next(iter(rows.values()))[0])
    one = lambda m: "<1" if m < 0.5 else f"{m:.0f}"
    span = lambda a, b: one(a) if one(a) == one(b) else f"{one(a)}–{one(b)}"
    lines = ["| GPU (35.7M U-Net img/s) | " + " | ".join(notebooks) + " | course |", "|---|" + "---:|" * (len(notebooks) + 1)]
    for key, (fast, slow) in rows.items():
        g = classes[key]
        rate = f"{g.low:,.0f}" if g.low == g.high else f"{g.low:,.0f}–{g.high:,.0f}"
        cells = [span(fast[k], slow[k]) for k in notebooks] + [span(sum(fast.values()), sum(slow.values()))]
        lines.append(f"| {g.name} ({rate}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
