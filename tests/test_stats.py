"""Bootstrap intervals (helpers.stats) and the paired FID comparison built on them (helpers.metrics.fid_interval)."""

import math

import pytest
import torch

from helpers.metrics import fid_interval, fid_kid
from helpers.stats import bootstrap


def normal(n, d=1, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_interval_of_a_mean_has_the_closed_form_width():
    """For the mean of n standard normals the 95% interval is about +-1.96 / sqrt(n)."""
    x = normal(400)[:, 0]
    iv = bootstrap(lambda idx: float(x[idx].mean()), len(x), replicates=2000)
    assert iv.estimate == pytest.approx(float(x.mean()))
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * float(x.std()) / math.sqrt(len(x)), rel=0.12)
    assert iv.low < iv.estimate < iv.high


def test_the_interval_covers_the_true_mean_about_as_often_as_its_level():
    """Over 200 data sets the 90% interval of the mean holds the true mean 0 in about 90% of them
    (binomial sd 2.1%); resampling without replacement, or too few, would give zero-width intervals."""
    covered = 0
    for seed in range(200):
        x = normal(100, seed=seed)[:, 0]
        iv = bootstrap(lambda idx: float(x[idx].mean()), len(x), replicates=200, level=0.9, seed=seed)
        covered += iv.low <= 0 <= iv.high
    assert 0.82 <= covered / 200 <= 0.96


def test_the_same_seed_gives_the_same_interval_and_the_global_generator_is_untouched():
    x = normal(50)[:, 0]
    state = torch.get_rng_state()
    a, b = (bootstrap(lambda idx: float(x[idx].median()), len(x), replicates=100, seed=3) for _ in range(2))
    assert a == b
    assert torch.equal(state, torch.get_rng_state())


def test_a_paired_difference_of_one_set_with_itself_is_exactly_zero():
    real, fake = normal(600, 4, seed=1), normal(300, 4, seed=2)
    iv = fid_interval(real, fake, fake, replicates=50)
    assert iv.estimate == iv.low == iv.high == 0.0 and not iv.excludes_zero


def test_a_paired_difference_finds_a_shift_that_two_separate_fids_would_hide():
    """Model A's samples sit 0.5 from the real mean in every feature, model B's are A's moved 0.3
    further (the same noise, a systematic change): the paired interval of FID(B) - FID(A) lies above
    zero and is narrower than the spread of FID(B) alone over the same resamples, because the noise
    the two share cancels in the difference."""
    real, a = normal(2000, 4, seed=1), normal(400, 4, seed=2) + 0.5
    b = a + 0.3
    paired = fid_interval(real, b, a, replicates=300)
    single = fid_interval(real, b, replicates=300)
    assert paired.estimate == pytest.approx(fid_kid(real, b, "toy", 100).fid - fid_kid(real, a, "toy", 100).fid, rel=1e-6)
    assert paired.excludes_zero and paired.low > 0
    assert paired.high - paired.low < single.high - single.low


def test_bad_inputs_are_one_line_errors():
    real, fake = normal(100, 4), normal(50, 4)
    with pytest.raises(ValueError, match="same number of samples"):
        fid_interval(real, fake, fake[:40])
    with pytest.raises(ValueError, match="replicates"):
        bootstrap(lambda idx: 0.0, 10, replicates=1)
    with pytest.raises(ValueError, match="level"):
        bootstrap(lambda idx: 0.0, 10, level=1.5)
