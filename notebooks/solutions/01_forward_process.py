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
# # Solutions to the exercises of 01 · The forward process

# %%
import torch


def jump_forward(x_from, t_from, t_to, alpha_bars, eps):
    # The composition argument from x_a instead of x_0: each step multiplies the signal by
    # sqrt(alpha_i) and adds independent noise, so after the steps a+1..b the old x_a is scaled by
    # sqrt(prod alpha_i) = sqrt(ab_b / ab_a) and the new noises add up to variance 1 - ab_b / ab_a.
    # (x_a's own noise rides along inside x_a: adding sqrt(1 - ab_b) eps would count it twice.)
    ratio = alpha_bars[t_to] / alpha_bars[t_from]
    return ratio.sqrt() * x_from + (1 - ratio).sqrt() * eps


def snr_crossing(alpha_bars):
    snr = alpha_bars / (1 - alpha_bars)
    return int(torch.nonzero(snr <= 1)[0])  # SNR falls monotonically, so the first hit is the crossing
