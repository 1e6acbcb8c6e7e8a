"""Bad input to the command lines: one ``error:`` line and exit code 2, never a traceback, never a
file of wrong images. Each case feeds the input a new user might type and checks the message."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import sample as sample_cli
from helpers import train as train_cli
from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.config import PROFILES
from helpers.diffusion import Diffusion
from helpers.unet import UNet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An unconditional and a 4-class smoke-sized checkpoint with random weights (no training needed)."""
    folder = tmp_path_factory.mktemp("ckpts")
    d = Diffusion.from_schedule("linear", 20)
    paths = {}
    for name, extra in (("uncond", {}), ("cond", {"num_classes": 4})):
        config = {**PROFILES["smoke"].model, **extra}
        torch.manual_seed(0)
        paths[name] = save_checkpoint(folder / f"{name}.pt", {"model": UNet(**config).state_dict(), "model_config": config, "diffusion": d.config(), "step": 0})
    return paths


def run_sample(capsys, *argv):
    code = sample_cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "which,flags,message",
    [
        ("cond", ["--class-id", "1", "--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
        ("cond", ["--class-id", "1", "--guidance-scale", "inf"], "--guidance-scale must be a finite number, got inf"),
        ("uncond", ["--sampler", "ddim", "--eta", "nan"], "eta must be a finite number >= 0, got nan"),
        ("uncond", ["--sampler", "ddim", "--eta", "-1"], "eta must be a finite number >= 0, got -1"),
        ("uncond", ["--sampler", "ddim", "--steps", "0"], "--steps must be a positive integer, got 0"),
        ("uncond", ["--sampler", "ddim", "--steps", "21"], "--steps 21: the model's process has only T = 20 steps"),
        ("cond", ["--class-id", "-2"], "--class-id must be a class (0 and up) or -1"),
        ("cond", ["--class-id", "4"], "knows classes 0..3"),
        ("uncond", ["--class-id", "0"], "holds an unconditional model"),
        ("uncond", ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        ("uncond", ["--n", "0"], "--n must be a positive integer, got 0"),
        ("uncond", ["--n", "2.5"], "--n must be a positive integer, got '2.5'"),
        ("uncond", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        ("uncond", ["--sampler", "dpmpp"], "argument --sampler: invalid choice: 'dpmpp'"),
        ("uncond", ["--bogus"], "unrecognized arguments: --bogus"),
        ("uncond", ["--guidance-scale", "3"], "--guidance-scale needs --class-id"),
        ("uncond", ["--eta", "1"], "--eta has no effect with --sampler ddpm"),
        ("uncond", ["--nfe", "10"], "--nfe has no effect with --sampler ddpm"),
        ("uncond", ["--sampler", "heun", "--steps", "10", "--no-clip"], "--steps, --no-clip have no effect with --sampler heun"),
        ("uncond", ["--sampler", "dpmpp-2m", "--nfe", "0"], "--nfe must be a positive integer, got 0"),
    ],
)
def test_bad_sampling_settings_are_one_line_errors(checkpoints, tmp_path, capsys, which, flags, message):
    out = tmp_path / "grid.png"
    code, err = run_sample(capsys, "--checkpoint", checkpoints[which], "--n", 2, "--out", out, *flags)
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp-2m", "euler-a", "pc"])
def test_every_noise_level_solver_samples_from_the_command_line(checkpoints, tmp_path, capsys, solver):
    out = tmp_path / "samples.npz"
    assert sample_cli.main(["--checkpoint", str(checkpoints["cond"]), "--n", "3", "--class-id", "-1", "--guidance-scale", "2",
                            "--sampler", solver, "--nfe", "7", "--out", str(out)]) == 0  # fmt: skip
    images = np.load(out)
    assert images["arr_0"].shape == (3, 16, 16, 1) and images["arr_0"].dtype == np.uint8 and images["arr_1"].tolist() == [0, 1, 2]
    assert f"{solver}, " in capsys.readouterr().out


def test_the_destination_is_checked_before_sampling(checkpoints, tmp_path, capsys, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(sample_cli, "sample", no_sampling)
    code, err = run_sample(capsys, "--checkpoint", checkpoints["uncond"], "--out", tmp_path / "grid.gif")
    assert code == 2 and ".gif is none of them" in err
    (tmp_path / "file").write_text("x")
    code, err = run_sample(capsys, "--checkpoint", checkpoints["uncond"], "--out", tmp_path / "file" / "grid.png")
    assert code == 2 and "cannot create" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = run_sample(capsys, "--checkpoint", checkpoints["uncond"], "--out", locked / "grid.png")
        assert code == 2 and "is not writable" in err


def test_broken_checkpoints_are_named_not_traced(checkpoints, tmp_path, capsys):
    good = load_checkpoint(checkpoints["uncond"])
    cases = {
        "random bytes": os.urandom(4096),
        "truncated": checkpoints["uncond"].read_bytes()[:2000],
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
    nan = {**good, "model": {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in good["model"].items()}}
    missing = {**good, "model": {k: v for k, v in list(good["model"].items())[1:]}}
    wrong_shape = {**good, "model_config": {**good["model_config"], "ch": 8}}
    unknown_schedule = {**good, "diffusion": {**good["diffusion"], "schedule": "zigzag"}}
    for name, ckpt in (("nan", nan), ("missing", missing), ("wrong shape", wrong_shape), ("schedule", unknown_schedule)):
        torch.save({k: v for k, v in ckpt.items()}, tmp_path / f"{name}.pt")
    expected = {
        "random bytes": "is corrupt, truncated or not a PyTorch checkpoint",
        "truncated": "is corrupt, truncated or not a PyTorch checkpoint",
        "nan": "holds non-finite weights",
        "missing": "is damaged or was written by another version",
        "wrong shape": "is damaged or was written by another version",
        "schedule": "is damaged or was written by another version",
    }
    for name, message in expected.items():
        code, err = run_sample(capsys, "--checkpoint", tmp_path / f"{name}.pt", "--out", tmp_path / f"{name}.png")
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
        assert "weights_only" not in err, "never advise loading an untrusted file with weights_only=False"
        assert not (tmp_path / f"{name}.png").exists()


# ---- training ------------------------------------------------------------------------------------

# a constant learning rate, so that a run can be extended on resume (a decay's schedule is fixed by --steps)
TRAIN = ["--profile", "smoke", "--no-progress", "--sample-every", "0", "--eval-every", "0", "--batch-size", "8", "--lr-decay", "none"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--grad-clip", "-1"], "grad_clip must be a finite number >= 0"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["--ema-decay", "1.5"], "ema_decay must lie in [0, 1)"),
        (["--p-uncond", "1.5"], "p_uncond must lie in [0, 1), got 1.5"),
        (["--warmup-steps", "-1"], "warmup_steps must be an integer >= 0, got -1"),
        (["--sample-every", "-1"], "sample_every must be an integer >= 0, got -1"),
        (["--save-every", "0"], "--save-every must be a positive integer, got 0"),
        (["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
        (["--num-classes", "0"], "--num-classes must be a positive integer, got 0"),
        (["--min-snr-gamma", "0"], "--min-snr-gamma must be a finite number > 0, got 0.0"),
        (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
        (["--optimizer", "sgd"], "argument --optimizer: invalid choice: 'sgd'"),
        (["--device", "tpu"], "unsupported device 'tpu'; choose cuda, mps or cpu"),
    ],
)
def test_bad_training_settings_are_one_line_errors(tmp_path, data_env, capsys, flags, message):
    out = tmp_path / "run.pt"
    code = train_cli.main(TRAIN + ["--steps", "2", "--out", str(out)] + flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_bad_environment_and_resume_are_one_line_errors(tmp_path, data_env, capsys, monkeypatch, checkpoints):
    out = tmp_path / "run.pt"
    base = ["--no-progress", "--steps", "2", "--out", str(out)]
    monkeypatch.setenv("DIFFUSION_PROFILE", "bogus")
    assert train_cli.main(base) == 2 and "unknown profile 'bogus'" in capsys.readouterr().err
    monkeypatch.delenv("DIFFUSION_PROFILE")
    monkeypatch.setenv("DIFFUSION_DEVICE", "tpu")
    assert train_cli.main(["--profile", "smoke"] + base) == 2 and "unsupported device 'tpu'" in capsys.readouterr().err
    monkeypatch.delenv("DIFFUSION_DEVICE")
    smoke = tmp_path / "smoke.pt"
    smoke.write_bytes(checkpoints["uncond"].read_bytes())
    err_code = train_cli.main(["--profile", "laptop", "--no-progress", "--out", str(smoke), "--resume"])
    err = capsys.readouterr().err
    assert err_code == 2 and "holds a 16px model, but the laptop profile trains on 28px images" in err, err
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    assert train_cli.main(TRAIN + ["--out", str(tmp_path / "junk.pt"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is corrupt, truncated or not a PyTorch checkpoint" in err and "weights_only" not in err


def test_a_second_run_on_the_same_checkpoint_is_refused_and_a_stale_lock_taken_over(tmp_path, data_env, capsys):
    out = tmp_path / "run.pt"
    lock = tmp_path / "run.pt.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(other.pid))
        assert train_cli.main(TRAIN + ["--steps", "2", "--out", str(out)]) == 2
        assert f"is being trained by process {other.pid}" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert train_cli.main(TRAIN + ["--steps", "2", "--out", str(out)]) == 0, "the lock's process is gone: take it over"
    assert out.exists() and not lock.exists()


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    from helpers.training import TrainConfig, Trainer

    data = torch.utils.data.TensorDataset(torch.rand(16, 1, 16, 16) * 2 - 1, torch.zeros(16, dtype=torch.long))
    trainer = Trainer(UNet(**PROFILES["smoke"].model), Diffusion.from_schedule("linear", 20), data,
                      TrainConfig.from_profile(PROFILES["smoke"], batch_size=8, steps=2, eval_every=0, sample_every=0), progress=False)  # fmt: skip
    trainer.train(save_to=tmp_path / "run.pt")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="the weights became non-finite by step 2 .* was not overwritten"):
        trainer.save(tmp_path / "run.pt")
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "run.pt")["model"].values() if v.is_floating_point())


@pytest.mark.slow  # three processes, each importing torch
@pytest.mark.slow
def test_an_interrupted_run_saves_and_resumes_to_the_same_weights(tmp_path, datasets_root, sig=signal.SIGTERM):
    """SIGTERM to a real training process mid-run: the step in flight finishes, the checkpoint is
    written, and --resume continues to exactly the weights of a run that was never stopped. (The one
    subprocess test of the guard: SIGINT and SIGTERM for every run are tested in-process in test_runs.py.)"""
    env = {**os.environ, "DIFFUSION_DATA": str(datasets_root), "DIFFUSION_ARTIFACTS": str(tmp_path / "artifacts")}
    cmd = [sys.executable, "-m", "helpers", "train"] + TRAIN + ["--log-every", "1"]
    ckpts = tmp_path / "checkpoints"  # the run logs to ckpts/../logs/<name>
    run = subprocess.Popen(cmd + ["--steps", "100000", "--out", str(ckpts / "cut.pt")], env=env, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and f"{sig.name} after step" in err and "--resume" in err, err
    k = load_checkpoint(ckpts / "cut.pt")["step"]
    assert 3 <= k < 100000
    target = ["--steps", str(k + 3)]
    subprocess.run(cmd + target + ["--out", str(ckpts / "cut.pt"), "--resume"], env=env, check=True, capture_output=True)
    subprocess.run(cmd + target + ["--out", str(ckpts / "straight.pt")], env=env, check=True, capture_output=True)
    resumed, straight = (load_checkpoint(ckpts / f"{name}.pt") for name in ("cut", "straight"))
    assert resumed["step"] == straight["step"] == k + 3
    assert all(torch.equal(resumed["model"][name], straight["model"][name]) for name in straight["model"])


def test_the_fid_features_are_built_only_when_an_evaluation_falls_inside_the_run(tmp_path, data_env, monkeypatch):
    import helpers.metrics

    def no_features(*args, **kwargs):
        raise AssertionError("built the FID features (minutes of classifier training) for a run that never evaluates")

    monkeypatch.setattr(helpers.metrics, "get_features", no_features)
    assert train_cli.main(TRAIN[:-4] + ["--eval-every", "1000", "--steps", "2", "--out", str(tmp_path / "run.pt")]) == 0


def test_a_damaged_checkpoint_on_resume_is_named(tmp_path, data_env, capsys, checkpoints):
    ckpt = tmp_path / "run.pt"
    assert train_cli.main(TRAIN + ["--steps", "2", "--out", str(ckpt)]) == 0
    state = load_checkpoint(ckpt)
    del state["optimizer"]["state"]
    state["model"].pop(next(iter(state["model"])))
    torch.save(state, ckpt)
    assert train_cli.main(TRAIN + ["--steps", "3", "--out", str(ckpt), "--resume"]) == 2
    assert "is damaged or was written by another version of the course" in capsys.readouterr().err


# ---- the other commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "train", "--nproc", "0"], "--nproc must be a positive integer, got 0"),
        (["bench", "quality", "--minutes", "10", "-1"], "--minutes must be a finite number > 0, got -1.0"),
        (["bench", "sample", "--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
        (["bench", "fast"], "argument what: invalid choice: 'fast'"),
        (["distil", "--teacher", "t.pt", "--n-levels", "x"], "argument --n-levels: invalid int value: 'x'"),
        (["distil", "--profile", "smoke", "--teacher", "{uncond}", "--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
        (["distil", "--profile", "smoke", "--teacher", "{missing}"], "missing.pt"),
        (["autoencoder", "--profile", "smoke", "--steps", "0"], "steps must be a positive integer, got 0"),
        (["autoencoder", "--profile", "smoke", "--kl-weight", "-1"], "kl_weight must be a finite number >= 0, got -1.0"),
        (["pretrained", "measure", "x.pt", "--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
        (["pretrained", "measure", "{missing}"], "missing.pt"),
        (["pretrained", "export", "x.pt"], "the following arguments are required: --what, --made-by, --machine, --minutes"),
        (["pretrained", "export", "x.pt", "--what", "w", "--made-by", "m", "--machine", "c", "--minutes", "0"], "--minutes must be a finite number > 0, got 0.0"),
        (["pretrained", "check", "x.pt"], "invalid choice: 'check' (choose from 'measure', 'export')"),
    ],
)
def test_bad_input_to_every_command_is_a_one_line_error(checkpoints, tmp_path, capsys, argv, message):
    from helpers.__main__ import main

    paths = {"uncond": checkpoints["uncond"], "missing": tmp_path / "missing.pt"}
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_pretrained_exports_once_and_records_what_it_measures(checkpoints, tmp_path, capsys, monkeypatch):
    import json

    from helpers import pretrained
    from helpers.__main__ import main

    shipped = tmp_path / "shipped.pt"
    card = ["--what", "a test model", "--made-by", "03_training", "--machine", "this one", "--minutes", "1.5"]
    assert main(["pretrained", "export", str(checkpoints["uncond"]), "--out", str(shipped), *card]) == 0
    assert json.loads(shipped.with_suffix(".json").read_text())["minutes"] == 1.5
    assert main(["pretrained", "export", str(checkpoints["uncond"]), "--out", str(shipped), *card]) == 2
    assert f"{shipped} exists: delete it first, or pass --out to write elsewhere" in capsys.readouterr().err

    monkeypatch.setattr(pretrained, "measure", lambda path, guidance_scale, device: {"fid": 12.5, "guidance_scale": guidance_scale, "device": device})
    assert main(["pretrained", "measure", str(shipped), "--guidance-scale", "3", "--record"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fid": 12.5, "guidance_scale": 3.0, "device": "cpu"}
    recorded = json.loads(shipped.with_suffix(".json").read_text())
    assert recorded["quality"]["fid"] == 12.5 and recorded["minutes"] == 1.5, "the card keeps what it had"
