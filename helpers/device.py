"""Which device to run on, and randomness that is reproducible across devices.

Device order: CUDA, then Apple MPS, then the CPU; the environment variable ``DIFFUSION_DEVICE``
("cuda", "cuda:1", "mps", "cpu") overrides the choice.

Noise that must be the same on every device (sampling from a seed, the fixed noise behind the
sample grids) is drawn on the CPU from a ``torch.Generator`` and then moved: the CPU generator is
the one random stream that CUDA, MPS and the CPU all share. ``fingerprint`` names a module's weights.

On CUDA, ``configure_cuda`` (called by ``config.setup`` and the command line) lets matmuls use TF32
and lets cuDNN time its convolution kernels and keep the fastest (``cudnn.benchmark``), and
``adam_options`` fuses Adam's update into one kernel.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import resource
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["pick_device", "seed_everything", "cpu_generator", "randn", "amp_dtype", "needs_grad_scaler", "configure_cuda", "adam_options", "adam_to", "channels_last_ok", "describe", "sync", "reset_peak_memory", "peak_memory_mb", "fingerprint"]


def pick_device(name: str | None = None) -> torch.device:
    """Return ``name``'s device, else ``$DIFFUSION_DEVICE``'s, else CUDA, MPS or CPU, first available."""
    name = name or os.environ.get("DIFFUSION_DEVICE") or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own message lists every backend it knows, not the ones this course runs on
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unsupported device {name!r}; choose cuda, mps or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this PyTorch sees no CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0..)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for, but Apple MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` and torch's global generators (CPU, and CUDA/MPS where present)."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device and MPS


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``: the source of device-independent noise."""
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``generator``, then moved to ``device``.

    The same generator state gives the same numbers on CUDA, MPS and the CPU. With
    ``generator=None`` the noise comes from the device's own global generator (faster, but
    device-dependent).
    """
    if generator is None:
        return torch.randn(*shape, device=device, dtype=dtype)
    noise = torch.randn(*shape, generator=generator, dtype=dtype)
    if torch.device(device).type == "cuda":  # from pinned memory the copy does not stall the host
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on ``device``, or None for plain float32.

    * bfloat16 on CUDA GPUs with native bf16 (compute capability 8.0 and newer: Ampere, Ada,
      Hopper): float32's exponent range, so no loss scaling. ``torch.cuda.is_bf16_supported()``
      is not the test: it is also True on a T4 or V100, which only emulate bf16 (slower than fp32).
    * float16 on compute capability 7.x (V100, T4, the RTX 20 series): tensor cores, but float16's
      narrow range needs a gradient scaler (``needs_grad_scaler``).
    * None (float32) on older GPUs, on MPS (autocast there is unverified by this course) and on the CPU.
    """
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    if major == 7:
        return torch.float16
    return None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 training scales the loss so small gradients do not flush to zero (bf16 and fp32 need not)."""
    return dtype == torch.float16


def configure_cuda(device: torch.device) -> str:
    """On a CUDA device: float32 matmuls in TF32 (``torch.set_float32_matmul_precision("high")``;
    cuDNN's convolutions already use it by default) and ``cudnn.benchmark`` on; returns what it set,
    "" elsewhere (nothing changes on MPS or the CPU).

    TF32 keeps float32's range with a 10-bit mantissa: on Ampere and newer GPUs float32 matmuls
    (attention, linear layers, outside bf16 autocast and in the fp32 rows of ``bench train``) run
    on tensor cores, as cuDNN's convolutions already do. ``cudnn.benchmark`` times the
    convolution algorithms for each new input shape once and keeps the fastest; which one wins can
    differ from run to run, so a resumed CUDA run continues the same data, timesteps and noise but
    not bit for bit (it is not bit for bit anyway: cuDNN's backward kernels add in a varying order).
    The bit-exact resume the tests check holds on the CPU; for it on a GPU set
    ``torch.backends.cudnn.benchmark = False`` and ``torch.use_deterministic_algorithms(True)``, with
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment before CUDA starts (slower)."""
    if device.type != "cuda":
        return ""
    # the legacy setter: after the newer fp32_precision API, torch's legacy getter raises, and inductor calls it
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return "TF32 matmuls, cuDNN autotuning"


def adam_options(device: torch.device) -> dict[str, Any]:
    """Keyword arguments of ``torch.optim.Adam``/``AdamW`` for parameters on ``device``: on CUDA
    ``fused=True``, one kernel for the whole update instead of several per group of tensors (the
    same arithmetic; with bf16 autocast and a compiled model the optimiser is otherwise a visible
    share of a small U-Net's step); elsewhere torch's default, which the laptop results were made
    with. ``DIFFUSION_FUSED_ADAM=0`` keeps the default on CUDA too: fused Adam has refused
    gradients whose strides differ from their weights' (pytorch issues 106951, 126585)."""
    fused = device.type == "cuda" and os.environ.get("DIFFUSION_FUSED_ADAM", "1") != "0"
    return {"fused": True} if fused else {}


def adam_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Give a loaded optimiser ``device``'s ``adam_options``: ``load_state_dict`` brings back the
    saved run's implementation with its state, so a CUDA checkpoint resumed on a CPU would
    otherwise ask the CPU for the fused kernel, and a CPU checkpoint would not fuse on a GPU."""
    fused = adam_options(device).get("fused")
    for group in optimizer.param_groups:
        group.update(fused=fused, foreach=None)


def channels_last_ok(device: torch.device) -> bool:
    """Whether the channels-last memory format helps on ``device``: not on MPS, whose convolution
    backward on channels-last inputs was about 30x slower until a 2026 PyTorch fix (pytorch issue
    #193349), so the course keeps MPS on the default layout."""
    return device.type != "mps"


def describe(device: torch.device) -> str:
    """A one-line description of the device, for notebook headers and benchmark tables."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return f"mps (Apple {platform.machine()})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings are wrong without it on CUDA and MPS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MiB, what it measures): CUDA's peak allocation since the last reset, MPS's current driver
    allocation, or the CPU process's peak resident memory (which never resets)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA allocation"
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20, "MPS driver allocation"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if platform.system() == "Darwin" else 1)
    return kb / 1024, "process peak RSS"


def fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's state (names and bytes): a checkpoint records by it which trained
    network (an autoencoder, a CLIP) a model was built on, and refuses another."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
