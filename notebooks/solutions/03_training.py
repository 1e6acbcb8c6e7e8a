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
# # Solutions to the exercises of 03 · Training

# %%
import torch


def min_snr_weight(alpha_bars, t, gamma):
    snr = (alpha_bars / (1 - alpha_bars))[t]
    return (snr.clamp(max=gamma) / snr).float()  # min(SNR, gamma) / SNR, Hang et al. 2023


def initial_loss(alpha_bars, gamma):
    # the model outputs 0, so each pixel's squared error is eps^2 with mean 1: the loss is E_t[w(t)]
    return min_snr_weight(alpha_bars, torch.arange(len(alpha_bars)), gamma).mean()
