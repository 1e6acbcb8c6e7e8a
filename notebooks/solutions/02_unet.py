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
