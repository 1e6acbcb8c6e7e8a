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
# # Solutions to the exercises of 06 · EMA and FID

# %%
import math


def ema_update(shadow, params, decay):
    return [decay * s + (1 - decay) * p for s, p in zip(shadow, params)]


def ema_half_life(decay):
    # after n updates the old value keeps the share decay^n; solve decay^n = 1/2
    return math.log(0.5) / math.log(decay)
