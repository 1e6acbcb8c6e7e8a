"""A small CNN classifier of the training dataset: offline FID/KID features and a sample scorer.

Inception-v3's weights cannot be downloaded offline (and CI is offline), so FID/KID fall back to
the penultimate layer of this classifier, trained once per dataset and image size and cached
under ``artifacts/<profile>/classifier/``. Its numbers are on a different scale from Inception
FID: compare them only with each other. The same classifier scores class-conditional samples
(notebook 08): does a sample of class k look like class k?
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helpers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from helpers.config import Profile
from helpers.device import adam_options
from helpers.paths import pretrained_dir

__all__ = ["Classifier", "train_classifier", "load_or_train_classifier", "accuracy", "classifier_scores"]


class Classifier(nn.Module):
    """Two conv stages (conv-BN-ReLU x2, max-pool), then a ``feature_dim`` layer and the class logits."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int = 10, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the classifier halves the image twice; image_size {image_size} is not divisible by 4")
        self.config = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width, feature_dim=feature_dim)

        def stage(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.body = nn.Sequential(stage(in_channels, width), stage(width, 2 * width), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [B, feature_dim] of images in [-1, 1]: the FID/KID features."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(xb.to(device)).argmax(1).cpu() == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(x)


def train_classifier(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    device: torch.device | str = "cpu",
    width: int = 32,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    flip: bool = True,
    progress: bool = True,
) -> tuple[Classifier, float]:
    """Train a ``Classifier`` on (images, labels); return it and its accuracy on ``test``.

    ``flip`` adds random horizontal flips (right for clothes and objects, wrong for digits).
    """
    x, y = train
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``, global CPU state untouched
        torch.random.default_generator.manual_seed(seed)
        model = Classifier(x.shape[1], x.shape[-1], int(y.max()) + 1, width=width).to(device)
    steps = epochs * (len(x) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, **adam_options(torch.device(device)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bar = tqdm(total=steps, desc="training the classifier", disable=not progress, leave=False, mininterval=1.0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if flip:
                mirror = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(mirror.to(device)[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval(), accuracy(model, *test)


def load_or_train_classifier(profile: Profile, device: torch.device | str = "cpu", progress: bool = True) -> tuple[Classifier, dict[str, Any]]:
    """The profile's classifier from ``artifacts/<profile>/classifier/``, trained there first if missing
    (under the laptop profile, the one shipped in ``pretrained/`` is used instead of training).

    Returns the model (eval mode, on ``device``) and its info: dataset, image size, epochs and
    test accuracy.
    """
    from helpers.data import load_dataset  # torchvision only when needed

    path = _cache_path(profile)
    shipped = pretrained_dir() / path.name
    if not path.is_file() and profile.name == "laptop" and shipped.is_file():
        path = shipped  # the classifier the shipped models' FIDs were measured with
    if path.is_file():
        saved = load_checkpoint(path, kind="classifier", remedy="; delete it to retrain the classifier")
        try:
            model = Classifier(**saved["model_config"])
            model.load_state_dict(saved["model"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"the cached classifier {path} does not fit this version ({type(err).__name__}); delete it to retrain") from err
        return model.to(device).eval(), saved["info"]
    train = load_dataset(profile.dataset, True, profile.image_size).tensors()
    test = load_dataset(profile.dataset, False, profile.image_size).tensors()
    flip = profile.dataset != "mnist"
    model, acc = train_classifier(
        train, test, profile.classifier_epochs, device, profile.classifier_width, seed=profile.seed, flip=flip, progress=progress
    )
    info = {
        "dataset": profile.dataset,
        "image_size": profile.image_size,
        "epochs": profile.classifier_epochs,
        "width": profile.classifier_width,
        "train_images": len(train[0]),
        "test_images": len(test[0]),
        "test_accuracy": acc,
    }
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config, "info": info}, "classifier")
    return model, info


def _cache_path(profile: Profile) -> Path:
    return profile.artifacts / "classifier" / f"{profile.dataset}_{profile.image_size}px_w{profile.classifier_width}.pt"


@torch.no_grad()
def classifier_scores(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """How class-like samples are: accuracy of the classifier against the intended labels ``y``,
    and its mean softmax probability of the intended class (confidence)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    probs = torch.cat([classifier(b.to(device)).softmax(-1).cpu() for b in x.split(batch_size)])
    return {
        "accuracy": float((probs.argmax(1) == y).float().mean()),
        "confidence": float(probs[torch.arange(len(y)), y].mean()),
    }
