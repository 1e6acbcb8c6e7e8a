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
# # Solutions to the exercises of 04 · DDPM sampling

# %%
def x0_from_eps(alpha_bar, x_t, eps_hat):
    return (x_t - (1 - alpha_bar) ** 0.5 * eps_hat) / alpha_bar**0.5  # DDPM eq. 15


def posterior_mean_from_eps(alpha, alpha_bar, x_t, eps_hat):
    beta = 1 - alpha
    return (x_t - beta / (1 - alpha_bar) ** 0.5 * eps_hat) / alpha**0.5  # DDPM eq. 11
