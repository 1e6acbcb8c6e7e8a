"""Sample quality as numbers: FID, KID and the Inception Score of image features, with the real-data floor.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to features of real
and generated images,

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2}),

KID (Binkowski et al. 2018) an unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over
random subsets, and the Inception Score (Salimans et al. 2016) exp(E_x KL(p(y|x) || p(y))) of the
same network's class predictions. Which features matters: Inception-v3's pool features (the published scale) where
its weights can be had, else the penultimate layer of a classifier of the dataset
(``helpers.classifier``); the two scales are not comparable, so every result names its features,
its sample counts and its KID subset size. Every score also carries its real-data floor: what
held-out real images (the test split) score against the same reference set with the same
features and counts, and its spread over disjoint held-out sets. A model cannot be told apart
from real data below the floor. Two models are compared by ``fid_interval``: a bootstrap interval
of their FID difference on paired samples, not by the floor's spread.

Features are extracted here (real ones once, then cached under ``artifacts/<profile>/fid/``);
torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` do the statistics.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from helpers.checkpoints import atomic_torch_save, safe_load
from helpers.classifier import Classifier, load_or_train_classifier
from helpers.config import Profile
from helpers.device import cpu_generator
from helpers.stats import Interval, bootstrap

__all__ = [
    "Features",
    "InceptionFeatures",
    "ClassifierFeatures",
    "InceptionUnavailableError",
    "get_features",
    "extract",
    "extract_both",
    "real_features",
    "heldout_features",
    "Floor",
    "real_floor",
    "Quality",
    "fid_kid",
    "inception_score",
    "fid_interval",
]


class InceptionUnavailableError(RuntimeError):
    """Inception-v3's weights are neither on disk nor downloadable."""


def weights_digest(module: nn.Module) -> str:
    """The first 12 hex digits of a SHA-1 over a module's weights: changes with any weight."""
    h = hashlib.sha1()
    for value in module.state_dict().values():
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


class Features(nn.Module):
    """Images in [-1, 1] -> feature vectors [B, dim]. ``name`` says which features they are;
    ``key`` identifies the exact network, weights included (for caches)."""

    name: str
    key: str
    dim: int

    def check(self, x: torch.Tensor) -> None:
        """Raise a clear error when images do not fit these features."""
        raise NotImplementedError

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B, dim], class logits [B, classes]) from one pass of the network; the
        logits are for the Inception Score."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.both(x)[0]


class InceptionFeatures(Features):
    """Inception-v3 pool features (2048-d) as torchmetrics computes them for FID.

    Images are turned into uint8 RGB (grey images repeated over three channels) and resized to
    299x299 inside the network. Needs torch-fidelity's weights file: downloaded, found in the
    torch hub cache, or given as ``weights_path``.
    """

    name = "inception-v3"
    dim = 2048

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(self.dim), "logits_unbiased"],
                feature_extractor_weights_path=str(weights_path) if weights_path else None,
            )
        except Exception as err:
            where = f"the file {weights_path}" if weights_path else "the internet or the torch hub cache"
            raise InceptionUnavailableError(
                f"Inception-v3 weights could not be loaded from {where} ({type(err).__name__}); set "
                f"DIFFUSION_FID_WEIGHTS to a local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
            ) from err
        self.key = f"inception-v3_{weights_digest(self.net)}"  # another weights file never meets these caches

    def check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need images [B, 1 or 3, H, W], got {tuple(x.shape)}")

    @torch.no_grad()
    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(x)
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        # torchmetrics' forward keeps only the first feature; its torch-fidelity forward returns all
        pool, logits = self.net._torch_fidelity_forward(u8.expand(-1, 3, -1, -1))
        return pool.reshape(len(x), -1), logits


class ClassifierFeatures(Features):
    """The penultimate layer of ``helpers.classifier.Classifier`` (offline FID/KID)."""

    def __init__(self, classifier: Classifier, dataset: str) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.name = f"classifier ({dataset}, {classifier.config['image_size']}px)"
        c = classifier.config
        self.key = f"classifier_{dataset}_{c['image_size']}px_w{c['width']}_d{c['feature_dim']}_{weights_digest(classifier)}"
        self.dim = classifier.feature_dim
        self.shape = (classifier.config["in_channels"], classifier.config["image_size"], classifier.config["image_size"])

    def check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"these classifier features need images [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")

    @torch.no_grad()
    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(x)
        feats = self.classifier.features(x)
        return feats, self.classifier.head(feats)


def get_features(
    profile: Profile,
    device: torch.device | str = "cpu",
    kind: str | None = None,
    weights_path: str | Path | None = None,
    verbose: bool = True,
) -> Features:
    """The profile's FID/KID features.

    ``kind`` (default: the profile's ``fid_features``): "inception" (must work), "classifier", or
    "auto": Inception from ``weights_path``, ``$DIFFUSION_FID_WEIGHTS`` or a download, else the
    classifier, saying why.
    """
    kind = kind or profile.sample.fid_features
    if kind not in ("auto", "inception", "classifier"):
        raise ValueError(f"unknown features {kind!r}; choose auto, inception or classifier")
    weights_path = weights_path or os.environ.get("DIFFUSION_FID_WEIGHTS") or None
    if kind in ("auto", "inception"):
        try:
            return InceptionFeatures(weights_path).to(device)
        except InceptionUnavailableError as err:
            if kind == "inception":
                raise
            if verbose:
                print(f"{err}. Using classifier features instead.", file=sys.stderr)
    classifier, info = load_or_train_classifier(profile, device, progress=verbose)
    if verbose:
        print(
            f"classifier features: {profile.dataset} classifier, test accuracy {info['test_accuracy']:.1%} "
            f"on {info['test_images']} images"
        )
    return ClassifierFeatures(classifier, profile.dataset).to(device)


@torch.no_grad()
def extract(features: Features, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """Features [N, dim] (float64, CPU) of images in [-1, 1]: a tensor, or an iterable of batches."""
    return extract_both(features, images, batch_size)[0]


@torch.no_grad()
def extract_both(
    features: Features, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, dim], class logits [N, classes]) of images in [-1, 1], float64 on the CPU,
    from one pass of the network per batch."""
    device = next(features.parameters()).device
    feats, logits = [], []
    for b in images.split(batch_size) if isinstance(images, torch.Tensor) else images:
        f, l = features.both(b.to(device))
        feats.append(f.cpu().double())  # float64 only on the CPU (MPS has none)
        logits.append(l.cpu().double())
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats), torch.cat(logits)


def real_features(features: Features, profile: Profile, n: int | None = None, verbose: bool = True) -> torch.Tensor:
    """Features of ``n`` (default: the profile's ``fid_real``) training images, cached on disk
    under the features' ``key``, so a retrained classifier never meets stale real features.

    The images are a fixed random choice from the whole training split (not the profile's subset).
    """
    from helpers.data import load_dataset

    n, seed = n or profile.sample.fid_real, profile.seed + 1
    path = profile.artifacts / "fid" / f"real_{profile.dataset}_{profile.image_size}px_{features.key}_{n}_seed{seed}.pt"
    if path.is_file():
        return safe_load(path, "; delete this cache file and it is rebuilt")
    x, _ = load_dataset(profile.dataset, True, profile.image_size, subset=n, seed=seed).tensors()
    if len(x) < n:
        raise ValueError(f"the training set has {len(x)} images, fewer than the {n} asked for")
    feats = extract(features, x)
    atomic_torch_save(feats, path)
    if verbose:
        print(f"cached {features.name} features of {n} real images in {path}")
    return feats


def heldout_features(features: Features, profile: Profile, verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of the test split, in a fixed random order; cached like ``real_features``.

    These images never enter training or the reference set, so they measure the floor.
    """
    from helpers.data import load_dataset

    seed = profile.seed + 2
    path = profile.artifacts / "fid" / f"heldout_{profile.dataset}_{profile.image_size}px_{features.key}_seed{seed}.pt"
    if path.is_file():
        saved = safe_load(path, "; delete this cache file and it is rebuilt")
        return saved["features"], saved["logits"]
    x, _ = load_dataset(profile.dataset, False, profile.image_size).tensors()
    x = x[torch.randperm(len(x), generator=cpu_generator(seed))]
    feats, logits = extract_both(features, x)
    saved = {"features": feats, "logits": logits}
    atomic_torch_save(saved, path)
    if verbose:
        print(f"cached {features.name} features of {len(x)} held-out test images in {path}")
    return saved["features"], saved["logits"]


@dataclass
class Floor:
    """What real data scores: held-out real images against the same reference set, with the same
    features and counts, averaged over ``sets`` disjoint held-out sets (``fid_std``: their spread)."""

    fid: float
    fid_std: float
    kid: float
    inception_score: float
    sets: int

    def __str__(self) -> str:
        return f"FID {self.fid:.3f} ± {self.fid_std:.3f}, KID {self.kid:.4f}, IS {self.inception_score:.2f} (mean ± std over {self.sets} held-out sets)"


def real_floor(
    features: Features, profile: Profile, real: torch.Tensor, n: int, kid_subset_size: int, max_sets: int = 5, verbose: bool = True
) -> Floor:
    """The real-data floor for ``n`` generated images against ``real`` reference features.

    Splits the held-out test images into up to ``max_sets`` disjoint sets of ``n`` and scores each
    as if it were a model's samples.
    """
    feats, logits = heldout_features(features, profile, verbose)
    sets = min(max_sets, len(feats) // n)
    if sets < 1:
        raise ValueError(f"the floor needs {n} held-out images, but the test split has {len(feats)}; score fewer samples")
    scores = [fid_kid(real, feats[i * n : (i + 1) * n], features.name, kid_subset_size) for i in range(sets)]
    is_ = [inception_score(logits[i * n : (i + 1) * n])[0] for i in range(sets)]
    fids = torch.tensor([q.fid for q in scores], dtype=torch.float64)
    return Floor(
        fid=float(fids.mean()), fid_std=float(fids.std()) if sets > 1 else float("nan"),
        kid=sum(q.kid for q in scores) / sets, inception_score=sum(is_) / sets, sets=sets,
    )  # fmt: skip


@dataclass
class Quality:
    """FID and KID with what they were computed from."""

    fid: float
    kid: float
    kid_std: float
    features: str
    n_fake: int
    n_real: int
    kid_subset_size: int
    inception_score: float | None = None
    floor: Floor | None = None

    def __str__(self) -> str:
        f = self.floor
        fid = f"FID {self.fid:.3f}" + (f" (real-data floor {f.fid:.3f} ± {f.fid_std:.3f})" if f else "")
        kid = f"KID {self.kid:.4f} ± {self.kid_std:.4f}" + (f" (floor {f.kid:.4f})" if f else "")
        is_ = "" if self.inception_score is None else f", IS {self.inception_score:.2f}" + (f" (real data {f.inception_score:.2f})" if f else "")
        return (
            f"{fid}, {kid}{is_} ({self.features} features; "
            f"{self.n_fake} generated vs {self.n_real} real images; KID subsets of {self.kid_subset_size})"
        )


class _Precomputed(nn.Identity):
    """Lets torchmetrics take feature vectors that were extracted already."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: str,
    kid_subset_size: int,
    kid_subsets: int = 50,
    seed: int = 0,
) -> Quality:
    """FID and KID between two sets of feature vectors [N, d] and [M, d] (torchmetrics).

    KID's random subsets come from ``seed``, so the result is reproducible and the global random
    state is left alone.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be [N, d] with the same d, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    if kid_subset_size > min(len(real), len(fake)):
        raise ValueError(
            f"KID subsets of {kid_subset_size} need at least that many images per set; "
            f"got {len(real)} real and {len(fake)} generated (lower kid_subset_size or sample more)"
        )
    dim = real.shape[1]
    # the features are whole sets already (gathered by the Evaluator under torchrun): torchmetrics
    # must not sync its states with the other processes, which are not computing (it would hang)
    fid = FrechetInceptionDistance(feature=_Precomputed(dim), sync_on_compute=False)
    with warnings.catch_warnings():  # KID keeps every feature vector: intended, and small here
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets, subset_size=kid_subset_size, sync_on_compute=False)
    for metric in (fid, kid):
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # saves and restores the CPU generator, the one KID draws from
        torch.random.default_generator.manual_seed(seed)  # (torch.manual_seed would reseed CUDA/MPS too)
        kid_mean, kid_std = kid.compute()
    return Quality(float(fid.compute()), float(kid_mean), float(kid_std), features, len(fake), len(real), kid_subset_size)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) of class logits [N, classes] (Salimans et al.
    2016, through torchmetrics): mean and std over ``splits`` random splits, drawn from ``seed``."""
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"the Inception Score needs logits [N, classes] with N >= splits = {splits}, got {tuple(logits.shape)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = InceptionScore(feature=nn.Identity(), splits=splits, sync_on_compute=False)  # as in fid_kid
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_interval(real: torch.Tensor, fake: torch.Tensor, other: torch.Tensor | None = None, replicates: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """FID of ``fake`` against ``real`` (feature sets [N, d], [M, d]) with a bootstrap interval over the
    generated samples (``helpers.stats.bootstrap``; the real statistics stay fixed). With ``other`` (the
    features of another model's M samples, the i-th from the same noise as ``fake``'s i-th) it is the
    paired difference FID(fake) - FID(other), both computed on the same resampled indices."""
    if other is not None and other.shape != fake.shape:
        raise ValueError(f"a paired comparison needs the same number of samples from both models, got {tuple(fake.shape)} and {tuple(other.shape)}")
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), reset_real_features=False, sync_on_compute=False)
    fid.update(real.double(), real=True)

    def score(x: torch.Tensor) -> float:
        fid.reset()  # the generated statistics only
        fid.update(x.double(), real=False)
        return float(fid.compute())

    def statistic(idx: torch.Tensor) -> float:
        return score(fake[idx]) - (score(other[idx]) if other is not None else 0.0)

    return bootstrap(statistic, len(fake), replicates, level, seed)
