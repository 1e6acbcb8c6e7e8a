"""Quality regression: the shipped laptop models, sampled with the samplers and schedules of
today's code, must still score what their cards recorded. A broken sampler coefficient, schedule
or U-Net change sends these numbers far off.

Each measurement samples 500 images (the cards' count) and scores them against the features of
10,000 training and 10,000 held-out test images. ``helpers.metrics`` caches those features under
``artifacts/laptop/fid/``; the measuring tests share one artifacts folder, so the first extracts
them and the others read them back, as the notebooks do."""

import os
from pathlib import Path

import pytest
import torch

from helpers.config import PROFILES
from helpers.paths import card, pretrained_dir
from helpers.pretrained import measure, regression_evaluator


@pytest.fixture(autouse=True)
def _every_core():
    """These tests sample the shipped models, the heaviest computation of the suite, and nothing
    else runs beside them: here torch uses every core (the other tests run on one thread, see
    conftest; on an idle 2-core CPU two threads sample about 1.6x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def _laptop_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("laptop-artifacts")


@pytest.fixture
def shared_artifacts(_laptop_artifacts: Path, data_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One artifacts folder for this module's measurements (in place of each test's own)."""
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(_laptop_artifacts))
    return _laptop_artifacts


def measure_with_cached_features(path: Path, artifacts: Path, **kw) -> dict:
    """``measure(path, **kw)``, then check that the feature cache holds one file of training-image
    and one of held-out features: a later measurement found and reused the first one's."""
    now = measure(path, **kw)
    cached = sorted(p.name.split("_")[0] for p in (artifacts / "laptop" / "fid").iterdir())
    assert cached == ["heldout", "real"], f"one cache file each, reused across measurements; found {cached}"
    return now


def assert_scores_its_card(name: str, artifacts: Path) -> None:
    """The shipped model ``name`` measured now against its card: the same seed, classifier, sampler
    and sample count give, on the CPU, the same FID up to float noise; allow the larger of 10% and
    three floor spreads."""
    path = pretrained_dir() / name
    recorded = card(path)["quality"]
    now = measure_with_cached_features(path, artifacts)
    assert (now["samples"], now["features"], now["sampler"]) == (recorded["samples"], recorded["features"], recorded["sampler"])
    bound = recorded["fid"] + max(0.1 * recorded["fid"], 3 * recorded["fid_floor_std"])
    assert now["fid"] <= bound, f"{name}: FID {now['fid']:.1f} is above the bound {bound:.1f} (recorded {recorded['fid']:.1f})"


@pytest.mark.slow
def test_the_shipped_eps_model_still_scores_its_recorded_fid(shared_artifacts):
    assert_scores_its_card("03_ddpm_eps.pt", shared_artifacts)


@pytest.mark.slow
def test_the_shipped_conditional_model_draws_the_asked_for_class(shared_artifacts):
    """The card's class accuracy is over 500 guided samples, two batches of 250 from one seed
    (``measure``); this draws the first 100 alone, the same 100 images (DDIM at eta 0 draws only
    x_T, and a generator fills a smaller tensor with the first numbers of a larger one; labels
    0..99 mod 10, 10 a class), at a fifth of the cost. Their accuracy differs from the card's by
    the spread of 100 drawn from the 500, sqrt(p (1 - p) / 100 * 400 / 499) = 0.027 at p = 0.9, so
    the 0.1 allowed is 3.7 of those; a broken sampler or guidance falls far below."""
    from helpers.checkpoints import load_model
    from helpers.classifier import classifier_scores, load_or_train_classifier
    from helpers.metrics import get_features

    path = pretrained_dir() / "08_cfg.pt"
    recorded = card(path)["quality"]
    laptop = PROFILES["laptop"]
    first = 100
    assert recorded["samples"] == 2 * laptop.sample.batch_size, "the card's samples are two of the evaluator's batches"
    model, d, _ = load_model(path)
    evaluator = regression_evaluator(d, get_features(laptop, verbose=False), n=first, floor=None)
    assert f"{evaluator.sampler}, seed {evaluator.seed}" == recorded["sampler"]
    images, labels = evaluator.images(model, recorded["guidance_scale"])
    classifier, _ = load_or_train_classifier(laptop, progress=False)
    accuracy = classifier_scores(classifier, images, labels)["accuracy"]
    assert accuracy >= recorded["class_accuracy"] - 0.1, f"{accuracy:.1%} of the first {first} samples against the card's {recorded['class_accuracy']:.1%}"
    assert accuracy > 0.5, "most samples must look like the class asked for"


def test_laptop_notebooks_fall_back_to_the_shipped_models_and_say_so(capsys):
    laptop = PROFILES["laptop"]
    path = laptop.require("eps")  # artifacts/ is empty in tests
    assert path == pretrained_dir() / "03_ddpm_eps.pt"
    assert "using the shipped pretrained/03_ddpm_eps.pt (notebook 03_training makes it in about" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="run notebook 03_training first"):
        PROFILES["smoke"].require("eps")


@pytest.mark.slow
def test_the_shipped_consistency_model_still_scores_its_recorded_one_step_fid(shared_artifacts):
    assert_scores_its_card("11_cd.pt", shared_artifacts)


@pytest.mark.slow
def test_the_shipped_flow_model_still_scores_its_recorded_fid(shared_artifacts):
    assert_scores_its_card("12_flow.pt", shared_artifacts)


@pytest.mark.slow
def test_the_shipped_text_model_still_obeys_its_recorded_prompts(shared_artifacts):
    """``measure_text``: 64 samples per prompt from the card's seeds, decoded by the shipped autoencoder the
    checkpoint records (by fingerprint). The same code gives the same shares up to float noise; allow
    three binomial spreads, 3 sqrt(p (1 - p) / 64), and 0.05 more. A broken guidance, cross-attention or
    decoder sends the words' share to what unguided samples give (about half, or less for two words)."""
    import math

    path = pretrained_dir() / "13_text.pt"
    recorded = card(path)["quality"]
    now = measure(path)
    assert (now["sampler"], now["samples_per_prompt"], now["guidance_scale"]) == (recorded["sampler"], recorded["samples_per_prompt"], recorded["guidance_scale"])
    for prompt, want in recorded["prompts"].items():
        for key, p in want.items():
            bound = p - 3 * math.sqrt(p * (1 - p) / now["samples_per_prompt"]) - 0.05
            assert now["prompts"][prompt][key] >= bound, f"{prompt!r}: {key} {now['prompts'][prompt][key]:.2f} below {bound:.2f} (card {p:.2f})"


def test_the_cards_are_measured_at_eta_0_whatever_the_notebooks_use(monkeypatch):
    """The laptop evaluator samples at eta = 1; a card's regression number stays deterministic given x_T."""
    import helpers.evaluation as evaluation_mod
    from helpers.diffusion import Diffusion

    monkeypatch.setattr(evaluation_mod, "real_features", lambda features, profile: torch.zeros(4, 2))
    assert PROFILES["laptop"].sample.ddim_eta != 0
    evaluator = regression_evaluator(Diffusion.from_schedule("linear", 20), None, floor=None)
    assert evaluator.sampler.eta == 0.0 and evaluator.steps == 10 and evaluator.n == PROFILES["laptop"].sample.fid_samples
