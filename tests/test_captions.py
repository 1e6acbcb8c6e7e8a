"""Captions measured from the pixels (helpers.captions) on constructed images whose attributes are known."""

import pytest
import torch

from helpers.captions import ATTRIBUTES, CLASS_WORDS, CaptionMaker, measure


def canvas(n=1, side=28):
    return torch.full((n, 1, side, side), -1.0)


def square(value=1.0, size=10, side=28):
    x = canvas(side=side)
    lo = (side - size) // 2
    x[..., lo : lo + size, lo : lo + size] = value
    return x


def boot(toe_right=True):
    """An L: a tall shaft at the heel and a sole that runs to the toe."""
    x = canvas()
    x[..., 6:22, 4:10] = 0.8  # shaft, on the left
    x[..., 16:22, 4:24] = 0.8  # sole, to the right
    return x if toe_right else x.flip(-1)


def test_each_attribute_reads_what_was_drawn():
    dim, bright = measure(torch.cat([square(-0.2), square(0.9)]))["brightness"]
    assert bright > dim
    small, large = measure(torch.cat([square(size=6), square(size=20)]))["extent"]
    assert small == pytest.approx(36 / 784) and large == pytest.approx(400 / 784)
    flat = square(0.5, size=16)
    checker = flat.clone()
    checker[..., ::2, ::2] = 0.9
    plain, patterned = measure(torch.cat([flat, checker]))["texture"]
    assert patterned > 3 * plain
    right, left = measure(torch.cat([boot(True), boot(False)]))["facing"]
    assert right > 0 > left and right == pytest.approx(-left)


def _classes_and_images(n_per_class=6):
    g = torch.Generator().manual_seed(0)
    images = torch.cat([square(float(v), size=int(s)) for v, s in zip(torch.rand(10 * n_per_class, generator=g) * 1.6 - 0.6, torch.randint(4, 24, (10 * n_per_class,), generator=g))])
    labels = torch.arange(10).repeat_interleave(n_per_class)
    return images, labels


def test_thresholds_are_the_class_medians_and_split_each_class_in_half():
    images, labels = _classes_and_images(7)
    maker = CaptionMaker.fit(images, labels)
    values = measure(images)
    for c in range(10):
        assert maker.thresholds["extent"][c] == pytest.approx(float(values["extent"][labels == c].median()))
    words = maker.words(images, labels)
    for c in range(10):
        dark = sum(w["brightness"] == "dark" for w, y in zip(words, labels.tolist()) if y == c)
        assert dark == 4  # the median of 7 itself and the 3 below it are "dark" (not above the threshold)
    assert all(("facing" in w) == (y in (5, 7, 9)) for w, y in zip(words, labels.tolist()))


def test_captions_are_deterministic_name_the_class_and_keep_held_out_pairs_out():
    images, labels = _classes_and_images()
    held = ((7, "dark"), (7, "light"), (2, "patterned"))
    maker = CaptionMaker.fit(images, labels, held_out=held, seed=3)
    captions = maker.captions(images, labels)
    assert captions == CaptionMaker.from_state(maker.state()).captions(images, labels)
    assert captions != CaptionMaker.fit(images, labels, held_out=held, seed=4).captions(images, labels)
    for text, y in zip(captions, labels.tolist()):
        assert any(word in text for word in CLASS_WORDS[y]), text
        for c, word in held:
            assert not (y == c and word in text.split()), (text, word)
    assert all(text == " ".join(text.split()) for text in captions)
    with pytest.raises(ValueError, match="attribute word"):
        CaptionMaker.fit(images, labels, held_out=((7, "shiny"),))
    with pytest.raises(ValueError, match="grayscale"):
        measure(torch.zeros(2, 3, 8, 8))
