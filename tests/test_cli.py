"""The one command line, ``python -m helpers <command>``: every command on the same scaffolding
(``helpers.cli``), the same refusals in the same words, and the round trips a reader makes:
train, stop, resume, sample; distil and sample in one step; train an autoencoder and resume it.

The round trips call the commands in this process, so the dataset is decoded once per session
(``helpers.data`` keeps it) and each run trains one to three steps."""

import argparse
import importlib
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cli
from helpers.__main__ import main as helpers
from helpers.checkpoints import load_autoencoder, load_checkpoint, save_checkpoint
from helpers.config import PROFILES, AutoencoderConfig, DistilConfig, TrainConfig
from helpers.paths import repo_root
from helpers.unet import UNet

MODULES = {name: importlib.import_module(command.module) for name, command in cli.COMMANDS.items()}


def run(capsys, *argv):
    """``python -m helpers *argv`` in this process: (exit code, stdout, stderr)."""
    code = helpers([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, message):
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture
def teacher(tmp_path):
    """A smoke-sized eps model with random weights: what distillation and sampling need, without training."""
    d = PROFILES["smoke"].diffusion()
    config = {**PROFILES["smoke"].model, "num_classes": None}
    return save_checkpoint(tmp_path / "teacher.pt", {"model": UNet(**config).state_dict(), "model_config": config, "diffusion": d.config(), "step": 0})


# ---- the one command line --------------------------------------------------------------------------


def test_python_m_helpers_lists_every_command_with_one_line_each():
    done = subprocess.run([sys.executable, "-m", "helpers", "--help"], capture_output=True, text=True, cwd=repo_root(), timeout=60)
    assert done.returncode == 0, done.stderr
    for name, command in cli.COMMANDS.items():
        assert any(line.split() == [name, *command.summary.split()] for line in done.stdout.splitlines()), f"{name} is not listed"
    assert set(cli.COMMANDS) >= {"train", "sample", "distil", "autoencoder", "bench", "pretrained"}


def test_an_unknown_or_missing_command_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "trian")
    assert_one_line_error(code, err, "unknown command 'trian'; choose train, sample")
    code, _, err = run(capsys)
    assert code == 2 and "commands:" in err


def _all_actions(parser):
    """(parser, action) of ``parser`` and of its subcommands' parsers."""
    for action in parser._actions:
        yield parser, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                assert isinstance(sub, cli.Parser)
                yield from _all_actions(sub)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_explains_every_flag_under_its_one_name(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        helpers([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m helpers {name} "), text.splitlines()[0]
    parser = MODULES[name].build_parser()
    assert isinstance(parser, cli.Parser), "built on helpers.cli"
    for owner, action in _all_actions(parser):
        assert action.help, f"{owner.prog}: {action.dest} has no help"
        if owner is parser:
            assert any(opt in text for opt in action.option_strings) or not action.option_strings


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_s_module_runs_the_same_command(name, capsys, monkeypatch):
    """``python -m helpers.train`` etc. (named by notebooks and cards) run the same parser and code."""
    module = cli.COMMANDS[name].module
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.warns(RuntimeWarning, match="found in sys.modules"), pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__")
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m helpers {name} ")
    assert "cli.run_command(build_parser, run, argv)" in Path(MODULES[name].__file__).read_text(), "one scaffolding"


# ---- the same refusals everywhere ------------------------------------------------------------------


def command_lines(tmp_path):
    """A command line of each command that reaches its run (not refused by the parser)."""
    return {
        "train": ["train", "--profile", "smoke", "--out", tmp_path / "run.pt"],
        "sample": ["sample", "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "grid.png"],
        "distil": ["distil", "--teacher", tmp_path / "missing.pt", "--profile", "smoke", "--out", tmp_path / "cd.pt"],
        "autoencoder": ["autoencoder", "--profile", "smoke", "--out", tmp_path / "ae.pt"],
        "bench": ["bench", "sample", "--profile", "smoke"],
        "pretrained": ["pretrained", "measure", "pretrained/03_ddpm_eps.pt"],
    }


def test_there_is_a_command_line_here_for_every_command(tmp_path):
    assert set(command_lines(tmp_path)) == set(cli.COMMANDS)


@pytest.mark.parametrize("device", ["cuda", "mps"])
@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_refuses_an_absent_device_in_one_line(name, device, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{device} is present here")
    code, out, err = run(capsys, *command_lines(tmp_path)[name], "--device", device)
    assert_one_line_error(code, err, f"device '{device}' was asked for, but")
    assert out == "" and list(tmp_path.iterdir()) == [], "refused before anything ran or was written"


def test_a_device_absent_from_diffusion_device_is_refused_too(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    monkeypatch.setenv("DIFFUSION_DEVICE", "cuda")
    for name, argv in command_lines(tmp_path).items():
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "device 'cuda' was asked for, but this PyTorch sees no CUDA GPU")


WRITERS = {"train": "eps", "distil": "consistency", "autoencoder": "autoencoder"}  # command: the checkpoint it writes by default


def test_the_commands_that_write_a_checkpoint_are_the_ones_that_resume():
    resumable = {name for name, module in MODULES.items() if any("--resume" in a.option_strings for a in module.build_parser()._actions)}
    assert resumable == set(WRITERS)


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_checkpoint_is_never_overwritten_without_resume(name, tmp_path, capsys, teacher):
    argv = {"train": ["train"], "distil": ["distil", "--teacher", teacher], "autoencoder": ["autoencoder"]}[name] + ["--profile", "smoke", "--no-progress"]
    default = PROFILES["smoke"].checkpoint(WRITERS[name])  # what the command writes without --out
    default.parent.mkdir(parents=True)
    default.write_bytes(b"a finished run")
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, f"{default} exists: pass --resume to continue it, or --out to write elsewhere")
    assert default.read_bytes() == b"a finished run"
    code, _, err = run(capsys, *argv, "--out", tmp_path / "none.pt", "--resume")
    assert_one_line_error(code, err, f"--resume, but there is no checkpoint at {tmp_path / 'none.pt'}")
    assert not (tmp_path / "none.pt").exists()


@pytest.mark.parametrize("name,config", [("train", TrainConfig), ("distil", DistilConfig), ("autoencoder", AutoencoderConfig)])
def test_every_setting_is_a_flag_and_only_the_given_ones_are_passed_on(name, config):
    parser = MODULES[name].build_parser()
    args = parser.parse_args(["--teacher", "t.pt"] if name == "distil" else [])
    assert cli.given(args, config) == {}, "settings left out come from the profile or the checkpoint"
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for field in config.__dataclass_fields__.values():
        assert cli.flag(field.name) in flags, f"{config.__name__}.{field.name} has no flag"
    args = parser.parse_args((["--teacher", "t.pt"] if name == "distil" else []) + ["--steps", "7", "--lr", "0.5"])
    assert cli.given(args, config) == {"steps": 7, "lr": 0.5}


# ---- round trips -----------------------------------------------------------------------------------


TRAIN = ["train", "--profile", "smoke", "--no-progress", "--sample-every", "0", "--eval-every", "0", "--batch-size", "8"]


def test_train_resume_and_sample_from_the_command_line(tmp_path, data_env, capsys):
    ckpt = tmp_path / "run.pt"
    common = TRAIN + ["--out", ckpt]
    # a constant learning rate, so that the run can be extended (a decay's schedule is fixed by --steps)
    assert run(capsys, *common, "--steps", "2", "--save-every", "1", "--prediction", "v", "--lr-decay", "none")[0] == 0
    assert load_checkpoint(ckpt)["step"] == 2
    code, _, err = run(capsys, *common, "--steps", "3", "--resume", "--lr", "0.5")
    assert_one_line_error(code, err, "cannot be resumed with --lr 0.5")
    code, _, err = run(capsys, *common, "--steps", "3", "--resume", "--prediction", "eps")
    assert_one_line_error(code, err, "--prediction eps (it has v)")
    code, out, _ = run(capsys, *common, "--steps", "3", "--resume")
    assert code == 0 and f"resuming {ckpt} at step 2" in out, "settings come from the checkpoint"
    state = load_checkpoint(ckpt)
    assert state["step"] == 3 and state["diffusion"]["prediction"] == "v" and len(state["history"]) > 0
    code, out, _ = run(capsys, *common, "--steps", "3", "--resume")
    assert code == 0 and "already at step 3 (target 3); nothing to do" in out

    grid = tmp_path / "grid.png"
    sample = ["sample", "--checkpoint", ckpt, "--out", grid, "--no-progress"]
    assert run(capsys, *sample, "--n", "2", "--sampler", "ddim", "--steps", "2")[0] == 0
    assert grid.read_bytes().startswith(b"\x89PNG")
    grid.unlink()
    assert_one_line_error(*run(capsys, *sample, "--class-id", "3")[::2], "holds an unconditional model")
    assert_one_line_error(*run(capsys, *sample, "--eta", "1")[::2], "--eta has no effect with --sampler ddpm")
    assert_one_line_error(*run(capsys, *sample, "--guidance-scale", "3")[::2], "--guidance-scale needs --class-id")
    assert_one_line_error(*run(capsys, "sample", "--checkpoint", tmp_path / "missing.pt", "--out", grid)[::2], "missing.pt")
    assert not grid.exists()


def test_a_flow_model_trains_resumes_and_samples_from_the_command_line_and_refuses_diffusion_samplers(tmp_path, data_env, capsys, teacher):
    ckpt = tmp_path / "flow.pt"
    common = TRAIN + ["--out", ckpt, "--prediction", "velocity", "--time-sampling", "logit_normal", "--lr-decay", "none"]
    assert run(capsys, *common, "--steps", "2")[0] == 0
    state = load_checkpoint(ckpt)
    assert state["diffusion"] == {"process": "flow", "prediction": "velocity", "time_sampling": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "time_scale": 1000.0, "coupling": "independent"}
    assert state["train"]["timesteps"] == "uniform", "the flow draws its own t; importance sampling is the diffusion process's"
    code, _, err = run(capsys, *common, "--steps", "3", "--resume", "--time-sampling", "uniform")
    assert_one_line_error(code, err, "--time-sampling uniform (it has logit_normal)")
    code, out, _ = run(capsys, *common, "--steps", "3", "--resume")
    assert code == 0 and load_checkpoint(ckpt)["step"] == 3
    assert_one_line_error(*run(capsys, *TRAIN, "--out", tmp_path / "x.pt", "--prediction", "velocity", "--schedule", "cosine")[::2], "has no noise schedule")
    assert_one_line_error(*run(capsys, *TRAIN, "--out", tmp_path / "x.pt", "--time-sampling", "uniform")[::2], "--prediction velocity")

    grid = tmp_path / "grid.png"
    sample = ["sample", "--checkpoint", ckpt, "--out", grid, "--no-progress", "--n", "2"]
    assert run(capsys, *sample, "--sampler", "flow-heun", "--steps", "2")[0] == 0 and grid.read_bytes().startswith(b"\x89PNG")
    grid.unlink()
    for other in ("ddpm", "dpmpp-2m"):
        assert_one_line_error(*run(capsys, *sample, "--sampler", other)[::2], "sample it with --sampler flow-euler or flow-heun")
    assert_one_line_error(*run(capsys, "sample", "--checkpoint", teacher, "--out", grid, "--sampler", "flow-euler")[::2], "holds a diffusion model")
    assert not grid.exists()


def test_conditional_training_from_the_command_line_remembers_classes(tmp_path, data_env, capsys):
    ckpt = tmp_path / "cfg.pt"
    args = TRAIN + ["--out", ckpt, "--steps", "1", "--num-classes", "10", "--p-uncond", "0.2", "--ema-update-every", "2"]
    assert run(capsys, *args)[0] == 0
    state = load_checkpoint(ckpt)
    assert state["model_config"]["num_classes"] == 10 and state["train"]["p_uncond"] == 0.2
    assert state["train"]["ema_update_every"] == 2, "every TrainConfig field is a flag, and reaches the run"

    # raw images for outside evaluation: guided-diffusion's .npz layout, and a folder of PNGs; a guided grid
    base = ["sample", "--checkpoint", ckpt, "--n", "3", "--sampler", "ddim", "--steps", "2", "--class-id", "-1", "--no-progress"]
    assert run(capsys, *base, "--out", tmp_path / "s.npz")[0] == 0
    saved = np.load(tmp_path / "s.npz")
    assert saved["arr_0"].dtype == np.uint8 and saved["arr_0"].shape == (3, 16, 16, 1)
    assert saved["arr_1"].tolist() == [0, 1, 2]
    assert run(capsys, *base, "--out", tmp_path / "pngs")[0] == 0
    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    assert len(pngs) == 3 and np.array_equal(np.asarray(Image.open(pngs[1])), saved["arr_0"][1, ..., 0]), "same seed, same image"
    assert run(capsys, *base, "--guidance-scale", "3", "--out", tmp_path / "g.png")[0] == 0
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")


def test_distil_resume_and_consistency_sampling_from_the_command_line(tmp_path, data_env, capsys, teacher):
    cd = tmp_path / "cd.pt"
    common = ["distil", "--teacher", teacher, "--profile", "smoke", "--out", cd, "--no-progress", "--batch-size", "8"]
    assert run(capsys, *common, "--steps", "1", "--n-levels", "6")[0] == 0
    state = load_checkpoint(cd)
    assert state["step"] == 1 and state["extra"]["consistency"]["teacher"] == str(teacher)
    assert state["extra"]["consistency"]["config"]["n_levels"] == 6, "every DistilConfig field is a flag, and reaches the run"
    assert_one_line_error(*run(capsys, *common, "--steps", "2", "--resume", "--lr", "0.5")[::2], "distilled with lr=")
    code, out, _ = run(capsys, *common, "--steps", "2", "--resume")
    assert code == 0 and load_checkpoint(cd)["step"] == 2 and f"resuming {cd} at step 1" in out
    code, _, err = run(capsys, "distil", "--teacher", cd, "--profile", "smoke", "--out", tmp_path / "x.pt", "--no-progress")
    assert_one_line_error(code, err, "is itself a consistency model")

    grid = tmp_path / "grid.png"
    code, out, _ = run(capsys, "sample", "--checkpoint", cd, "--n", "2", "--sampler", "consistency", "--nfe", "2", "--out", grid, "--no-progress")
    assert code == 0 and grid.read_bytes().startswith(b"\x89PNG") and "consistency, 2 NFE from sigma 20" in out
    assert_one_line_error(*run(capsys, "sample", "--checkpoint", cd, "--sampler", "ddim", "--out", grid)[::2], "holds a consistency model")
    code, _, err = run(capsys, "sample", "--checkpoint", teacher, "--sampler", "consistency", "--out", grid)
    assert_one_line_error(code, err, "holds a diffusion model; --sampler consistency needs one distilled")


def test_train_and_resume_the_autoencoder_from_the_command_line(tmp_path, data_env, capsys):
    out = tmp_path / "ae.pt"
    common = ["autoencoder", "--profile", "smoke", "--out", out, "--no-progress", "--batch-size", "8"]
    code, stdout, _ = run(capsys, *common, "--steps", "1", "--log-every", "1")
    assert code == 0 and f"saved {out} at step 1" in stdout
    first = load_autoencoder(out)
    assert float(first.scale_factor) != 1.0, "the scale factor is measured before the last save"
    assert_one_line_error(*run(capsys, *common, "--steps", "2", "--resume", "--lr", "0.5")[::2], "was trained with lr=")
    code, stdout, _ = run(capsys, *common, "--steps", "2", "--resume")
    assert code == 0 and f"resuming {out} at step 1" in stdout and load_checkpoint(out, kind="autoencoder")["step"] == 2
    assert load_checkpoint(out, kind="autoencoder")["train"]["log_every"] == 1, "settings come from the checkpoint"
    code, stdout, _ = run(capsys, *common, "--steps", "2", "--resume")
    assert code == 0 and "already at step 2" in stdout


# ---- the CLI tests are fast: the dataset is decoded once a process ------------------------------------


def test_a_second_load_in_the_same_process_does_not_decode_the_files_again(datasets_root, tmp_path, monkeypatch):
    from torchvision import datasets

    from helpers.data import load_dataset

    raw, shared = tmp_path / "FashionMNIST" / "raw", datasets_root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(shared):  # the archives and what torchvision extracted from them
        os.symlink(shared / name, raw / name)
    first = load_dataset("fashion_mnist", train=False, root=tmp_path, subset=64, image_size=16)
    decoded, real = [], datasets.FashionMNIST.__init__
    monkeypatch.setattr(datasets.FashionMNIST, "__init__", lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
    again = load_dataset("fashion_mnist", train=False, root=tmp_path, subset=64, image_size=16)
    assert decoded == [] and torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    whole = load_dataset("fashion_mnist", train=False, root=tmp_path, image_size=28)
    whole.images.zero_()  # a dataset owns its tensors: changing one changes no later load
    assert load_dataset("fashion_mnist", train=False, root=tmp_path, image_size=28).images.float().mean() > 0 and decoded == []
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.unlink()
    shutil.copyfile(shared / labels.name, labels)  # the files changed (a newer copy): read them again
    assert torch.equal(load_dataset("fashion_mnist", train=False, root=tmp_path, subset=64, image_size=16).images, first.images)
    assert decoded == [1]


def test_the_training_evaluator_is_built_lazily_and_leaves_the_run_s_random_stream_alone(monkeypatch):
    """Constructing the FID classifier draws initial weights (and training it, dropout masks) from the
    global generator; the run's t and noise must not depend on whether an evaluation fell inside it."""
    from helpers import metrics
    from helpers.distributed import World
    from helpers.evaluation import Evaluator

    monkeypatch.setattr(metrics, "get_features", lambda *a, **k: torch.nn.Linear(4, 4))  # draws, as the classifier does
    monkeypatch.setattr(Evaluator, "for_profile", classmethod(lambda cls, *a, **k: (torch.rand(2), lambda model: {"fid": 1.0})[1]))
    evaluate = MODULES["train"].lazy_evaluator(PROFILES["smoke"], None, torch.device("cpu"), None, World())
    torch.manual_seed(0)
    evaluate(None)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))

