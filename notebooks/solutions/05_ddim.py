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
# # Solutions to the exercises of 05 · DDIM

# %%
def leading_timesteps(T, steps):
    return [k * (T // steps) for k in reversed(range(steps))]


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    # Song et al. 2021, eq. 16: eta times the posterior standard deviation between the two steps
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)) ** 0.5
