import hashlib
import itertools
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision import datasets

import helpers.data as data
from helpers.data import DatasetUnavailableError, StepBatchSampler, load_dataset, make_loader


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr("torchvision.datasets.utils._urlretrieve", refuse)


def test_fashion_mnist_is_verified_extracted_padded_and_scaled(datasets_root, tmp_path, no_network):
    # A fresh root holding only the archives: torchvision checks their md5 and extracts them.
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (datasets_root / "FashionMNIST" / "raw").glob("*.gz"):
        (raw / f.name).symlink_to(f)
    ds = load_dataset("fashion_mnist", train=False, root=tmp_path)
    assert (raw / "t10k-images-idx3-ubyte").exists(), "torchvision should have extracted the archive"
    ref = datasets.FashionMNIST(str(tmp_path), train=False)
    assert len(ds) == len(ref) == 10_000
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and y == int(ref.targets[0])
    assert torch.equal(x[0, 2:30, 2:30], ref.data[0].float() / 127.5 - 1)  # pixel values exact
    border = torch.cat([x[0, :2].flatten(), x[0, -2:].flatten(), x[0, :, :2].flatten(), x[0, :, -2:].flatten()])
    assert bool((border == -1).all()), "the 2-pixel padding is black"
    assert sorted(set(ds.labels.tolist())) == list(range(10))


def test_subset_is_a_fixed_random_choice_and_resize_shrinks(data_env):
    a = load_dataset("fashion_mnist", subset=100, image_size=16, seed=3)
    b = load_dataset("fashion_mnist", subset=100, image_size=16, seed=3)
    c = load_dataset("fashion_mnist", subset=100, image_size=16, seed=4)
    assert len(a) == 100 and a[0][0].shape == (1, 16, 16)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert not a.flip, "Fashion-MNIST is not flipped by default"


def test_read_only_root_is_staged_into_data(datasets_root, tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(data, "_writable", lambda folder: False)
    monkeypatch.setattr(data, "repo_root", lambda: tmp_path)
    ds = load_dataset("fashion_mnist", train=False, root=datasets_root, subset=10)
    staged = tmp_path / "data" / "FashionMNIST" / "raw"
    assert len(ds) == 10 and (staged / "t10k-images-idx3-ubyte.gz").is_symlink()


def _write_cifar(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n_per_batch).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        written[name] = entry
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.DATASETS["cifar10"].classes)}, f)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return written, md5


def test_cifar10_files_in_cifar_format_load_with_flips_for_training(tmp_path, monkeypatch):
    written, md5 = _write_cifar(tmp_path)
    # torchvision verifies every batch's md5: point its tables at the files this test wrote
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
    train = load_dataset("cifar10", train=True, root=tmp_path)
    test = load_dataset("cifar10", train=False, root=tmp_path)
    assert len(train) == 20 and len(test) == 4 and train.flip and not test.flip
    first = torch.from_numpy(written["data_batch_1"]["data"][0].reshape(3, 32, 32)).float() / 127.5 - 1
    assert train.labels[0].item() == written["data_batch_1"]["labels"][0]
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(40)]
    flipped = sum(torch.equal(x, first.flip(-1)) for x in draws)
    assert sum(torch.equal(x, first) for x in draws) + flipped == 40 and 8 < flipped < 32
    assert torch.equal(test[0][0], torch.from_numpy(written["test_batch"]["data"][0].reshape(3, 32, 32)).float() / 127.5 - 1)


def _write_idx(path, array):
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files_and_is_padded(tmp_path, no_network):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("t10k", 3)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    ds = load_dataset("mnist", train=True, root=tmp_path)
    assert len(ds) == 6 and ds[0][0].shape == (1, 32, 32) and not ds.flip


def test_missing_files_without_network_name_the_files_and_the_folder(tmp_path, no_network):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("fashion_mnist", root=tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    with pytest.raises(DatasetUnavailableError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_a_damaged_archive_is_reported_as_failing_its_checksum(datasets_root, tmp_path, no_network):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (datasets_root / "FashionMNIST" / "raw").glob("*.gz"):
        (raw / f.name).symlink_to(f)
    damaged = raw / "t10k-labels-idx1-ubyte.gz"
    damaged.unlink()
    damaged.write_bytes((datasets_root / "FashionMNIST" / "raw" / damaged.name).read_bytes()[:-100])  # a download cut short
    with pytest.raises(DatasetUnavailableError, match=f"{damaged} failed its checksum"):
        load_dataset("fashion_mnist", train=False, root=tmp_path)


def test_step_batch_sampler_continues_exactly_from_any_batch():
    straight = list(itertools.islice(iter(StepBatchSampler(10, 3, seed=5)), 8))
    resumed = list(itertools.islice(iter(StepBatchSampler(10, 3, seed=5, start=4)), 4))
    assert resumed == straight[4:]
    epoch0 = sorted(sum(straight[:3], []))
    assert len(set(epoch0)) == 9, "no image twice within an epoch"
    with pytest.raises(ValueError, match="batch_size 11 exceeds the 10 images"):
        StepBatchSampler(10, 11)


def test_loader_batches_are_scaled_tensors_with_labels(data_env):
    ds = load_dataset("fashion_mnist", subset=64, image_size=16)
    x, y = next(iter(make_loader(ds, 16)))
    assert x.shape == (16, 1, 16, 16) and y.shape == (16,) and x.min() >= -1 and x.max() <= 1
    assert len(list(make_loader(ds, 16, shuffle=False))) == 4
