import numpy as np
import pytest
from PIL import Image

from helpers import distil as distil_cli
from helpers import sample as sample_cli
from helpers import train as train_cli
from helpers.checkpoints import load_checkpoint


def test_help_explains_every_flag(capsys):
    for cli in (train_cli, sample_cli, distil_cli):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for action in cli.build_parser()._actions:
            assert action.help, f"{action.dest} has no help"
            assert any(opt in text for opt in action.option_strings)


def test_train_resume_and_sample_from_the_command_line(tmp_path, data_env, capsys):
    ckpt = tmp_path / "run.pt"
    common = ["--profile", "smoke", "--out", str(ckpt), "--no-progress", "--sample-every", "0", "--eval-every", "0", "--batch-size", "8"]
    assert train_cli.main(common + ["--steps", "4", "--save-every", "2", "--prediction", "v"]) == 0
    assert load_checkpoint(ckpt)["step"] == 4
    assert train_cli.main(common + ["--steps", "6"]) == 2, "refuses to overwrite without --resume"
    assert train_cli.main(common + ["--steps", "6", "--resume", "--lr", "0.5"]) == 2
    assert "cannot be resumed with --lr 0.5" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "6", "--resume", "--prediction", "eps"]) == 2
    assert "--prediction eps (it has v)" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "6", "--resume"]) == 0, "settings come from the checkpoint"
    state = load_checkpoint(ckpt)
    assert state["step"] == 6 and state["diffusion"]["prediction"] == "v" and len(state["history"]) > 0
    assert "resuming" in capsys.readouterr().out
    assert train_cli.main(common + ["--steps", "6", "--resume"]) == 0
    assert "already at step 6" in capsys.readouterr().out

    out = tmp_path / "grid.png"
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--sampler", "ddim", "--steps", "5", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert sample_cli.main(["--checkpoint", str(ckpt), "--class-id", "3", "--out", str(out)]) == 2
    assert sample_cli.main(["--checkpoint", str(ckpt), "--eta", "1", "--out", str(out)]) == 2, "--eta needs --sampler ddim"
    assert "--eta has no effect with --sampler ddpm" in capsys.readouterr().err
    assert sample_cli.main(["--checkpoint", str(ckpt), "--guidance-scale", "3", "--out", str(out)]) == 2
    assert "--guidance-scale needs --class-id" in capsys.readouterr().err
    assert sample_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


def test_conditional_training_from_the_command_line_remembers_classes(tmp_path, data_env):
    ckpt = tmp_path / "cfg.pt"
    args = ["--profile", "smoke", "--out", str(ckpt), "--no-progress", "--steps", "2", "--batch-size", "8",
            "--sample-every", "0", "--eval-every", "0", "--num-classes", "10", "--p-uncond", "0.2", "--ema-update-every", "2"]  # fmt: skip
    assert train_cli.main(args) == 0
    state = load_checkpoint(ckpt)
    assert state["model_config"]["num_classes"] == 10 and state["train"]["p_uncond"] == 0.2
    assert state["train"]["ema_update_every"] == 2, "every TrainConfig field is a flag, and reaches the run"
    out = tmp_path / "g.png"
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "2", "--sampler", "ddim", "--steps", "2", "--class-id", "-1", "--guidance-scale", "3", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")

    # raw images for outside evaluation: guided-diffusion's .npz layout, and a folder of PNGs
    base = ["--checkpoint", str(ckpt), "--n", "3", "--sampler", "ddim", "--steps", "2", "--class-id", "-1"]
    assert sample_cli.main(base + ["--out", str(tmp_path / "s.npz")]) == 0
    saved = np.load(tmp_path / "s.npz")
    assert saved["arr_0"].dtype == np.uint8 and saved["arr_0"].shape == (3, 16, 16, 1)
    assert saved["arr_1"].tolist() == [0, 1, 2]
    assert sample_cli.main(base + ["--out", str(tmp_path / "pngs")]) == 0
    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    assert len(pngs) == 3 and np.array_equal(np.asarray(Image.open(pngs[1])), saved["arr_0"][1, ..., 0]), "same seed, same image"


def test_distil_resume_and_consistency_sampling_from_the_command_line(tmp_path, data_env, capsys):
    teacher, cd = tmp_path / "teacher.pt", tmp_path / "cd.pt"
    assert train_cli.main(["--profile", "smoke", "--out", str(teacher), "--no-progress", "--steps", "2", "--batch-size", "8",
                           "--sample-every", "0", "--eval-every", "0"]) == 0  # fmt: skip
    common = ["--teacher", str(teacher), "--profile", "smoke", "--out", str(cd), "--no-progress", "--batch-size", "8"]
    assert distil_cli.main(common + ["--steps", "2", "--n-levels", "6"]) == 0
    state = load_checkpoint(cd)
    assert state["step"] == 2 and state["extra"]["consistency"]["teacher"] == str(teacher)
    assert state["extra"]["consistency"]["config"]["n_levels"] == 6, "every DistilConfig field is a flag, and reaches the run"
    assert distil_cli.main(common + ["--steps", "3"]) == 2, "refuses to overwrite without --resume"
    assert distil_cli.main(common + ["--steps", "3", "--resume", "--lr", "0.5"]) == 2
    assert "distilled with lr=" in capsys.readouterr().err
    assert distil_cli.main(common + ["--steps", "3", "--resume"]) == 0
    assert load_checkpoint(cd)["step"] == 3 and "resuming" in capsys.readouterr().out
    assert distil_cli.main(["--teacher", str(cd), "--profile", "smoke", "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    assert "is itself a consistency model" in capsys.readouterr().err

    out = tmp_path / "grid.png"
    assert sample_cli.main(["--checkpoint", str(cd), "--n", "4", "--sampler", "consistency", "--nfe", "2", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and "consistency, 2 NFE from sigma 20" in capsys.readouterr().out
    assert sample_cli.main(["--checkpoint", str(cd), "--n", "4", "--sampler", "ddim", "--out", str(out)]) == 2
    assert "holds a consistency model" in capsys.readouterr().err
    assert sample_cli.main(["--checkpoint", str(teacher), "--n", "4", "--sampler", "consistency", "--out", str(out)]) == 2
    assert "holds a diffusion model; --sampler consistency needs one distilled" in capsys.readouterr().err


def test_building_the_training_evaluator_leaves_the_run_s_random_stream_alone(monkeypatch):
    """Constructing the FID classifier draws initial weights (and training it, dropout masks) from the
    global generator; the run's t and noise must not depend on whether an evaluation fell inside it."""
    import torch

    from helpers import metrics
    from helpers.config import PROFILES
    from helpers.distributed import World
    from helpers.evaluation import Evaluator

    monkeypatch.setattr(metrics, "get_features", lambda *a, **k: torch.nn.Linear(4, 4))  # draws, as the classifier does
    monkeypatch.setattr(Evaluator, "for_profile", classmethod(lambda cls, *a, **k: (torch.rand(2), lambda model: {"fid": 1.0})[1]))
    evaluate = train_cli.lazy_evaluator(PROFILES["smoke"], None, torch.device("cpu"), None, World())
    torch.manual_seed(0)
    evaluate(None)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
