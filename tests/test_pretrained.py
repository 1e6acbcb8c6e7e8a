"""Quality regression: the shipped laptop models, sampled with the samplers and schedules of
today's code, must still score what their cards recorded. A broken sampler coefficient, schedule
or U-Net change sends these numbers far off."""

import pytest

from helpers.config import PROFILES
from helpers.paths import card, pretrained_dir
from helpers.pretrained import measure


def assert_scores_its_card(name: str) -> None:
    """The shipped model ``name`` measured now against its card: the same seed, classifier, sampler
    and sample count give, on the CPU, the same FID up to float noise; allow the larger of 10% and
    three floor spreads."""
    path = pretrained_dir() / name
    recorded = card(path)["quality"]
    now = measure(path)
    assert (now["samples"], now["features"], now["sampler"]) == (recorded["samples"], recorded["features"], recorded["sampler"])
    bound = recorded["fid"] + max(0.1 * recorded["fid"], 3 * recorded["fid_floor_std"])
    assert now["fid"] <= bound, f"{name}: FID {now['fid']:.1f} is above the bound {bound:.1f} (recorded {recorded['fid']:.1f})"


def test_the_shipped_eps_model_still_scores_its_recorded_fid(data_env):
    assert_scores_its_card("03_ddpm_eps.pt")


def test_the_shipped_conditional_model_draws_the_asked_for_class(data_env):
    path = pretrained_dir() / "08_cfg.pt"
    recorded = card(path)["quality"]
    now = measure(path, guidance_scale=recorded["guidance_scale"])
    assert now["class_accuracy"] >= recorded["class_accuracy"] - 0.05
    assert now["class_accuracy"] > 0.5, "most samples must look like the class asked for"


def test_laptop_notebooks_fall_back_to_the_shipped_models_and_say_so(capsys):
    laptop = PROFILES["laptop"]
    path = laptop.require("eps")  # artifacts/ is empty in tests
    assert path == pretrained_dir() / "03_ddpm_eps.pt"
    assert "using the shipped pretrained/03_ddpm_eps.pt (notebook 03_training makes it in about" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="run notebook 03_training first"):
        PROFILES["smoke"].require("eps")


def test_the_shipped_consistency_model_still_scores_its_recorded_one_step_fid(data_env):
    assert_scores_its_card("11_cd.pt")
