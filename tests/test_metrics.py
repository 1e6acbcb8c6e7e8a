import dataclasses
from urllib.error import URLError

import pytest
import torch

import helpers.classifier as classifier_mod
import helpers.metrics as M
from helpers.checkpoints import CheckpointError
from helpers.classifier import Classifier, classifier_scores, load_or_train_classifier, train_classifier
from helpers.config import PROFILES
from helpers.diffusion import Diffusion
from helpers.evaluation import Evaluator, pixel_diversity, x0_error_by_timestep
from helpers.metrics import ClassifierFeatures, InceptionUnavailableError, fid_kid, get_features

from conftest import network_output, random_unet


def gaussian(n, d=8, seed=0, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_fid_of_a_set_against_itself_is_zero():
    a = gaussian(500)
    q = fid_kid(a, a, "toy", kid_subset_size=100)
    assert abs(q.fid) < 1e-6 * a.var(0).sum().item()


def test_fid_of_a_shifted_set_is_the_squared_shift():
    # Same covariance, means apart by delta: FID = ||delta||^2 exactly
    a = gaussian(400)
    delta = torch.linspace(-1, 1, 8, dtype=torch.float64)
    q = fid_kid(a, a + delta, "toy", kid_subset_size=100)
    assert q.fid == pytest.approx(float(delta.square().sum()), rel=1e-6)


def test_fid_of_two_diagonal_gaussians_with_equal_means_is_the_covariance_closed_form():
    """Equal means, so FID = Tr(S1 + S2 - 2 (S1 S2)^{1/2}) alone (Heusel et al. 2017, eq. 6; Dowson &
    Landau 1982). For diagonal S1 = diag(s1), S2 = diag(s2) it is sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i))
    = sum_i (sd1_i - sd2_i)^2 with sd = sqrt(s).

    Monte-Carlo tolerance: n draws per set estimate each sd with variance sd^2 / (2n), so by the delta
    method FID_hat has standard error sqrt(sum_i 4 (sd1_i - sd2_i)^2 (sd1_i^2 + sd2_i^2) / (2n)) (0.03
    here, 0.6% of the value); allow 5 of them. The estimator's bias (the sample means' spread,
    sum_i (s1_i + s2_i) / n, and the off-diagonal sample covariances, O(d^2 s / n)) is about 1e-3."""
    n = 100_000
    sd1 = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    sd2 = torch.tensor([2.0, 0.5, 3.0, 2.0], dtype=torch.float64)  # the last dimension agrees: it adds nothing
    a, b = gaussian(n, d=4, seed=10) * sd1, gaussian(n, d=4, seed=11) * sd2
    s1, s2 = sd1.square(), sd2.square()
    closed = float((s1 + s2 - 2 * (s1 * s2).sqrt()).sum())  # = 1 + 0.25 + 4 + 0 = 5.25
    se = float((4 * (sd1 - sd2).square() * (s1 + s2) / (2 * n)).sum().sqrt())
    q = fid_kid(a, b, "toy", kid_subset_size=100)
    assert q.fid == pytest.approx(closed, abs=5 * se), f"FID {q.fid:.4f}, closed form {closed:.4f} (standard error {se:.4f})"


def test_noised_or_shifted_sets_score_clearly_worse_than_a_fresh_sample():
    real, fresh = gaussian(1000, seed=1), gaussian(1000, seed=2)
    same = fid_kid(real, fresh, "toy", 200)
    noised = fid_kid(real, fresh + gaussian(1000, seed=3), "toy", 200)
    shifted = fid_kid(real, fresh + 0.5, "toy", 200)
    assert noised.fid > 5 * same.fid and shifted.fid > 5 * same.fid
    assert noised.kid > same.kid + 5 * same.kid_std and shifted.kid > same.kid + 5 * same.kid_std


def test_kid_is_unbiased_near_zero_for_two_halves_of_the_same_data():
    data = gaussian(2000, seed=4)
    q = fid_kid(data[:1000], data[1000:], "toy", kid_subset_size=500, kid_subsets=100)
    assert abs(q.kid) < 3 * q.kid_std + 1e-4
    assert "toy features; 1000 generated vs 1000 real images; KID subsets of 500" in str(q)


def test_too_few_samples_and_mismatched_features_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2 images per set"):
        fid_kid(gaussian(10), gaussian(1), "toy", 1)
    with pytest.raises(ValueError, match="KID subsets of 50 need at least that many images per set; got 100 real and 20 generated"):
        fid_kid(gaussian(100), gaussian(20), "toy", 50)
    with pytest.raises(ValueError, match="same d"):
        fid_kid(gaussian(10, d=4), gaussian(10, d=5), "toy", 5)
    feats = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    with pytest.raises(ValueError, match=r"need images \[B, 1, 16, 16\], got \(2, 3, 16, 16\)"):
        feats(torch.zeros(2, 3, 16, 16))


@pytest.mark.slow
def test_classifier_learns_fashion_mnist(data_env):
    from helpers.data import load_dataset

    train = load_dataset("fashion_mnist", True, 16, subset=3000).tensors()
    test = load_dataset("fashion_mnist", False, 16, subset=1000).tensors()
    model, acc = train_classifier(train, test, epochs=3, width=16, progress=False)
    assert acc > 0.7, f"a CNN on 3,000 images should beat 70% (chance is 10%), got {acc:.1%}"


def test_the_profiles_classifier_is_trained_once_and_then_loaded(data_env, monkeypatch):
    """The cache, not the learning (the test above): the training is cut to the first 512 images,
    so that the first call trains in a fraction of a second; the second loads the same weights, and
    another classifier width is another cache entry."""
    from helpers.classifier import accuracy
    from helpers.data import load_dataset

    calls = []
    real_train = classifier_mod.train_classifier

    def first_images(train, test, *args, **kwargs):
        calls.append(len(train[0]))
        return real_train((train[0][:512], train[1][:512]), test, *args, **{**kwargs, "progress": False})

    monkeypatch.setattr(classifier_mod, "train_classifier", first_images)
    profile = dataclasses.replace(PROFILES["smoke"], classifier_epochs=1, classifier_width=8)
    first, info = load_or_train_classifier(profile, progress=False)
    again, info_again = load_or_train_classifier(profile, progress=False)
    assert calls == [60_000], "one training, on the whole training split; the second call loads the cached classifier"
    assert info == info_again and (info["train_images"], info["test_images"], info["width"]) == (60_000, 10_000, 8)
    test = load_dataset("fashion_mnist", False, 16).tensors()
    assert info["test_accuracy"] == accuracy(again, *test), "the recorded accuracy is the loaded classifier's on the test split"
    x = test[0][:8]
    assert torch.equal(first(x), again(x))
    wider, _ = load_or_train_classifier(dataclasses.replace(profile, classifier_width=4), progress=False)
    assert calls == [60_000, 60_000] and wider.config["width"] == 4, "another width must not be served the cached classifier"


def test_inception_features_from_a_local_weights_file(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    # Build an Inception-v3 with random weights and save it where a user would put the real file.
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    monkeypatch.setenv("DIFFUSION_FID_WEIGHTS", str(tmp_path / "inception.pth"))
    feats = get_features(PROFILES["smoke"], kind="auto", verbose=False)
    assert feats.name == "inception-v3" and feats.dim == 2048
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    f = feats(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    assert torch.allclose(f[0], feats(x[:1].expand(-1, 3, -1, -1))[0]), "grey images are repeated over RGB"
    # another weights file gets another cache key, so cached real features never go stale
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    torch.save(net.state_dict(), tmp_path / "other.pth")
    monkeypatch.setenv("DIFFUSION_FID_WEIGHTS", str(tmp_path / "other.pth"))
    assert get_features(PROFILES["smoke"], kind="auto", verbose=False).key != feats.key


def test_inception_without_weights_or_network_is_an_error_or_a_fallback(monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    monkeypatch.delenv("DIFFUSION_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    with pytest.raises(InceptionUnavailableError, match="DIFFUSION_FID_WEIGHTS"):
        get_features(PROFILES["smoke"], kind="inception", verbose=False)
    fake = Classifier(1, 16, width=4, feature_dim=8)
    monkeypatch.setattr(M, "load_or_train_classifier", lambda *a, **k: (fake, {"test_accuracy": 0.5, "test_images": 1}))
    feats = get_features(PROFILES["smoke"], kind="auto", verbose=False)
    assert feats.name.startswith("classifier (fashion_mnist, 16px)") and feats.dim == 8


def test_evaluator_scores_a_model_and_names_its_features_and_counts():
    torch.manual_seed(0)
    feats = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    real = M.extract(feats, torch.rand(64, 1, 16, 16) * 2 - 1)
    ev = Evaluator(Diffusion.from_schedule("linear", 20), feats, real, n=40, steps=4, batch_size=16, kid_subset_size=20)
    row = ev(random_unet())
    assert row["features"] == feats.name and (row["n_fake"], row["n_real"], row["kid_subset_size"]) == (40, 64, 20)
    assert ev(random_unet())["fid"] == row["fid"], "same model, same seed: same number"
    assert ev.sampler.spacing == "trailing", "the default grid starts at T - 1"
    ev.spacing = "leading"  # 15, 10, 5, 0 instead of 19, 14, 9, 4
    leading = ev(random_unet())["fid"]
    assert leading != row["fid"]
    ev.eta = 1.0  # fresh noise at every step: other images from the same x_T
    assert ev(random_unet())["fid"] != leading


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_an_evaluator_for_a_profile_samples_at_the_profiles_eta(monkeypatch, name):
    """laptop and smoke score DDIM at eta = 1 (docs/laptop-recipe.md, section 9), the CUDA profiles at
    eta = 0: the same x_T gives other images than at eta = 0 exactly when the profile's eta is not 0."""
    import helpers.evaluation as evaluation_mod

    monkeypatch.setattr(evaluation_mod, "real_features", lambda features, profile: torch.zeros(4, 2))
    profile, model = PROFILES[name], random_unet()
    make = lambda **kw: Evaluator.for_profile(profile, Diffusion.from_schedule("linear", 20), None, floor=None, n=4, steps=4, batch_size=4, **kw)
    assert make().sampler.eta == profile.sample.ddim_eta
    at_profile, at_zero = make().images(model)[0], make(eta=0.0).images(model)[0]
    assert torch.equal(at_profile, at_zero) == (profile.sample.ddim_eta == 0.0)


def test_pixel_diversity_and_classifier_scores():
    x = torch.randn(1, 1, 4, 4).repeat(5, 1, 1, 1)
    assert pixel_diversity(x) == 0
    y = torch.randn(4000, 1, 2, 2) * 0.5
    assert pixel_diversity(y) == pytest.approx(0.25, rel=0.05)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):  # always class 1, with probability softmax([0, ln 3]) = 3/4
            return torch.tensor([[0.0, torch.log(torch.tensor(3.0))]]).repeat(len(x), 1)

    s = classifier_scores(Fixed(), torch.zeros(4, 1, 2, 2), torch.tensor([1, 1, 0, 1]))
    assert s["accuracy"] == 0.75 and s["confidence"] == pytest.approx((3 * 0.75 + 0.25) / 4)


def test_x0_error_by_timestep_is_the_same_quantity_for_every_parameterisation():
    # An oracle that outputs the true answer in each parameterisation has zero x0 error at every t.
    x0 = torch.rand(6, 1, 16, 16) * 2 - 1
    for prediction in ("eps", "x0", "v"):
        d = Diffusion.from_schedule("cosine", 50, prediction=prediction)

        class Oracle(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.p = torch.nn.Parameter(torch.zeros(()))

            def forward(self, x_t, t):  # knows x0; one timestep per batch
                return network_output(d, x_t, int(t[0]), x0)

        errors = x0_error_by_timestep(Oracle(), d, x0, [0, 25, 49])
        assert max(errors) < 1e-6, (prediction, errors)
    zero = x0_error_by_timestep(random_unet(), Diffusion.from_schedule("cosine", 50, prediction="x0"), x0, [10])
    assert zero[0] > 0.01


def test_fid_kid_leaves_every_global_generator_alone(monkeypatch):
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(("cuda", seed)))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: reseeded.append(("mps", seed)))
    state = torch.get_rng_state()
    fid_kid(gaussian(50), gaussian(50, seed=1), "toy", 20)
    assert torch.equal(torch.get_rng_state(), state) and reseeded == []


def test_real_features_are_cached_per_feature_network(data_env):
    profile = dataclasses.replace(PROFILES["smoke"], sample=dataclasses.replace(PROFILES["smoke"].sample, fid_real=32))
    torch.manual_seed(0)
    a = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    b = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")  # retrained: new weights
    fa, fb = M.real_features(a, profile, verbose=False), M.real_features(b, profile, verbose=False)
    assert a.name == b.name and a.key != b.key
    assert not torch.allclose(fa, fb), "b must not be served a's cached features"
    assert torch.equal(M.real_features(a, profile, verbose=False), fa)
    assert len(list((profile.artifacts / "fid").iterdir())) == 2


def test_inception_score_counts_confidently_predicted_equally_used_classes():
    # IS = exp(E KL(p(y|x) || p(y))): one-hot predictions spread evenly over K classes give
    # exp(log K) = K; the same prediction for every image gives p(y|x) = p(y), so exp(0) = 1.
    k = 4
    confident = 50.0 * torch.nn.functional.one_hot(torch.arange(400) % k, 10).double()
    assert M.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    assert M.inception_score(confident[:1].repeat(400, 1), splits=1)[0] == pytest.approx(1.0, abs=1e-9)
    uncertain = torch.zeros(400, 10, dtype=torch.float64)  # uniform p(y|x): nothing is recognised
    assert M.inception_score(uncertain, splits=4)[0] == pytest.approx(1.0, abs=1e-9)


def test_real_floor_sits_far_below_a_damaged_copy_of_the_same_images(data_env):
    smoke = PROFILES["smoke"]
    profile = dataclasses.replace(smoke, sample=dataclasses.replace(smoke.sample, fid_real=512))
    torch.manual_seed(0)
    feats = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    real = M.real_features(feats, profile, verbose=False)
    floor = M.real_floor(feats, profile, real, n=200, kid_subset_size=100, verbose=False)
    assert floor.sets == 5 and floor.fid_std > 0
    heldout, _ = M.heldout_features(feats, profile, verbose=False)
    assert len(heldout) == 10_000, "the floor draws on the whole test split"
    # the same held-out images, blurred by noise, score far above the floor
    from helpers.data import load_dataset

    x, _ = load_dataset("fashion_mnist", False, 16).tensors()
    noisy = M.extract(feats, (x[:200] + 0.5 * torch.randn_like(x[:200])).clamp(-1, 1))
    damaged = fid_kid(real, noisy, feats.name, 100)
    assert damaged.fid > floor.fid + 5 * floor.fid_std
    q = dataclasses.replace(damaged, floor=floor)
    assert f"real-data floor {floor.fid:.3f}" in str(q)


class PixelFeatures(M.Features):
    """Stand-in features whose outputs a test can compute from the images: the first 8 pixels as the
    features and 20 x the first 10 as the class logits (confident, and different for each image,
    where a random classifier gives nearly the same logits to every sample and an IS of 1.00001)."""

    name, key, dim = "pixels", "pixels", 8

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # where extract() finds the device

    def check(self, x):
        pass

    @torch.no_grad()
    def both(self, x):
        flat = x.flatten(1)
        return flat[:, :8], 20 * flat[:, :10]


def test_evaluator_rows_carry_the_floor_and_the_inception_score():
    torch.manual_seed(0)
    feats = PixelFeatures()
    real = M.extract(feats, torch.rand(64, 1, 16, 16) * 2 - 1)
    floor = M.Floor(fid=1.5, fid_std=0.1, kid=0.001, inception_score=3.0, sets=2)
    ev = Evaluator(Diffusion.from_schedule("linear", 20), feats, real, n=40, steps=4, batch_size=16, kid_subset_size=20, floor=floor)
    model = random_unet()
    row = ev(model)
    assert (row["fid_floor"], row["fid_floor_std"], row["is_floor"]) == (1.5, 0.1, 3.0)
    # the row's IS is that of the logits of these very samples (10 splits of 4), not of their features
    images, _ = ev.images(model)
    logits = (20 * images.flatten(1)[:, :10]).double()
    assert row["is"] == pytest.approx(M.inception_score(logits, splits=10)[0], rel=1e-6)


def test_a_damaged_feature_cache_is_named_with_what_to_do(data_env, _isolated_artifacts):
    feats = ClassifierFeatures(Classifier(1, 16, width=4, feature_dim=8), "fashion_mnist")
    first = M.real_features(feats, PROFILES["smoke"], n=8, verbose=False)
    (cache,) = (_isolated_artifacts / "smoke" / "fid").glob("real_*.pt")
    assert torch.equal(M.real_features(feats, PROFILES["smoke"], n=8), first), "read back from the cache"
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{cache} is corrupt, truncated .*; delete this cache file and it is rebuilt"):
        M.real_features(feats, PROFILES["smoke"], n=8)


def test_every_batch_starts_from_the_same_noise_under_every_sampler():
    """A stochastic sampler's extra draws stay within its batch: with eta = 1 every batch still starts
    from the x_T that eta = 0 starts from (with one shared generator, batch 2 onwards would not)."""
    firsts: dict[float, list[torch.Tensor]] = {0.0: [], 1.0: []}

    class FirstInputs(torch.nn.Module):
        in_channels, image_size = 1, 4

        def __init__(self, eta):
            super().__init__()
            self.eta, self.anchor = eta, torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            if int(t[0]) == 19:  # the first step of each batch on the trailing grid
                firsts[self.eta].append(x.clone())
            return torch.zeros_like(x)

    feats = PixelFeatures()
    ev = Evaluator(Diffusion.from_schedule("linear", 20), feats, M.extract(feats, torch.rand(16, 1, 4, 4)), n=12, steps=4, batch_size=5, kid_subset_size=4)
    for eta in firsts:
        ev.eta = eta
        ev.images(FirstInputs(eta))
    assert len(firsts[1.0]) == 3
    for a, b in zip(firsts[0.0], firsts[1.0]):
        assert torch.equal(a, b)
