"""The one guarded run loop behind every training run of the course: the U-Net ``Trainer``
(``helpers.training``), consistency distillation (``helpers.distillation``) and the autoencoder
(``helpers.autoencoder_training``) are each a ``GuardedRun`` that supplies its step, and share
what keeps a long run's work safe:

* ``steps`` is the total to reach: ``run.train(1000)`` trains until step 1000 (from wherever the
  run stands; nothing if it is there already), ``run.train()`` until the config's ``steps``.
* With ``save_to``: one run per checkpoint (``RunLock``: ``<checkpoint>.lock`` holds the training
  process's id; a second run on the same file is refused instead of interleaving with the first);
  a checkpoint every ``save_every`` steps (default: every ``SAVE_MINUTES`` minutes) and at the end;
  and Ctrl-C or SIGTERM (``deferred_interrupts``) finish the step in flight, save, and raise
  ``KeyboardInterrupt`` with a message that says how to continue. A second Ctrl-C stops at once.
* Weights that are not finite are never saved (``FloatingPointError``; the previous file stays).
* Several processes (``helpers.distributed.World``): only rank 0 locks and saves while the others
  wait at a barrier, and a signal to any process stops them all after the same step.
* A progress bar (tqdm, at most one refresh a second, on rank 0 only).

Writing a run: subclass ``GuardedRun``; in ``__init__`` set ``step`` (0), ``device``, ``config``
(whose ``steps`` is the default total) and ``model`` (the network whose weights are saved), and
``world`` and ``progress`` where they differ from one process with a bar; then provide

    total_steps      the default total (default: ``config.steps``)
    begin()          start of a ``train`` call: an iterator of batches from ``step`` on
    advance(batches, end)   one optimiser step (``step += 1``) and its logging; returns the bar's
                     postfix (a dict) or None
    weights()        the named tensors that must be finite for ``save`` (default: ``model``'s parameters)
    state_dict(**options)   what ``save(path, **options)`` writes, as a checkpoint of ``kind``
    restore(ckpt, path)     continue exactly from a checkpoint that ``load(path)`` read: one of
                     ``kind`` that matches ``expects()`` (model config, prediction) and ``check``
    finish()         (optional) end of a ``train`` call, also when it stops early

Helpers for runs: ``place`` (a model on the device, channels-last where it helps, DDP with several
processes, compiled if asked), ``loader`` (resumable batches from ``step``),
``conflicts``/``refuse_conflicts`` (settings a resumed run must keep) and ``Precision`` (autocast
dtype and gradient scaler of a training step).

    (tests/test_runs.py has the smallest complete run, a counter with one weight, and the three
    runs of the course are its larger examples)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, damaged, load_checkpoint, non_finite, save_checkpoint
from helpers.device import adam_to, amp_dtype, channels_last_ok, needs_grad_scaler
from helpers.distributed import World
from helpers.validate import integer

__all__ = ["SAVE_MINUTES", "RunLockedError", "RunLock", "deferred_interrupts", "GuardedRun", "Precision", "conflicts", "refuse_conflicts"]

SAVE_MINUTES = 10  # how often a training run writes its checkpoint unless told a number of steps

R = TypeVar("R", bound="GuardedRun")


class RunLockedError(RuntimeError):
    """Another live process is training into the same checkpoint."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


class RunLock:
    """``with RunLock(checkpoint):`` holds ``<checkpoint>.lock`` (this process's id) for the block.

    A lock whose process no longer exists (a run that was killed) is taken over.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.path = self.checkpoint.with_name(self.checkpoint.name + ".lock")

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise RunLockedError(
                        f"{self.checkpoint} is being trained by process {pid} (lock {self.path}); "
                        f"wait for it to finish, stop it, or write to another file"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a run that no longer exists
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are appended to the yielded list instead of stopping
    the program; the caller checks the list between steps. A second SIGINT stops at once (for a
    step that hangs). Outside the main thread, where Python cannot catch signals, nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def record(signum: int, frame: object) -> None:
        received.append(signum)
        if received.count(signal.SIGINT) > 1:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def refuse_conflicts(path: str | Path, differences: dict[str, tuple[Any, Any]], verb: str = "trained") -> None:
    """A one-line CheckpointError for settings ({name: (saved, now)}) in which a checkpoint differs
    from the run that would continue it; nothing when there are none."""
    if differences:
        detail = ", ".join(f"{k}={saved!r} (not {now!r})" for k, (saved, now) in differences.items())
        raise CheckpointError(f"{path} was {verb} with {detail}; resume with the checkpoint's settings to continue the same run")


def conflicts(saved: dict[str, Any], now: dict[str, Any], resumable: Iterable[str]) -> dict[str, tuple[Any, Any]]:
    """{setting: (saved, now)} for the settings outside ``resumable`` that differ."""
    return {k: (v, now.get(k)) for k, v in saved.items() if k not in resumable and now.get(k) != v}


@dataclass
class Precision:
    """How a training step computes: autocast to ``dtype`` (None: plain float32) on ``device_type``,
    and for float16 a gradient scaler, so that small gradients do not flush to zero. The loss is
    reduced in float32 either way. (The scaler reads back whether the gradients overflowed, one
    sync per step: the price of float16 on GPUs without native bf16.)"""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    device_type: str = "cpu"

    @classmethod
    def choose(cls, device: torch.device, amp: bool | None) -> Precision:
        """``helpers.device.amp_dtype``: bf16 where the GPU has it natively (compute capability 8+),
        fp16 with a scaler on 7.x, else float32. ``amp=False`` asks for float32, ``amp=True`` for
        mixed precision (an error where there is none), None for whatever the device has."""
        dtype = amp_dtype(device) if amp in (None, True) else None
        if amp and dtype is None:
            raise ValueError(f"mixed precision was asked for, but {device} has none (it needs a CUDA GPU of compute capability 7.0 or newer)")
        return cls(dtype, torch.amp.GradScaler(device.type) if needs_grad_scaler(dtype) else None, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], clip: float | None) -> torch.Tensor:
        """Backward of ``loss`` (scaled for fp16), the gradient norm clipped to ``clip`` (None or 0:
        no clipping), and the optimiser step; returns the gradient norm before clipping."""
        params, clip = list(parameters), clip if clip else math.inf
        if self.scaler is None:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            return grad_norm
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # the norm and the clipping see the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()
        return grad_norm

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class GuardedRun:
    """A training run that ``train`` drives under the guards of the module docstring; subclasses
    supply the step (see there). ``save_minutes`` and ``clock`` set the time between checkpoints."""

    kind = "unet"  # the checkpoint kind (helpers.checkpoints.KINDS)
    desc = "training"  # the progress bar's label
    resume_hint = "load it to continue exactly from here"  # the stop message's last words
    save_minutes: float = SAVE_MINUTES
    clock: Callable[[], float] = staticmethod(time.monotonic)
    world = World()
    progress = True
    step = 0
    device = torch.device("cpu")

    # ---- what a run supplies -----------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.config.steps

    def begin(self) -> Iterator[Any]:
        raise NotImplementedError

    def advance(self, batches: Iterator[Any], end: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.model.named_parameters()

    def state_dict(self, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def expects(self) -> dict[str, Any]:
        """What a checkpoint to load must match: ``load_checkpoint``'s ``model_config`` and ``prediction``."""
        return {}

    def check(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Refuse (CheckpointError) a checkpoint whose run this one cannot continue: other settings."""

    def restore(self, ckpt: dict[str, Any], path: str | Path) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """End of a ``train`` call (also when it stops early)."""

    def remedy(self) -> str:
        """Advice for weights that became non-finite."""
        return "lower the learning rate"

    def place(self, model: torch.nn.Module, batch_size: int, channels_last: bool = False, compile: bool = False) -> tuple[torch.nn.Module, Any]:
        """(``model`` on the run's device, the callable a step runs). The model is channels-last where
        asked and ``channels_last_ok`` (``self.channels_last`` says which); with several processes
        (``world``), whose share of ``batch_size`` must be whole, the callable is the model wrapped in
        DistributedDataParallel (it averages the gradients in backward); compiled if asked."""
        self.world.local_batch(batch_size)  # a global batch that does not divide is an error
        self.world.init(self.device)
        self.channels_last = channels_last and channels_last_ok(self.device)
        model = model.to(self.device, memory_format=torch.channels_last) if self.channels_last else model.to(self.device)
        net = model
        if self.world.distributed:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
            # 1x1 kernels' gradients can carry other strides on their size-1 dimensions (the same
            # memory layout); DDP compares strides literally and warns at every step
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return model, torch.compile(net) if compile else net

    def loader(self, dataset: Any, batch_size: int, seed: int, **options: Any) -> Iterator[Any]:
        """The endless, resumable batches of ``helpers.data.make_loader`` from batch ``step`` on, the
        images held on the GPU when they fit (``helpers.data.on_device``, copied there once per run and
        dataset, not at every ``train`` call), else read through pinned memory."""
        from helpers.data import make_loader, on_device  # data pulls in torchvision; keep it out of import time

        if not options.get("num_workers"):  # worker processes cannot index a CUDA tensor
            held = getattr(self, "_held", None)
            if held is None or held[0] is not dataset:
                self._held = held = (dataset, on_device(dataset, self.device))
            dataset = held[1]
        return iter(make_loader(dataset, batch_size, shuffle=True, seed=seed, start=self.step, pin_memory=self.device.type == "cuda", **options))

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self: R, steps: int | None = None, save_to: str | Path | None = None, save_every: int | None = None, **save_options: Any) -> R:
        """Train until step ``steps`` in total (default: ``total_steps``); with ``save_to``, under the
        guards of the module docstring. ``save_options`` go to ``save`` (e.g. ``profile``)."""
        end = self.total_steps if steps is None else integer("steps", steps, minimum=0)
        if save_every is not None:
            integer("save_every", save_every)
        if end <= self.step:
            return self
        world = self.world
        with contextlib.ExitStack() as guards:
            stop: list[int] = []
            if save_to is not None:
                if world.main:
                    guards.enter_context(RunLock(save_to))  # before begin(), which may start a fresh log
                stop = guards.enter_context(deferred_interrupts())
            guards.callback(self.finish)
            batches = self.begin()
            # at most one refresh a second: in a notebook every refresh is a message to the front end,
            # and a flood of them can overrun the kernel's output channel (nbval then loses the cell's end)
            bar = guards.enter_context(tqdm(total=end - self.step, desc=self.desc, disable=not (self.progress and world.main), leave=False, mininterval=1.0))
            last_save = self.clock()
            while self.step < end:
                postfix = self.advance(batches, end)
                bar.update(1)
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
                if save_to is None:
                    continue
                halt = world.any(bool(stop), self.device)  # a signal to any process stops them all at this step
                due = self.step % save_every == 0 if save_every else self.clock() - last_save >= 60 * self.save_minutes
                if world.any(self.step == end or due, self.device) or halt:
                    if world.main:
                        self.save(save_to, **save_options)
                    world.barrier()  # the others wait until the checkpoint is on disk
                    last_save = self.clock()
                if halt:
                    signame = signal.Signals(stop[0]).name if stop else "a signal to another process"
                    raise KeyboardInterrupt(f"{signame} after step {self.step}: saved {save_to}; {self.resume_hint}")
        return self

    def load(self, path: str | Path) -> dict[str, Any]:
        """Continue exactly from the checkpoint at ``path`` (a missing, corrupt or foreign file, another
        kind, model or settings are one-line errors); returns it."""
        # to the CPU: load_state_dict moves what belongs on the device, and Adam's step counters stay
        # CPU scalars (on a GPU they would cost a sync per parameter tensor every step)
        ckpt = load_checkpoint(path, "cpu", kind=self.kind, **self.expects())
        self.check(ckpt, path)
        try:
            self.restore(ckpt, path)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # missing keys, wrong shapes: a damaged or foreign file
            raise damaged(path, err) from err
        if isinstance(getattr(self, "optimizer", None), torch.optim.Optimizer):  # saved on another device, perhaps
            adam_to(self.optimizer, self.device)
        return ckpt

    def save(self, path: str | Path, **options: Any) -> Path:
        """Write an exact-resume checkpoint of ``kind`` atomically; never weights that are not
        finite (the file at ``path`` then keeps the last good state)."""
        broken = non_finite(self.weights())
        if broken:
            raise FloatingPointError(
                f"the weights became non-finite by step {self.step} ({len(broken)} tensors, e.g. {broken[0]}), "
                f"so {path} was not overwritten; {self.remedy()}"
            )
        return save_checkpoint(path, self.state_dict(**options), self.kind)
