"""MPS has no float64: nothing the course runs may put a float64 tensor on the model's device.

The "meta" device stands in for it on a CPU: tensors there have shapes and dtypes but no values,
and a dispatch mode sees every operation, so any float64 tensor that reaches the device, as an
input or an output of any op, is caught where it is made (the schedule tables themselves are
float64 by design and stay on the CPU).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from helpers.consistency import MultistepConsistency
from helpers.device import amp_dtype, channels_last_ok, cpu_generator, needs_grad_scaler, pick_device
from helpers.diffusion import Diffusion
from helpers.samplers import DDIM, DDPM, Guided, ddim_invert, sample
from helpers.solvers import SOLVERS, Denoiser, Solver
from helpers.training import TrainConfig, Trainer
from helpers.unet import UNet

from conftest import SMALL_UNET
from test_training import tiny_dataset

META = torch.device("meta")


class Float64OnDevice(TorchDispatchMode):
    """Records each op that takes or makes a float64 tensor on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(v, torch.Tensor) and v.device.type == "meta" and v.dtype == torch.float64 for v in tree_leaves((args, kwargs, out))):
            self.ops.append(str(func))
        return out


def _watched(fn) -> list[str]:
    with Float64OnDevice() as watch:
        fn()
    return watch.ops


@pytest.mark.parametrize("prediction,weighting", [("eps", "min_snr"), ("v", "snr"), ("x0", "none")])
def test_a_training_step_puts_no_float64_on_the_device(prediction, weighting):
    d = Diffusion.from_schedule("cosine", 100, prediction=prediction, loss_weighting=weighting)
    config = TrainConfig(steps=2, batch_size=8, lr=1e-3, ema_decay=0.9, p_uncond=0.5)
    trainer = Trainer(UNet(**SMALL_UNET, num_classes=10), d, tiny_dataset(), config, device="meta", progress=False)
    x0, y = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    assert _watched(lambda: trainer.train_step(x0, y)) == []


SAMPLERS = [DDPM(), DDPM("fixed_large"), DDIM(10), DDIM(10, eta=1.0), DDIM(10, clip_x0=False)]
SOLVER_NAMES = list(SOLVERS)  # PC decides its corrector step on the device too


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_sampling_puts_no_float64_on_the_device(prediction):
    d = Diffusion.from_schedule("linear", 20, prediction=prediction)
    model = UNet(**SMALL_UNET, num_classes=10).to(META)
    guided = Guided(model, torch.arange(4), 3.0)
    shape = (4, 1, 16, 16)
    # every sampler for one prediction; the predictions differ only in the conversion to x_0
    samplers = [*SAMPLERS, *(Solver(name, 4) for name in SOLVER_NAMES)] if prediction == "v" else [DDIM(10)]
    for sampler in samplers:
        assert _watched(lambda: sample(guided, d, shape, sampler, cpu_generator(0), progress=False)) == [], sampler
    x0 = torch.zeros(shape, device=META)
    assert _watched(lambda: ddim_invert(guided, d, x0, 5, progress=False)) == []


def test_the_watch_sees_a_float64_tensor_on_the_device():
    """The watch itself: a schedule table moved to the device as float64 is caught."""
    d = Diffusion.from_schedule("linear", 20)
    x = torch.zeros(4, 1, 16, 16, device=META)
    assert _watched(lambda: x * d.alpha_bars.to(META)[3]) != []
    assert _watched(lambda: x * d.alpha_bars.to(torch.float32).to(META)[3]) == []


def test_consistency_sampling_and_a_per_image_denoiser_stay_on_the_device():
    """Meta tensors have no values, so any read back to the host (``.item()``, ``float()``,
    ``.cpu()`` of a result) fails here: multistep consistency sampling and the denoiser with one
    sigma per image (as distillation calls it) run without one, and put no float64 on the device."""
    d = Diffusion.from_schedule("linear", 20)
    model = UNet(**SMALL_UNET).to(META)
    assert _watched(lambda: sample(model, d, (4, 1, 16, 16), MultistepConsistency(3), cpu_generator(0), progress=False)) == []
    sigma = torch.full((4, 1, 1, 1), 2.0, device=META)
    x = torch.zeros(4, 1, 16, 16, device=META)
    with torch.no_grad():
        assert _watched(lambda: Denoiser(model, d)(x, sigma)) == []


@pytest.mark.parametrize("capability,dtype,scaler", [((9, 0), torch.bfloat16, False), ((8, 6), torch.bfloat16, False), ((7, 5), torch.float16, True), ((7, 0), torch.float16, True), ((6, 1), None, False)])
def test_autocast_is_native_bf16_fp16_with_a_scaler_on_7x_and_fp32_before(monkeypatch, capability, dtype, scaler):
    """A T4 (7.5) or V100 (7.0) reports bf16 support through emulation, slower than fp32: they get fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what an emulating GPU says
    assert amp_dtype(torch.device("cuda")) == dtype
    assert needs_grad_scaler(amp_dtype(torch.device("cuda"))) is scaler


def test_no_autocast_and_no_channels_last_where_they_do_not_pay():
    assert amp_dtype(torch.device("cpu")) is None and amp_dtype(torch.device("mps")) is None
    assert not channels_last_ok(torch.device("mps")) and channels_last_ok(torch.device("cuda")) and channels_last_ok(torch.device("cpu"))


def test_a_cuda_index_beyond_the_machine_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'cuda:2' was asked for, but this machine has 2 CUDA GPU"):
        pick_device("cuda:2")
