"""The ``gpu`` profile (issue 35) without a GPU: the default it becomes on CUDA, its model's size and
cost, the course's estimated minutes against its budget, and what makes a GPU run fast and correct
(TF32, cuDNN autotuning, fused Adam, mixed precision, images held on the device and cut a batch at
a time), each checked on the CPU with the CUDA side mocked where it must be."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import helpers.evaluation as evaluation_mod
from helpers.budget import COURSE_MINUTES, GPU_CLASSES, _count, course_work, flops, notebook_minutes
from helpers.config import PROFILES, TrainConfig, get_profile
from helpers.data import ImageDataset, make_loader, on_device
from helpers.device import adam_options, configure_cuda
from helpers.diffusion import Diffusion
from helpers.evaluation import Evaluator
from helpers.runs import Precision
from helpers.unet import UNet

GPU, FULL = PROFILES["gpu"], PROFILES["full"]
NOTEBOOKS = sorted(p.name[:2] for p in (Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))


def test_a_cuda_device_gets_the_gpu_profile_and_full_only_by_name(monkeypatch):
    monkeypatch.delenv("DIFFUSION_PROFILE", raising=False)
    assert get_profile(device=torch.device("cuda")) is GPU
    assert get_profile(device=torch.device("mps")).name == get_profile(device=torch.device("cpu")).name == "laptop"
    assert get_profile("full") is FULL and FULL.train.steps == 800_000  # Ho et al. 2020, appendix B


def test_the_gpu_recipe_is_cifar10_with_flips_in_bf16_compiled_and_channels_last():
    assert (GPU.dataset, GPU.image_size, GPU.channels, GPU.subset) == ("cifar10", 32, 3, None)
    t = GPU.train
    assert t.amp is None and t.compile and t.channels_last, "mixed precision wherever the GPU has it, compiled, channels-last"
    assert 0 < t.warmup_steps < t.steps and t.lr_decay != "none", "a short run warms up and ends at a learning rate of 0"
    averaged_steps = 1 / (1 - t.ema_decay)
    assert 0.02 * t.steps <= averaged_steps <= 0.2 * t.steps, "the EMA averages a few percent of the run (EDM's ramp ratio 0.05)"
    assert GPU.sample.fid_features == "auto" and GPU.sample.fid_samples >= 5_000


def test_the_flop_counter_agrees_with_the_closed_form_of_a_convolution():
    """A k x k convolution from c to o channels on an h x w image: 2 k^2 c o h w FLOPs forward (two per
    multiply-add), and as many again for its weight's gradient when the input needs none."""
    with torch.device("meta"):
        conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    closed = 2 * 3 * 3 * 3 * 8 * 16 * 16
    with torch.device("meta"):
        assert _count(conv, lambda: (torch.empty(1, 3, 16, 16),), train=False) == closed
        assert _count(conv, lambda: (torch.empty(1, 3, 16, 16),), train=True) == 2 * closed


def test_the_gpu_unet_costs_the_square_of_its_width_in_parameters_and_flops():
    """Convolutions, which hold nearly all of both, scale with the product of their input and output
    widths: at 96/128 of DDPM's width the gpu U-Net has (3/4)^2 of its parameters and training FLOPs."""
    with torch.device("meta"):
        params = {p.name: sum(q.numel() for q in UNet(**p.model).parameters()) for p in (GPU, FULL)}
    square = (GPU.unet["ch"] / FULL.unet["ch"]) ** 2
    assert GPU.unet | {"ch": FULL.unet["ch"], "dropout": FULL.unet["dropout"]} == FULL.unet, "the same layout otherwise"
    assert abs(params["gpu"] / params["full"] - square) < 0.01
    assert abs(flops(GPU, "pixel", True) / flops(FULL, "pixel", True) - square) < 0.01
    assert 2.9 < flops(GPU, "pixel", True) / flops(GPU, "pixel", False) < 3.1, "a backward pass costs about two forward passes"


def test_every_notebook_has_an_estimate_and_the_course_fits_its_budget_on_an_a100():
    minutes = notebook_minutes(GPU, GPU_CLASSES["A100"].low)
    assert sorted(minutes) == NOTEBOOKS
    assert sum(minutes.values()) <= COURSE_MINUTES, f"{sum(minutes.values()):.0f} estimated minutes"
    training = sum(w.images * flops(GPU, w.network, True) for w in course_work(GPU)["03"] if w.train and w.what == "training")
    rate = GPU_CLASSES["A100"].low * flops(FULL, "pixel", True)
    assert 20 <= training / rate / 60 <= 25, "notebook 03's training: 20 to 25 minutes on an A100-class GPU (issue 35)"


def test_a_profile_that_asks_for_more_costs_more():
    longer = dataclasses.replace(GPU, compare_steps=2 * GPU.compare_steps)
    before, after = notebook_minutes(GPU, 1_000), notebook_minutes(longer, 1_000)
    changed = {k for k in before if after[k] > before[k] + 1e-9}
    assert changed == {"07", "08", "12"}, "the notebooks that train models of compare_steps"


def test_tf32_and_cudnn_autotuning_are_set_on_cuda_only():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.benchmark = False
        assert configure_cuda(torch.device("cpu")) == "" and configure_cuda(torch.device("mps")) == ""
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == ("highest", False)
        assert configure_cuda(torch.device("cuda")) != ""
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == ("high", True)
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.benchmark = saved[1]


def test_adam_is_fused_on_cuda_and_torchs_default_elsewhere(monkeypatch):
    assert adam_options(torch.device("cuda")) == {"fused": True}
    assert adam_options(torch.device("cpu")) == adam_options(torch.device("mps")) == {}
    monkeypatch.setenv("DIFFUSION_FUSED_ADAM", "0")
    assert adam_options(torch.device("cuda")) == {}, "the way out where fused Adam refuses a model's gradients"


def test_a_run_saved_with_fused_adam_resumes_with_the_adam_of_its_device(tmp_path):
    """``load_state_dict`` restores the saved param groups whole, ``fused`` included: a CUDA
    checkpoint resumed on the CPU would otherwise step with the fused kernel there."""
    from helpers.training import Trainer

    make = lambda: Trainer(UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4),
                           Diffusion.from_schedule("linear", 10), images(8, flip=False), TrainConfig(steps=1, batch_size=4, lr=1e-3), progress=False)  # fmt: skip
    trainer = make()
    trainer.train_step(*images(4).batch([0, 1, 2, 3]))
    trainer.optimizer.param_groups[0]["fused"] = True  # as a CUDA run saves it
    trainer.save(tmp_path / "run.pt")
    resumed = make()
    resumed.load(tmp_path / "run.pt")
    assert not resumed.optimizer.param_groups[0]["fused"]


@pytest.mark.parametrize("capability,dtype,scaler", [((8, 0), torch.bfloat16, False), ((7, 5), torch.float16, True)])
def test_the_gpu_recipe_trains_in_bf16_on_ampere_and_fp16_with_a_scaler_on_a_t4(monkeypatch, capability, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision = Precision.choose(torch.device("cuda"), GPU.train.amp)
    assert precision.dtype == dtype and (precision.scaler is not None) is scaler


def images(n=64, flip=False):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 10, tuple("abcdefghij"), flip=flip)


def test_a_batch_is_its_items_at_once_and_flips_whole_images():
    plain = images()
    x, y = plain.batch([3, 1, 4])
    assert torch.equal(x, torch.stack([plain[i][0] for i in (3, 1, 4)])) and y.tolist() == [3, 1, 4]
    flipping = images(flip=True)
    torch.manual_seed(0)
    x, _ = flipping.batch(list(range(64)))
    x0, _ = plain.batch(list(range(64)))
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, x0)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, x0)])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48, "each image kept or mirrored, about half mirrored"
    torch.manual_seed(0)
    assert torch.equal(flipping.batch(list(range(64)))[0], x), "the same seed, the same flips"


def test_the_loader_reads_an_image_dataset_a_batch_at_a_time(monkeypatch):
    calls = []
    dataset = images()
    monkeypatch.setattr(ImageDataset, "__getitem__", lambda self, i: calls.append(i))
    real_batch = ImageDataset.batch
    monkeypatch.setattr(ImageDataset, "batch", lambda self, idx: (calls.append(list(idx)), real_batch(self, idx))[1])
    x, y = next(iter(make_loader(dataset, 16, seed=0)))
    assert x.shape == (16, 3, 8, 8) and len(calls) == 1 and len(calls[0]) == 16, "one call for the batch, none per image"
    assert [len(b[0]) for b in make_loader(dataset, 16, shuffle=False)] == [16] * 4


def test_a_run_holds_its_images_on_the_gpu_when_they_fit(monkeypatch):
    moved = []
    monkeypatch.setattr(ImageDataset, "to", lambda self, device: moved.append(device) or "on the gpu")
    dataset = images()  # 12,288 bytes of uint8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * dataset.images.nbytes, 10**12))
    assert on_device(dataset, torch.device("cpu")) is dataset and on_device(dataset, torch.device("mps")) is dataset
    assert on_device(dataset, torch.device("cuda")) == "on the gpu" and moved == [torch.device("cuda")]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * dataset.images.nbytes, 10**12))
    assert on_device(dataset, torch.device("cuda")) is dataset, "more than a quarter of the free memory: left on the host"


def test_a_smaller_evaluation_takes_kid_subsets_it_can_draw(monkeypatch):
    monkeypatch.setattr(evaluation_mod, "real_features", lambda features, profile: torch.zeros(4, 2))
    d = Diffusion.from_schedule("linear", 10)
    make = lambda **kw: Evaluator.for_profile(GPU, d, None, floor=None, **kw)
    assert make().kid_subset_size == GPU.sample.kid_subset_size
    assert make(n=250).kid_subset_size == 250, "notebook 11's search scores 250 samples; the profile's subsets hold 1,000"
    assert make(n=250, kid_subset_size=50).kid_subset_size == 50


def test_notebook_13_runs_a_profile_with_captions():
    for profile in PROFILES.values():
        assert profile.for_captions().dataset == "fashion_mnist"
    assert PROFILES["laptop"].for_captions() is PROFILES["laptop"] and GPU.for_captions() is PROFILES["laptop"]
    with pytest.raises(ValueError, match="names no captions_profile"):
        dataclasses.replace(GPU, captions_profile=None).for_captions()


def test_a_run_copies_its_images_to_the_device_once_not_at_every_train_call(monkeypatch):
    """``bench quality`` and the notebooks call ``train`` many times on one run: each call starts a
    loader, and each would otherwise copy the dataset to the GPU again (154 MB for CIFAR-10)."""
    import helpers.data as data_mod
    from helpers.runs import GuardedRun

    placed = []
    monkeypatch.setattr(data_mod, "on_device", lambda dataset, device: placed.append(dataset) or dataset)
    run, first, second = GuardedRun(), images(), images()
    for dataset in (first, first, second, second):
        next(run.loader(dataset, 16, seed=0))
    assert placed == [first, second]
