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
# # Solutions to the exercises of 09 · Scores, SDEs and fast solvers

# %%
def tweedie(x, sigma, score):
    # Efron 2011: the posterior mean is one step of size sigma^2 up the score of the noisy density
    return x + sigma**2 * score


def ancestral_split(sigma, sigma_next):
    # sigma_up^2 is the DDPM posterior variance in VE units; it vanishes when sigma_next = 0 (nothing
    # left to add) and when sigma_next = sigma (no step, nothing to undo)
    up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    return (sigma_next**2 - up**2) ** 0.5, up
