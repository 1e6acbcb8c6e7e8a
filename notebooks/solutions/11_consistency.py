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
# # Solutions to the exercises of 11 · From diffusion to consistency

# %%
def consistency_coefficients(sigma, sigma_min):
    # EDM's coefficients with sigma shifted by sigma_min in c_skip and in c_out's numerator, so that
    # c_skip = 1 and c_out = 0 at sigma_min; as sigma grows, c_skip -> 0 and c_out -> sigma_data: the
    # output is all network, scaled to the data's spread, as an EDM denoiser at high noise
    sigma_data = 0.5
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def pseudo_huber(a, b):
    # about ||a - b||^2 / (2c) when ||a - b|| << c, about ||a - b|| - c when ||a - b|| >> c
    c = 0.00054 * a[0].numel() ** 0.5
    return ((a - b).flatten(1).pow(2).sum(1) + c**2).sqrt() - c
