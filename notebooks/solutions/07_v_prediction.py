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
# # Solutions to the exercises of 07 · v-prediction

# %%
def x0_from_v(alpha_bar, x_t, v):
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v  # rotate (x_t, v) back by the angle phi


def eps_from_v(alpha_bar, x_t, v):
    return (1 - alpha_bar) ** 0.5 * x_t + alpha_bar**0.5 * v
