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
# # Solutions to the exercises of 10 · Latent diffusion

# %%
def kl_to_standard_normal(mean, logvar):
    # the closed form for diagonal Gaussians, summed over every latent of an image; it is zero only
    # for mean = 0 and logvar = 0, the prior itself
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def latent_scale_factor(latents):
    # Stable Diffusion's 0.18215 is this number for its autoencoder; without it, latents of std 5
    # would have 25 times the SNR the schedule was designed for at every t
    return 1 / float(latents.std())
