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


def ema_half_life(decay):
    # after n updates the old value keeps the share decay^n; solve decay^n = 1/2
    return math.log(0.5) / math.log(decay)


def ema_error(decay, noise_std, jump, steps):
    """Unrolled, the average after n updates from 0 is (1 - d) sum_{k=1..n} d^(n-k) theta_k. Its mean is
    jump (1 - d^n): a lag of jump d^n (the share the old value 0 keeps). Its variance is
    (1 - d)^2 noise_std^2 sum_{j<n} d^(2j) = noise_std^2 (1 - d) / (1 + d) (1 - d^(2n)). The expected
    squared error is lag^2 + variance.

    50 updates after a jump of 1 with noise std 0.25: decay 0.9 gives about 0.0033 (almost all
    variance), decay 0.99 about 0.37 (almost all lag: 0.99^50 = 0.61 of the old value is left),
    so 0.9 is much closer. 500 updates after, 0.99 gives about 0.00036 against 0.9's 0.0033:
    once the lag has decayed, the longer average lets less noise through and wins. That is the
    trade a decay makes, and why a short run needs a small decay (or warm-up)."""
    lag = jump * decay**steps
    variance = noise_std**2 * (1 - decay) / (1 + decay) * (1 - decay ** (2 * steps))
    return lag**2 + variance
