"""Captions measured from the pixels, for text-to-image on a dataset without captions (notebook 13).

Fashion-MNIST has labels, not sentences. A caption here is the class name (or a synonym) with
attributes that the image itself decides, each a number computed from its pixels and split at a
threshold fitted on the training images:

    brightness   mean value of the object's pixels          dark   / light
    extent       fraction of the frame the object covers    small  / large
    texture      mean |Laplacian| inside the object         plain  / patterned
    facing       which side the shoe's toe points to        facing left / facing right  (footwear only)

The same functions score generated samples, so that whether a model obeys "dark" is measured by the
definition that wrote "dark" into its training captions. ``CaptionMaker`` is deterministic: the
words of image i depend on its pixels and on ``seed`` and i alone (which synonym, which template).
Class-attribute combinations listed in ``held_out`` never appear in a training caption: the
attribute is left out of the caption of such an image, so that a model's answer to "a dark sneaker"
shows whether it composes words it saw apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


__all__ = ["CLASS_WORDS", "FOOTWEAR", "ATTRIBUTES", "measure", "CaptionMaker", "read_prompt"]

# the class names of Fashion-MNIST (helpers.data order) with the words a caption may use for them
CLASS_WORDS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "top", "tee"),
    ("trousers", "pants"),
    ("pullover", "sweater", "jumper"),
    ("dress",),
    ("coat", "jacket"),
    ("sandal",),
    ("shirt", "blouse"),
    ("sneaker", "trainer"),
    ("bag", "handbag"),
    ("ankle boot", "boot"),
)
FOOTWEAR = (5, 7, 9)  # sandal, sneaker, ankle boot: the classes with a facing

# attribute -> (word below the threshold, word above it)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "brightness": ("dark", "light"),
    "extent": ("small", "large"),
    "texture": ("plain", "patterned"),
    "facing": ("facing left", "facing right"),
}

OBJECT = 0.1  # a pixel belongs to the object when its value in [0, 1] is above this
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four attribute values [N] of images [N, 1, H, W] in [-1, 1] (background -1):

    brightness: mean of the object's pixels in [0, 1]; extent: the object's share of the frame;
    texture: mean |Laplacian| over the object's pixels; facing: the horizontal offset, in pixels, of
    the object's upper half from the whole object's centre (a shoe's heel and shaft are its
    tallest part, so an upper half right of centre means the toe points left: negative is left).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"need grayscale images [N, 1, H, W], got shape {tuple(images.shape)}")
    x = (images.float().clamp(-1, 1) + 1) / 2  # [0, 1]
    mask = (x > OBJECT).float()
    area = mask.flatten(1).sum(1).clamp(min=1)
    brightness = (x * mask).flatten(1).sum(1) / area
    extent = mask.flatten(1).mean(1)
    lap = F.conv2d(x, _LAPLACIAN.to(x.device), padding=1).abs()
    texture = (lap * mask).flatten(1).sum(1) / area
    h, w = x.shape[-2:]
    cols = torch.arange(w, dtype=x.dtype, device=x.device)
    mass = x * mask
    upper = mass[..., : h // 2, :]
    centre = (mass.sum(-2) * cols).flatten(1).sum(1) / mass.flatten(1).sum(1).clamp(min=1e-6)
    upper_centre = (upper.sum(-2) * cols).flatten(1).sum(1) / upper.flatten(1).sum(1).clamp(min=1e-6)
    facing = centre - upper_centre  # > 0: upper half left of centre, heel on the left, toe to the right
    return {"brightness": brightness, "extent": extent, "texture": texture, "facing": facing}


@dataclass
class CaptionMaker:
    """Turns images and labels into captions; ``fit`` sets each attribute's threshold per class.

    ``thresholds[attribute][c]``: the median of the attribute over class c's training images (so each
    word is about as common as its opposite within a class); facing's threshold is 0 for every class.
    ``held_out``: (class, word) pairs kept out of every caption, e.g. (7, "dark").
    """

    thresholds: dict[str, list[float]] = field(default_factory=dict)
    held_out: tuple[tuple[int, str], ...] = ()
    seed: int = 0

    TEMPLATES = ("a {adj} {noun}", "a {adj} {noun} {facing}", "a photo of a {adj} {noun}", "{adj} {noun}")

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, held_out: tuple[tuple[int, str], ...] = (), seed: int = 0) -> CaptionMaker:
        """Thresholds from training images [N, 1, H, W] in [-1, 1] and their labels [N]."""
        values = measure(images)
        thresholds: dict[str, list[float]] = {}
        for name, v in values.items():
            if name == "facing":
                thresholds[name] = [0.0] * len(CLASS_WORDS)
                continue
            thresholds[name] = [float(v[labels == c].median()) if (labels == c).any() else math.nan for c in range(len(CLASS_WORDS))]
        words = {w for pair in ATTRIBUTES.values() for w in pair}
        for c, word in held_out:
            if not 0 <= c < len(CLASS_WORDS) or word not in words:
                raise ValueError(f"held-out pairs are (class 0-9, attribute word), got ({c}, {word!r}); words: {', '.join(sorted(words))}")
        return cls(thresholds, tuple(held_out), seed)

    def words(self, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, str]]:
        """Each image's attribute words {attribute: word} (footwear alone has a facing)."""
        values = measure(images)
        out = []
        for i, c in enumerate(labels.tolist()):
            chosen = {}
            for name, (low, high) in ATTRIBUTES.items():
                if name == "facing" and c not in FOOTWEAR:
                    continue
                chosen[name] = high if float(values[name][i]) > self.thresholds[name][c] else low
            out.append(chosen)
        return out

    def captions(self, images: torch.Tensor, labels: torch.Tensor, offset: int = 0) -> list[str]:
        """One caption per image: a template, a synonym of the class and two of its attribute words
        (facing too for footwear), chosen by a generator seeded with ``seed`` and the image's index
        ``offset + i``; words that ``held_out`` pairs with the class are left out."""
        captions = []
        for i, (c, chosen) in enumerate(zip(labels.tolist(), self.words(images, labels))):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + offset + i)
            pick = lambda n: int(torch.randint(0, n, (), generator=g))  # noqa: E731
            noun = CLASS_WORDS[c][pick(len(CLASS_WORDS[c]))]
            allowed = {k: w for k, w in chosen.items() if (c, w) not in self.held_out}
            facing = allowed.pop("facing", "")
            names = sorted(allowed)
            kept = [allowed[names[j]] for j in sorted(torch.randperm(len(names), generator=g)[:2].tolist())]
            template = self.TEMPLATES[pick(len(self.TEMPLATES))]
            if "{facing}" in template and not facing:
                template = self.TEMPLATES[0]
            text = template.format(adj=" ".join(kept), noun=noun, facing=facing)
            if facing and "{facing}" not in template and pick(2):
                text = f"{text} {facing}"
            captions.append(" ".join(text.split()))
        return captions

    def vocabulary(self) -> list[str]:
        """Every word a caption of this maker can hold: the templates', the class names' and the attributes'."""
        words = {w for t in self.TEMPLATES for w in t.split() if "{" not in w}
        words |= {w for names in CLASS_WORDS for name in names for w in name.split()}
        words |= {w for pair in ATTRIBUTES.values() for word in pair for w in word.split()}
        return sorted(words)

    def longest(self) -> int:
        """The most words a caption can have: the longest template, noun and facing, two attribute words."""
        noun, facing = max((n for names in CLASS_WORDS for n in names), key=lambda n: len(n.split())), ATTRIBUTES["facing"][0]
        return max(len(t.format(adj="x x", noun=noun, facing=facing).split()) + (0 if "{facing}" in t else len(facing.split())) for t in self.TEMPLATES)

    def obeyed(self, images: torch.Tensor, prompts: list[str]) -> list[dict[str, bool]]:
        """For each image and the prompt it was drawn for: {attribute: whether the image has the word the
        prompt asks for}, measured as the training captions were, at the thresholds of the prompt's class."""
        asked = [read_prompt(p) for p in prompts]
        words = self.words(images, torch.tensor([c for c, _ in asked]))
        return [{name: words[i][name] == word for name, word in want.items()} for i, (_, want) in enumerate(asked)]

    def state(self) -> dict[str, Any]:
        """What a checkpoint records; ``from_state`` rebuilds the maker."""
        return {"thresholds": self.thresholds, "held_out": [list(p) for p in self.held_out], "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CaptionMaker:
        return cls(dict(state["thresholds"]), tuple((int(c), str(w)) for c, w in state["held_out"]), int(state["seed"]))


def read_prompt(prompt: str) -> tuple[int, dict[str, str]]:
    """The class and the attribute words a prompt asks for: "a dark sneaker facing left" ->
    (7, {"brightness": "dark", "facing": "facing left"}). A prompt must name exactly one class (any of
    its words in ``CLASS_WORDS``); a facing only for footwear."""
    text = f" {' '.join(prompt.lower().split())} "
    classes = {c for c, names in enumerate(CLASS_WORDS) for name in names if f" {name} " in text and not (name == "boot" and " ankle boot " in text)}
    if len(classes) != 1:
        names = ", ".join("/".join(n) for n in CLASS_WORDS)
        raise ValueError(f"{prompt!r} names {len(classes)} classes; a prompt names one of: {names}")
    (c,) = classes
    wanted = {name: word for name, pair in ATTRIBUTES.items() for word in pair if f" {word} " in text}
    if "facing" in wanted and c not in FOOTWEAR:
        raise ValueError(f"{prompt!r}: only footwear ({', '.join(CLASS_WORDS[f][0] for f in FOOTWEAR)}) has a facing")
    both = [name for name, (low, high) in ATTRIBUTES.items() if f" {low} " in text and f" {high} " in text]
    if both:
        raise ValueError(f"{prompt!r} asks for both words of {both[0]}")
    return c, wanted
