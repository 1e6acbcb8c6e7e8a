import math

import pytest
import torch

from helpers.config import PROFILES
from helpers.unet import AttentionBlock, ResBlock, UNet, shape_table, timestep_embedding

from conftest import SMALL_UNET, random_unet


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_full_profile_is_the_ddpm_cifar10_model_with_35_7m_parameters():
    # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters". Published to
    # 0.1M, so the count lies within 0.05M of 35.7M. Built on the meta device: no memory, no init.
    with torch.device("meta"):
        model = UNet(**PROFILES["full"].model)
    assert abs(n_params(model) - 35.7e6) <= 0.05e6, f"{n_params(model):,} parameters"


def conv(i, o, k):
    """A k x k convolution from i to o channels, with bias."""
    return k * k * i * o + o


def linear(i, o):
    return i * o + o


def group_norm(c):
    return 2 * c  # a scale and a shift per channel


def res_block(i, o, emb):
    """norm, conv 3x3, the embedding's projection, norm, conv 3x3, and a 1x1 skip when i != o."""
    return group_norm(i) + conv(i, o, 3) + linear(emb, o) + group_norm(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)


def attention(c):
    return group_norm(c) + conv(c, 3 * c, 1) + conv(c, c, 1)  # q, k, v in one 1x1 conv, then the output 1x1


def test_small_unet_has_the_hand_counted_parameters():
    """SMALL_UNET counted block by block: ch 8, widths 8 and 16 at 16x16 and 8x8, one res block per
    level down and two up, attention at 8x8 and in the middle, timestep embedding 4 * ch = 32. The
    up path's blocks take the concatenated skips: conv_in (8), level 0's block (8), the downsample (8)
    and level 1's block (16), last in first out."""
    e = 32
    expected = (
        linear(8, e) + linear(e, e)  # the timestep MLP
        + conv(1, 8, 3)  # conv_in
        + res_block(8, 8, e) + conv(8, 8, 3)  # level 0 (16x16), then the stride-2 downsample
        + res_block(8, 16, e) + attention(16)  # level 1 (8x8)
        + res_block(16, 16, e) + attention(16) + res_block(16, 16, e)  # middle
        + res_block(16 + 16, 16, e) + attention(16)  # up, level 1
        + res_block(16 + 8, 16, e) + attention(16) + conv(16, 16, 3)  # ... then the upsample's conv
        + res_block(16 + 8, 8, e)  # up, level 0
        + res_block(8 + 8, 8, e)
        + group_norm(8) + conv(8, 1, 3)  # out
    )  # fmt: skip
    assert n_params(UNet(**SMALL_UNET)) == expected
    assert n_params(UNet(**SMALL_UNET, num_classes=10)) == expected + 11 * e, "one embedding row per class and one for no label"


@pytest.mark.parametrize("profile", ["smoke", "laptop"])
def test_smaller_profiles_are_scaled_down_versions(profile):
    with torch.device("meta"):
        full = UNet(**PROFILES["full"].model)
    assert n_params(UNet(**PROFILES[profile].model)) < n_params(full) / 10


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 32)])
def test_output_has_the_input_shape(channels, size):
    model = UNet(**{**SMALL_UNET, "in_channels": channels, "image_size": size, "attn_resolutions": (size // 2,)})
    x = torch.randn(3, channels, size, size)
    assert model(x, torch.tensor([0, 10, 999])).shape == x.shape


def test_zero_initialised_layers_make_blocks_identities_and_the_output_zero():
    model = UNet(**SMALL_UNET)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x, torch.tensor([1, 2])), torch.zeros_like(x))
    block = ResBlock(8, 8, 32, 0.0, 4)
    h = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(h, torch.randn(2, 32)), h)


def test_timestep_embedding_is_sines_and_cosines_of_geometric_frequencies():
    t = torch.tensor([0, 7, 500])
    emb = timestep_embedding(t, 16)
    freqs = torch.tensor([10000 ** (-i / 7) for i in range(8)])
    assert torch.allclose(emb[:, :8], torch.sin(t[:, None] * freqs), atol=1e-5)
    assert torch.allclose(emb[:, 8:], torch.cos(t[:, None] * freqs), atol=1e-5)


def test_attention_block_is_softmax_attention():
    torch.manual_seed(0)
    block = AttentionBlock(8, 4, heads=2)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = block.qkv(block.norm(x)).reshape(2, 3, 2, 4, 9).unbind(1)  # [B, heads, d, HW]
    att = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(4), dim=-1)  # [B, heads, HW, HW]
    out = (att @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 8, 3, 3)
    assert torch.allclose(block(x), x + block.proj(out), atol=1e-5)


def test_images_in_a_batch_do_not_influence_each_other():
    model = random_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([3, 50, 400, 999])
    together = model(x, t)
    alone = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_class_labels_change_the_output_and_none_means_the_null_label():
    model = random_unet(num_classes=3)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100, 100])
    a, b = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([3, 3])))


def test_shape_table_walks_every_block():
    model = UNet(**SMALL_UNET)
    rows = shape_table(model, torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
    assert rows[0] == ("input", (2, 1, 16, 16)) and rows[-1] == ("out", (2, 1, 16, 16))
    assert min(r[1][-1] for r in rows) == 8  # one down-sampling for two levels
    assert len(rows) == 2 + 1 + len(model.down) + len(model.up) + 1


def test_bad_configurations_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="image_size 20 cannot be halved 3 times"):
        UNet(**{**SMALL_UNET, "image_size": 20, "ch_mult": (1, 2, 2, 2)})
    with pytest.raises(ValueError, match=r"attention at resolution \[12\] is never reached"):
        UNet(**{**SMALL_UNET, "attn_resolutions": (12,)})
    with pytest.raises(ValueError, match="norm_groups=32 does not divide the widths"):
        UNet(**{**SMALL_UNET, "norm_groups": 32})
    model = UNet(**SMALL_UNET, num_classes=10)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"class ids must lie in 0..9 \(or 10 for 'no label'\), got 0..11"):
        model(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="expects images of shape"):
        model(torch.randn(2, 3, 16, 16), t)
    with pytest.raises(ValueError, match="unconditional U-Net"):
        UNet(**SMALL_UNET)(x, t, torch.tensor([0, 1]))
