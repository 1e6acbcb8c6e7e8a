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
# # Solutions to the exercises of 13 · Text-to-image in miniature

# %%
import math

import torch
import torch.nn.functional as F
from einops import rearrange

from helpers.samplers import ddim_step


def cross_attention(block, x, context, pad):
    n, (h, w) = block.heads, x.shape[-2:]
    q = rearrange(block.q(block.norm(x)), "b (n d) h w -> b n (h w) d", n=n)  # head i: channels i*d .. (i+1)*d - 1
    k, v = rearrange(block.kv(context), "b l (two n d) -> two b n l d", two=2, n=n)  # the first C outputs are k, the rest v
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [b, n, pixels, tokens], scaled by the head's own width
    weights = scores.masked_fill(pad[:, None, None, :], -math.inf).softmax(-1)  # over the caption's real tokens
    out = rearrange(weights @ v, "b n (h w) d -> b (n d) h w", h=h, w=w)  # the heads side by side again
    return x + block.proj(out)


def contrastive_loss_with_duplicates(image_emb, text_emb, ids, logit_scale):
    logits = logit_scale.exp() * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    same = (ids[:, None] == ids[None]).all(-1)  # [i, j]: caption j is caption i, word for word
    matched = logits.masked_fill(~same, -math.inf)
    image_to_text = torch.logsumexp(logits, 1) - torch.logsumexp(matched, 1)  # -log softmax mass on the matches of row i
    text_to_image = torch.logsumexp(logits, 0) - torch.logsumexp(matched, 0)  # the same down each column
    return (image_to_text.mean() + text_to_image.mean()) / 2


def sdedit_loop(model, d, image, timesteps, eps):
    t0 = timesteps[0]
    ab = d.alpha_bars[t0].float()
    x = ab.sqrt() * image + (1 - ab).sqrt() * eps  # the forward process to t_0, in one jump
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):  # down the grid, then to alpha_bar = 1
        out = model(x, torch.full((len(x),), t))
        x, _ = ddim_step(d, out, x, t, t_prev, clip_x0=False)
    return x
