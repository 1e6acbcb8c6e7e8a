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


def forward_step(x_prev, beta, eps):
    return (1 - beta) ** 0.5 * x_prev + beta**0.5 * eps  # q(x_t | x_{t-1}), DDPM eq. 2


def snr_crossing(alpha_bars):
    snr = alpha_bars / (1 - alpha_bars)
    return int(torch.nonzero(snr <= 1)[0])  # SNR falls monotonically, so the first hit is the crossing
