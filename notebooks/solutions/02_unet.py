# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions to the exercises of 02 · The U-Net

# %%
import math

import torch


def resblock_parameters(in_ch, out_ch, emb_dim):
    norms = 2 * in_ch + 2 * out_ch  # GroupNorm: a scale and a shift per channel, before each conv
    convs = (9 * in_ch * out_ch + out_ch) + (9 * out_ch * out_ch + out_ch)  # two 3x3 convolutions with bias
    emb = emb_dim * out_ch + out_ch  # the timestep projection
    skip = 0 if in_ch == out_ch else in_ch * out_ch + out_ch  # a 1x1 convolution when the width changes
    return norms + convs + emb + skip


def multihead_attention(attn, x):
    b, c, h, w = x.shape
    n, d = attn.heads, c // attn.heads
    q, k, v = attn.qkv(attn.norm(x)).reshape(b, 3, n, d, h * w).unbind(1)  # each [B, heads, d, HW]
    weights = torch.softmax(q.transpose(2, 3) @ k / math.sqrt(d), dim=-1)  # [B, heads, HW, HW]
    out = (v @ weights.transpose(2, 3)).reshape(b, c, h, w)
    return x + attn.proj(out)


def up_block_channels(image_size, ch, ch_mult, num_res_blocks):
    # Replay the stack of unet_forward: conv_in pushes (ch, image_size); on the way down every
    # residual block pushes its output, and so does every stride-2 convolution (at the halved side).
    cur, side = ch, image_size
    stack = [(cur, side)]
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            cur = ch * mult
            stack.append((cur, side))
        if level < len(ch_mult) - 1:
            side //= 2
            stack.append((cur, side))
    # The middle keeps cur channels. On the way up each level has num_res_blocks + 1 blocks; each
    # pops the newest entry, concatenates it to h (whose side always equals the skip's), and outputs
    # ch * mult channels; the upsampling at the end of a level doubles the side, not the channels.
    inputs = []
    for mult in reversed(ch_mult):
        for _ in range(num_res_blocks + 1):
            skip, skip_side = stack.pop()
            inputs.append((cur, skip, skip_side))
            cur = ch * mult
    return inputs
