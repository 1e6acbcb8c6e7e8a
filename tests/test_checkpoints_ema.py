import os
import stat

import pytest
import torch
from torch import nn

import helpers.checkpoints as C
from helpers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from helpers.ema import EMA

from conftest import SMALL_UNET


def minimal(step=0, **model_config):
    return {"model": {"w": torch.ones(2)}, "model_config": {**SMALL_UNET, **model_config}, "diffusion": {"prediction": "eps"}, "step": step}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, minimal(step=1))

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(C.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, minimal(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1, "the old checkpoint survives an interrupted save"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_failed_write_is_an_os_error_that_keeps_the_old_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c.pt", minimal(step=1))

    def disk_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: unexpected pos 64 vs 0")

    monkeypatch.setattr(C.torch, "save", disk_full)
    with pytest.raises(OSError, match="could not write .*c.pt .*is the disk full"):
        save_checkpoint(tmp_path / "c.pt", minimal(step=2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_save_cleans_up_after_a_killed_save_and_follows_the_umask(tmp_path):
    (tmp_path / ".c.pt.abc123.tmp").write_bytes(b"left by a save that was killed mid-write")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"another file's: not ours to delete")
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", minimal())
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "c.pt"]
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o644, "as any file the user writes, not mkstemp's 0600"


def test_corrupt_foreign_and_mismatched_files_give_one_sentence_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a zip file at all")
    with pytest.raises(CheckpointError, match="junk.pt is corrupt, truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a checkpoint of this course"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "c.pt", minimal(ch=16))
    with pytest.raises(CheckpointError, match=r"holds a model with ch=16 \(not 8\); build the model from its model_config"):
        load_checkpoint(tmp_path / "c.pt", model_config=SMALL_UNET)
    with pytest.raises(CheckpointError, match="holds a model trained to predict eps, not v"):
        load_checkpoint(tmp_path / "c.pt", prediction="v")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"format": C.FORMAT, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_map_location_puts_tensors_where_asked(tmp_path):
    save_checkpoint(tmp_path / "c.pt", minimal())
    assert load_checkpoint(tmp_path / "c.pt", map_location="meta")["model"]["w"].device.type == "meta"


def _scalar_model(value=0.0):
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_the_closed_form_of_the_update(warmup):
    # shadow_n = d_n shadow_{n-1} + (1 - d_n) p_n, unrolled: sum_k p_k (1 - d_k) prod_{j>k} d_j + p_0 prod_j d_j
    values = torch.linspace(-1, 2, 100, dtype=torch.float64)
    model = _scalar_model(0.5)
    ema = EMA(model, decay=0.9, warmup=warmup)
    decays = []
    for v in values:
        with torch.no_grad():
            model.weight.fill_(float(v))
        decays.append(ema.current_decay())
        ema.update(model)
    d = torch.tensor(decays, dtype=torch.float64)
    expected = 0.5 * d.prod() + sum(values[k] * (1 - d[k]) * d[k + 1 :].prod() for k in range(len(values)))
    assert ema.shadow["weight"].item() == pytest.approx(expected.item(), rel=1e-5)
    if warmup:
        assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12]) and decays[-1] == 0.9
    else:
        assert set(decays) == {0.9}


def test_ema_update_every_k_steps_and_store_restore_round_trip():
    model = _scalar_model(1.0)
    ema = EMA(model, decay=0.5, warmup=False, update_every=3)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    ema.update(model)
    assert ema.shadow["weight"].item() == 1.0 and ema.num_updates == 0
    ema.update(model)
    assert ema.shadow["weight"].item() == 2.0 and ema.num_updates == 1
    with ema.averaged(model):
        assert model.weight.item() == 2.0
    assert model.weight.item() == 3.0
    with pytest.raises(RuntimeError, match="without a preceding store"):
        ema.restore(model)
    fresh = EMA(_scalar_model(), decay=0.1)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.shadow["weight"].item() == 2.0 and (fresh.decay, fresh.step, fresh.update_every) == (0.5, 3, 3)
    with pytest.raises(ValueError, match="does not match this model"):
        EMA(nn.Linear(1, 1)).load_state_dict(ema.state_dict())


# ---- one format, four kinds --------------------------------------------------------------------------


def test_a_checkpoint_names_its_kind_and_another_kind_is_refused_in_one_line(tmp_path):
    save_checkpoint(tmp_path / "ae.pt", {"model": {"w": torch.ones(2)}, "model_config": {"ch": 8}, "step": 3}, "autoencoder")
    assert C.read_checkpoint(tmp_path / "ae.pt")["kind"] == "autoencoder"
    assert load_checkpoint(tmp_path / "ae.pt", kind="autoencoder")["step"] == 3
    with pytest.raises(CheckpointError, match=r"^\S*ae.pt holds an autoencoder, not a U-Net or a consistency model$"):
        load_checkpoint(tmp_path / "ae.pt")
    save_checkpoint(tmp_path / "c.pt", minimal())
    with pytest.raises(CheckpointError, match=r"c.pt holds a U-Net, not a classifier$"):
        load_checkpoint(tmp_path / "c.pt", kind="classifier")
    with pytest.raises(ValueError, match="a checkpoint of an autoencoder needs the key 'step'"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}, "model_config": {}}, "autoencoder")
    with pytest.raises(ValueError, match="unknown checkpoint kind 'gan'"):
        save_checkpoint(tmp_path / "x.pt", minimal(), "gan")


@pytest.mark.parametrize("name,kind", [("03_ddpm_eps.pt", "unet"), ("07_v.pt", "unet"), ("08_cfg.pt", "unet"), ("11_cd.pt", "consistency"),
                                       ("fashion_mnist_28px_w32.pt", "classifier")])  # fmt: skip
def test_every_shipped_file_reads_with_its_kind(name, kind):
    """pretrained/ predates the kinds: the course format without one, and the classifier's {config, model, info}."""
    from helpers.paths import pretrained_dir

    ckpt = C.read_checkpoint(pretrained_dir() / name)
    assert ckpt["kind"] == kind and "format" in ckpt and ckpt["model"]
    if kind == "classifier":
        assert ckpt["info"]["test_accuracy"] > 0.9 and load_checkpoint(pretrained_dir() / name, kind="classifier")["model_config"]["width"] == 32
    else:
        model, _, loaded = C.load_model(pretrained_dir() / name)
        assert loaded["kind"] == kind and model.image_size == 28
