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
# # Solutions to the exercises of 08 · Classifier-free guidance

# %%
import torch


def drop_labels(y, p_uncond, null_id, generator):
    drop = torch.rand(y.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_id), y)


def guidance_w_form(eps_cond, eps_uncond, w):
    return (1 + w) * eps_cond - w * eps_uncond  # Ho & Salimans' w is our s - 1
