"""Training on several processes with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m helpers train --profile smoke

``World`` is where this process stands: its rank among ``size`` processes (1 without torchrun).
The recipe's ``batch_size`` is the **global** batch: each of N processes takes its own slice of
every batch (``ShardedBatches``), draws the same global-batch randomness as the others (t, noise,
label dropout, from the same seed) and keeps its slice of that too, and DDP averages the
gradients. So N processes follow the single-process run step for step, up to the order of float
sums, and a checkpoint written by one loads in the other. What is drawn per image inside the data
and the network (random flips, U-Net dropout) each process draws for itself from a seed of its
own (``World.own_randomness``): exact against one process only for recipes without them (smoke,
laptop); with them (full) the same recipe with other random numbers. Only rank 0 writes logs, grids and
checkpoints; the others wait for it at a barrier.

Backends: NCCL on CUDA GPUs (one per process, ``cuda:<LOCAL_RANK>``), gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["World", "ShardedBatches", "free_port"]

S = TypeVar("S", torch.Tensor, Sequence[int])
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's ``rank`` of ``size`` and its ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or one process without it."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            rank, size, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        except (KeyError, ValueError) as err:
            raise ValueError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are not usable ({err}); start several processes with torchrun") from None
        if not 0 <= rank < size:
            raise ValueError(f"RANK {rank} is outside WORLD_SIZE {size}")
        return cls(rank, size, local)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda:<local_rank>`` when training on CUDA; other devices as they are."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo otherwise), once; nothing for one process."""
        if self.distributed and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank, world_size=self.size)

    def local_batch(self, batch_size: int) -> int:
        """This process's share of a global batch; the global batch must divide evenly."""
        if batch_size % self.size:
            raise ValueError(f"the batch of {batch_size} does not divide among {self.size} processes; choose a batch size that is a multiple of {self.size}")
        return batch_size // self.size

    def shard(self, global_batch: S) -> S:
        """This process's contiguous slice of something made for the whole global batch (a tensor
        drawn for it, or the list of its image indices)."""
        b = len(global_batch) // self.size
        return global_batch[self.rank * b : (self.rank + 1) * b]

    def unshard(self, local: torch.Tensor) -> torch.Tensor:
        """The global batch from every process's slice of it (the inverse of ``shard``; ``local`` itself for one process)."""
        if not self.distributed:
            return local
        full = local.new_zeros((len(local) * self.size, *local.shape[1:]))
        full[self.rank * len(local) : (self.rank + 1) * len(local)] = local
        return self.all_sum(full)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes, in place (itself for one process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any process (so that all stop at the same step)."""
        if not self.distributed:
            return flag
        return bool(self.all_sum(torch.tensor(int(flag), device=device)))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def share(self, count: int) -> range:
        """This process's contiguous share of ``count`` items (batches of an evaluation), as even as
        can be: the first ``count % size`` ranks take one more; the shares, in rank order, are 0..count-1."""
        per, extra = divmod(count, self.size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (self.rank < extra))

    def gather(self, obj: T) -> list[T] | None:
        """Every process's ``obj``, in rank order, on rank 0 (None on the others); ``[obj]`` for one process."""
        if not self.distributed:
            return [obj]
        out: list[T] | None = [None] * self.size if self.main else None  # type: ignore[list-item]
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def own_randomness(self, *key: int, device: torch.device) -> contextlib.AbstractContextManager:
        """A block whose random numbers are this process's own, seeded by ``key`` and the rank; the
        global generators (CPU, and ``device``'s if CUDA) continue afterwards as if it had not run.

        Without it, processes in step draw identical dropout masks and flips for their slices,
        correlating the images of one global batch. One process: the global stream, as always."""
        if not self.distributed:
            return contextlib.nullcontext()
        return _seeded(hash((*key, self.rank)), device)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class ShardedBatches(Sampler[list[int]]):
    """Rank ``world.rank``'s contiguous slice of every batch of ``batches`` (a batch sampler of
    global batches, such as ``StepBatchSampler``): the union over the ranks is the global batch, in
    order, so resuming at a step resumes every rank exactly."""

    def __init__(self, batches: Sampler[list[int]], world: World) -> None:
        self.batches, self.world = batches, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield self.world.shard(batch)


def free_port() -> int:
    """A TCP port that is free on this machine now: the rendezvous port for processes started here
    without torchrun (``torch.multiprocessing`` in the tests and ``helpers.bench``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
