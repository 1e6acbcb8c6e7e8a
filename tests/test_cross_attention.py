"""Cross-attention (helpers.unet.CrossAttentionBlock) against a hand computation, its indifference to
padding tokens, and a text-conditional U-Net that reads its caption and refuses a wrong one."""

import pytest
import torch

from helpers.unet import CrossAttentionBlock, UNet


def _perturbed(module):
    """The module with noise on every parameter: its zero-initialised output layers make a fresh one an identity or a zero."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def test_cross_attention_is_softmax_of_image_queries_against_caption_keys():
    torch.manual_seed(0)
    block = _perturbed(CrossAttentionBlock(ch=8, context_dim=6, groups=4, heads=2)).double()
    x, context = torch.randn(3, 8, 5, 4, dtype=torch.float64), torch.randn(3, 7, 6, dtype=torch.float64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:], pad[2, 1:] = True, True
    # by hand, head by head and image by image
    q = block.q(block.norm(x)).flatten(2)  # [B, C, HW]
    k, v = block.kv(context).chunk(2, dim=-1)  # [B, L, C] each
    out = torch.empty_like(q)
    d = 4  # channels per head
    for b in range(3):
        keep = ~pad[b]
        for n in range(2):
            qs, ks, vs = q[b, n * d : (n + 1) * d].T, k[b, keep, n * d : (n + 1) * d], v[b, keep, n * d : (n + 1) * d]
            weights = torch.softmax(qs @ ks.T / d**0.5, dim=-1)  # [HW, L_kept]
            out[b, n * d : (n + 1) * d] = (weights @ vs).T
    by_hand = x + block.proj(out.view_as(x))
    assert torch.allclose(block(x, context, pad), by_hand, atol=1e-10)


def test_padding_tokens_change_nothing_whatever_they_hold():
    torch.manual_seed(1)
    block = _perturbed(CrossAttentionBlock(ch=8, context_dim=6, groups=4))
    x, context = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 6)
    longer = torch.cat([context, 100 * torch.randn(2, 5, 6)], dim=1)  # five more tokens, all padding
    pad = torch.zeros(2, 3, dtype=torch.bool)
    pad_longer = torch.cat([pad, torch.ones(2, 5, dtype=torch.bool)], dim=1)
    assert torch.allclose(block(x, context, pad), block(x, longer, pad_longer), atol=1e-5)


def test_a_text_unet_reads_its_caption_and_a_plain_one_is_unchanged():
    config = dict(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4)
    plain = UNet(**config)
    assert "context_dim" not in plain.config and not any(isinstance(m, CrossAttentionBlock) for m in plain.modules())
    torch.manual_seed(2)
    text = _perturbed(UNet(**config, context_dim=6)).eval()
    assert text.config["context_dim"] == 6 and sum(isinstance(m, CrossAttentionBlock) for m in text.modules()) == 4  # one down and two up blocks at side 4, and the middle
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    pad = torch.tensor([[False, False, True], [False, True, True]])
    a, b = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    with torch.no_grad():
        assert not torch.allclose(text(x, t, context=(a, pad)), text(x, t, context=(b, pad)), atol=1e-4), "the output depends on the caption"
        b[pad] = a[pad] + 50.0  # change only what is padding
        b[~pad] = a[~pad]
        assert torch.allclose(text(x, t, context=(a, pad)), text(x, t, context=(b, pad)), atol=1e-5)
    with pytest.raises(ValueError, match="text-conditional"):
        text(x, t)
    with pytest.raises(ValueError, match="without text conditioning"):
        plain(x, t, context=(a, pad))
    with pytest.raises(ValueError, match=r"shape \[2, L, 6\]"):
        text(x, t, context=(torch.randn(2, 3, 5), pad))
    with pytest.raises(ValueError, match="at least one token"):
        text(x, t, context=(a, torch.ones(2, 3, dtype=torch.bool)))


def test_text_guidance_is_the_guidance_formula_on_the_caption_and_the_empty_caption():
    from helpers.clip import CLIP
    from helpers.samplers import TextGuided
    from helpers.text import Tokenizer
    from helpers.text_unet import TextUNet

    config = dict(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4)
    torch.manual_seed(3)
    tok = Tokenizer.from_texts(["a dark bag", "a light sneaker facing left"])
    model = TextUNet.around(CLIP(len(tok), tok.max_len, dim=8).text, tok, **config)
    _perturbed(model.unet)
    model.eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 900])
    ids = tok.encode(["a dark bag", "a light sneaker", "sneaker facing left"])
    with torch.no_grad():
        cond = model(x, t, ids)
        uncond = model(x, t, tok.encode([""] * 3))  # the empty caption: its start token alone
        assert not torch.allclose(cond, uncond, atol=1e-4)
        for s in (0.0, 1.0, 3.5):
            assert torch.allclose(TextGuided(model, ids, s)(x, t), uncond + s * (cond - uncond), atol=1e-5), s
    with pytest.raises(ValueError, match="no text conditioning"):
        TextGuided(UNet(**config), ids)
    with pytest.raises(ValueError, match=r"token ids \[B, 6\]"):
        TextGuided(model, ids[:, :4])
    with pytest.raises(ValueError, match="3 captions for a batch of 2"):
        TextGuided(model, ids, 2.0)(x[:2], t[:2])
