"""The tokenizer (helpers.text) and the small CLIP (helpers.clip): round trips, clear refusals, the
InfoNCE loss against a hand computation, and a text encoder that ignores padding."""

import math

import pytest
import torch

from helpers.clip import CLIP, TextEncoder, contrastive_loss
from helpers.text import Tokenizer

CAPTIONS = ["a dark sneaker facing left", "a light plain dress", "patterned bag", "a photo of a small dark t-shirt"]


def test_the_tokenizer_round_trips_pads_with_zero_and_rebuilds_from_its_state():
    tok = Tokenizer.from_texts(CAPTIONS)
    ids = tok.encode(CAPTIONS)
    assert ids.shape == (4, 8) and tok.decode(ids) == CAPTIONS
    assert (ids[:, 0] == 1).all() and (ids[2, 3:] == 0).all() and (ids[2, :3] != 0).all()
    assert tok.encode([""]).tolist() == [[1] + [0] * 7], "the empty caption (guidance's 'no text') is the start token alone"
    assert torch.equal(Tokenizer.from_state(tok.state()).encode(CAPTIONS), ids)
    assert tok.encode(["A Dark   Sneaker"]).tolist() == tok.encode(["a dark sneaker"]).tolist()


def test_the_tokenizer_refuses_unknown_words_and_long_captions_naming_them():
    tok = Tokenizer.from_texts(CAPTIONS)
    with pytest.raises(ValueError, match=r"unknown word 'shiny' in 'a shiny bag'; the vocabulary: a, bag, dark"):
        tok.encode(["a shiny bag"])
    with pytest.raises(ValueError, match="has 8 words; this tokenizer takes at most 7"):
        tok.encode(["a dark dark dark dark dark dark bag"])
    with pytest.raises(ValueError, match="lower-case words"):
        Tokenizer(["Bag"], 3)
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer(["<s>"], 3)


def test_the_contrastive_loss_is_the_symmetric_cross_entropy_written_out():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    sim = [[10.0 * float(img[i] @ txt[j] / (img[i].norm() * txt[j].norm())) for j in range(5)] for i in range(5)]
    image_to_text = sum(-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(5)) / 5
    text_to_image = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(5))) for j in range(5)) / 5
    assert contrastive_loss(img, txt, scale).item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="one caption per image"):
        contrastive_loss(img, txt[:4], scale)


def test_the_text_encoder_ignores_padding_and_sees_word_order():
    torch.manual_seed(0)
    tok = Tokenizer.from_texts(CAPTIONS, max_len=11)
    enc = TextEncoder(len(tok), max_len=11).eval()
    ids = tok.encode(CAPTIONS)
    with torch.no_grad():
        tokens, pooled = enc(ids)
        tokens_short, pooled_short = enc(ids[:, :8])  # the same captions with fewer padding tokens
        swapped = enc(tok.encode(["a sneaker dark facing left"]))[1]
    assert torch.allclose(pooled, pooled_short, atol=1e-5)
    assert torch.allclose(tokens[0, :6], tokens_short[0, :6], atol=1e-5)
    assert not torch.allclose(swapped, pooled[:1], atol=1e-3), "position embeddings make word order count"


def test_a_small_clip_learns_to_match_brightness_and_size_words():
    """Squares that are dark or light, small or large, with their two words: after 150 steps the right
    caption of 4 is the most similar for most held-out squares (chance: a quarter)."""
    g = torch.Generator().manual_seed(1)

    def batch(n):
        dark, small = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.5
        x = torch.full((n, 1, 16, 16), -1.0)
        for i in range(n):
            side = 4 if small[i] else 12
            lo = int(torch.randint(0, 16 - side + 1, (), generator=g))
            x[i, :, lo : lo + side, lo : lo + side] = -0.2 if dark[i] else 0.9
        words = [f"{'dark' if d else 'light'} {'small' if s else 'large'}" for d, s in zip(dark.tolist(), small.tolist())]
        return x, words

    options = ["dark small", "dark large", "light small", "light large"]
    tok = Tokenizer.from_texts(options)
    torch.manual_seed(0)
    clip = CLIP(len(tok), tok.max_len, dim=32)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    for _ in range(150):
        x, words = batch(64)
        loss = clip.loss(x, tok.encode(words))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, words = batch(200)
    best = clip.similarity(x, tok.encode(options)).argmax(1)
    accuracy = (best == torch.tensor([options.index(w) for w in words])).float().mean()
    assert accuracy > 0.9, accuracy
