"""Datasets through torchvision, as the diffusion model sees them: tensors in [-1, 1].

CIFAR-10 (3x32x32, random horizontal flips when training), Fashion-MNIST and MNIST (1x28x28,
zero-padded to 32x32). A profile may ask for a smaller side, which resizes after the padding.
Images are held in memory as one uint8 tensor (Fashion-MNIST: 61 MB, CIFAR-10: 154 MB), so a
batch costs an index and a division, with no PIL work per image; on a GPU a training run holds
them there (``on_device``), so that batches are cut on the device.

Files are looked for under ``$DIFFUSION_DATA`` (default ``data/``) in torchvision's own layout and
downloaded there when missing; without network or files the error names the files and the
folder. A read-only root (a shared dataset folder) is staged: its archives are linked into
``data/`` and torchvision verifies and extracts them there.

A process decodes each split once: the decoded images are kept (``_decoded``, a few entries) for
as long as the files they came from are unchanged, so that a second run in the same process (a
notebook, the tests) starts without parsing the files again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import functional as TF

from helpers.config import Profile
from helpers.paths import data_root, repo_root
from helpers.distributed import ShardedBatches, World
from helpers.validate import batch_fits

__all__ = [
    "DATASETS",
    "DatasetUnavailableError",
    "ImageDataset",
    "load_dataset",
    "prepare_images",
    "profile_dataset",
    "make_loader",
    "on_device",
    "StepBatchSampler",
]


class DatasetUnavailableError(FileNotFoundError):
    """The dataset's files are neither on disk nor downloadable."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the loader needs to know about one dataset."""

    title: str
    cls: type
    channels: int
    native_size: int
    folder: str  # torchvision's folder under the root, holding ``archives``
    archives: tuple[str, ...]
    source: str
    classes: tuple[str, ...]


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        title="CIFAR-10",
        cls=datasets.CIFAR10,
        channels=3,
        native_size=32,
        folder=".",
        archives=("cifar-10-python.tar.gz",),
        source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "fashion_mnist": DatasetSpec(
        title="Fashion-MNIST",
        cls=datasets.FashionMNIST,
        channels=1,
        native_size=28,
        folder="FashionMNIST/raw",
        archives=_MNIST_FILES,
        source="https://github.com/zalandoresearch/fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "mnist": DatasetSpec(
        title="MNIST",
        cls=datasets.MNIST,
        channels=1,
        native_size=28,
        folder="MNIST/raw",
        archives=_MNIST_FILES,
        source="https://ossci-datasets.s3.amazonaws.com/mnist/",
        classes=tuple(str(i) for i in range(10)),
    ),
}


class ImageDataset(Dataset):
    """Images held as one uint8 tensor [N, C, H, W]; items are (float image in [-1, 1], label).

    ``image = uint8 / 127.5 - 1``, the same values as torchvision's ToTensor + Normalize(0.5, 0.5).
    With ``flip``, each item is mirrored left-right with probability 1/2 (torch's global generator,
    so a resumed run repeats the same flips). ``make_loader`` reads batches through ``batch``: a
    subclass that changes the items overrides it too.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], flip: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.flip = images, labels.long(), classes, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float() / 127.5 - 1
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The items ``indices`` at once (images [B, C, H, W] in [-1, 1], labels [B]) on the images'
        device: one index into the uint8 tensor, one conversion and one flip mask (drawn on the CPU,
        so the same seed gives the same flips wherever the images live). ``make_loader`` reads a
        batch with one call of this instead of one ``__getitem__`` per image."""
        idx = torch.as_tensor(indices, device=self.images.device)
        x = self.images[idx].float() / 127.5 - 1
        if self.flip:
            mirror = (torch.rand(len(idx)) < 0.5).to(x.device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x, self.labels[idx]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its images and labels held on ``device``."""
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes, self.flip)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images in [-1, 1] (no flips) and all labels, at once."""
        return self.images.float() / 127.5 - 1, self.labels


def prepare_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [N, C, h, w] -> uint8 [N, C, image_size, image_size].

    Images already of side ``image_size`` are kept as they are (Fashion-MNIST at 28 px, unpadded).
    Otherwise 28x28 images are zero-padded to 32x32 first, then everything is resized bilinearly
    with antialiasing, on tensors (torchvision.transforms.functional).
    """
    if images.shape[-1] == image_size:
        return images
    if images.shape[-1] == 28:
        images = TF.pad(images, [2])  # 28x28 -> 32x32 with black borders, so the U-Net halves evenly
    if images.shape[-1] != image_size:
        images = TF.resize(images, [image_size, image_size], antialias=True)
    return images


def damaged_archives(spec: DatasetSpec, root: Path) -> list[Path]:
    """The dataset's archives under ``root`` that are present but fail torchvision's MD5 check."""
    if hasattr(spec.cls, "resources"):  # the MNIST family: <Name>/raw/<file>.gz
        expected = [(root / spec.folder / Path(url).name, md5) for url, md5 in spec.cls.resources]
    else:  # CIFAR-10: one archive
        expected = [(root / spec.folder / spec.cls.filename, spec.cls.tgz_md5)]
    return [path for path, md5 in expected if path.is_file() and not check_integrity(str(path), md5)]


def load_dataset(
    name: str,
    train: bool = True,
    image_size: int = 32,
    subset: int | None = None,
    root: str | Path | None = None,
    seed: int = 0,
    flip: bool | None = None,
) -> ImageDataset:
    """The dataset ``name`` ("cifar10", "fashion_mnist", "mnist") as (image in [-1, 1], label) pairs.

    torchvision finds, verifies (or downloads) and parses the files; the images are then padded
    and resized once, as a tensor. ``subset`` keeps that many images, chosen at random with
    ``seed`` (the same ones every time). ``flip`` defaults to random horizontal flips for the
    CIFAR-10 training set (DDPM's only augmentation). ``root`` defaults to ``$DIFFUSION_DATA``.
    """
    spec = _spec(name)
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of images or None, got {subset}")
    if not 4 <= image_size <= 32:
        raise ValueError(f"image_size must lie in 4..32 (the datasets are 32x32 after padding), got {image_size}")
    root = Path(root).resolve() if root is not None else data_root()
    if not _writable(root / spec.folder):
        root = _stage(spec, root, repo_root() / "data")
    decoded = images, labels = _decoded(spec, root, train)
    if subset is not None and subset < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:subset]
        images, labels = images[keep], labels[keep]
    images = prepare_images(images, image_size)
    images, labels = (t.clone() if t is kept else t for t, kept in zip((images, labels), decoded))  # never the cached tensors themselves
    flip = (name == "cifar10" and train) if flip is None else flip
    return ImageDataset(images, labels, spec.classes, flip)


_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_CACHE_SIZE = 4  # splits kept decoded (Fashion-MNIST's train split: 47 MB, CIFAR-10's: 154 MB)


def _signature(spec: DatasetSpec, root: Path) -> tuple:
    """What the decoded tensors depend on: the files in the dataset's folder, by name, size and modification time."""
    folder = root / spec.folder
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()))
    except OSError:
        return ()


def _decoded(spec: DatasetSpec, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's uint8 images [N, C, H, W] and labels as torchvision decodes them from ``root``
    (verifying, extracting or downloading first), kept for later calls while its files are unchanged.
    Callers must not change the returned tensors in place."""
    key = (spec.title, str(root), train, _signature(spec, root))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    try:
        ds = spec.cls(str(root), train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError or URLError when it can neither find nor fetch
        damaged = damaged_archives(spec, root)
        if damaged:
            raise DatasetUnavailableError(
                f"{', '.join(str(p) for p in damaged)} failed its checksum (damaged or cut short): delete it so that it is "
                f"downloaded again, or replace it with the file from {spec.source}"
            ) from err
        files = ", ".join(spec.archives)
        raise DatasetUnavailableError(
            f"{spec.title} is not in {root / spec.folder} and could not be downloaded ({type(err).__name__}). "
            f"Place {files} (from {spec.source}) in that folder, or set DIFFUSION_DATA to a folder that has them."
        ) from err
    images = torch.as_tensor(ds.data)
    images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images[:, None]  # CIFAR is stored [N, H, W, C]
    decoded = images.contiguous(), torch.as_tensor(ds.targets)
    _CACHE[(spec.title, str(root), train, _signature(spec, root))] = decoded  # after extraction: the files as they now are
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return decoded


def profile_dataset(profile: Profile, train: bool = True) -> ImageDataset:
    """The profile's dataset at its image size; its ``subset`` applies to the training split."""
    return load_dataset(profile.dataset, train, profile.image_size, profile.subset if train else None, seed=profile.seed)


class StepBatchSampler(Sampler[list[int]]):
    """Endless shuffled batches whose order is a function of the batch number alone.

    Batch k comes from epoch e = k // (n // batch_size), shuffled by a generator seeded with
    ``seed + e``. Starting at ``start`` therefore continues a run exactly where it stopped, which
    is what makes resuming training exact. The last incomplete batch of each epoch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start: int = 0) -> None:
        batch_fits(batch_size, n)
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            epoch, i = divmod(k, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            for j in range(i, self.per_epoch):
                yield perm[j * self.batch_size : (j + 1) * self.batch_size].tolist()
            k = (epoch + 1) * self.per_epoch


class _Batches(Dataset):
    """An ``ImageDataset`` as the DataLoader reads it in ``make_loader``: a batch of indices in one
    call (the DataLoader's ``__getitems__`` protocol), the batch already made (``collate``)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(indices)

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


def on_device(dataset: Dataset, device: torch.device, share: float = 0.25) -> Dataset:
    """``dataset`` held on ``device`` when that is a CUDA GPU, the dataset an ``ImageDataset``, and
    its uint8 images take under ``share`` of the GPU's free memory (CIFAR-10's training split:
    154 MB); else ``dataset`` itself. On the GPU a batch is cut where the step runs: no image
    copied from the host (only the batch's indices and flip mask), no pinned buffers."""
    if device.type != "cuda" or not isinstance(dataset, ImageDataset) or dataset.device.type == "cuda":
        return dataset
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.to(device) if dataset.images.nbytes < share * free else dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    world: World | None = None,
) -> DataLoader:
    """A DataLoader that is safe inside notebooks.

    ``shuffle=True`` gives the endless, resumable batches of ``StepBatchSampler`` starting at batch
    ``start`` (with several processes, ``world``'s slice of each: ``helpers.distributed``);
    ``shuffle=False`` one pass in order (for evaluation). ``num_workers=0`` (the default)
    loads in the main process: no worker processes to hang a Jupyter kernel or to fork under MPS.
    An ``ImageDataset`` is read a batch at a time (``ImageDataset.batch``); ``pin_memory`` applies
    only to a dataset on the CPU.
    """
    n = len(dataset)
    common: dict[str, Any] = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    if isinstance(dataset, ImageDataset):
        pin_memory = pin_memory and dataset.device.type == "cpu"
        dataset, common["collate_fn"] = _Batches(dataset), _Batches.collate
    common["pin_memory"] = pin_memory
    if shuffle:
        sampler: Sampler[list[int]] = StepBatchSampler(n, batch_size, seed, start)
        if world is not None and world.distributed:
            world.local_batch(batch_size)  # refuses a batch that does not divide among the processes
            sampler = ShardedBatches(sampler, world)
        # the loader's own generator seeds workers, so that iterators never draw from the global RNG
        return DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator().manual_seed(seed), **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose {', '.join(DATASETS)}")
    return DATASETS[name]


def _writable(folder: Path) -> bool:
    """Whether torchvision could write (extract, download) into ``folder`` or the nearest existing parent."""
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK)


def _stage(spec: DatasetSpec, root: Path, stage_root: Path) -> Path:
    """Link ``spec``'s archives from a read-only ``root`` into ``stage_root``; return ``stage_root``."""
    src, dst = root / spec.folder, stage_root / spec.folder
    dst.mkdir(parents=True, exist_ok=True)
    for name in spec.archives:
        if (src / name).exists() and not (dst / name).exists():
            (dst / name).symlink_to(src / name)
    return stage_root
