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
import torch

from helpers.consistency import pseudo_huber


def ct_loss(student, target, x0, sigmas, n, z):
    # The Euler step of the ODE from sigma_{n+1} to sigma_n is x + (sigma_n - sigma_{n+1}) (x - D) / sigma_{n+1}.
    # With x = x_0 + sigma_{n+1} z and D replaced by the one x_0 we know, x - D = sigma_{n+1} z, and the
    # step lands on x_0 + sigma_n z: the same noise, scaled down. No teacher is needed; the estimate is
    # unbiased only as the levels get close, which is why consistency training raises N during training.
    view = (-1,) + (1,) * (x0.dim() - 1)
    sigma, sigma_next = sigmas[n].view(view), sigmas[n + 1].view(view)
    with torch.no_grad():  # the target receives no gradient
        wanted = target(x0 + sigma * z, sigma)
    return pseudo_huber(student(x0 + sigma_next * z, sigma_next), wanted)


def predict_one_step_radius():
    # D(x, sigma) = E[x_0 | x] is an average over every x_0 that could have made x. As sigma_max grows,
    # x says less about x_0 and the average moves towards the data's mean, the origin: the denoiser's
    # one-step samples shrink towards it (-1), which is why the teacher's one DDIM step is a blur.
    # f follows the ODE trajectory, a one-to-one map that carries the noisy marginal p_sigma_max onto the
    # data: from the exact marginal it lands on the ring at any sigma_max (0). The sampler's other
    # error, starting from pure noise instead of p_sigma_max, is what a higher sigma_max reduces.
    return (-1, 0)
