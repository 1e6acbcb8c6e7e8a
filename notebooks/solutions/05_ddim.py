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
import torch


def ddim_euler(model, d, x_T, timesteps):
    # Eq. 12 at eta = 0, divided by sqrt(ab_t'):  y_t' = x0_hat + sigma(t') eps_hat, and
    # x0_hat = y_t - sigma(t) eps_hat (x_t = sqrt(ab_t) (x0_hat + sigma(t) eps_hat)), so
    #     y_t' = y_t + (sigma(t') - sigma(t)) eps_hat:
    # one Euler step of dy/dsigma = eps_hat(y, sigma), the probability-flow ODE in sigma.
    y = x_T / d.alpha_bars[timesteps[0]].sqrt()
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        sigma = d.sigmas[t]
        sigma_prev = d.sigmas[t_prev] if t_prev >= 0 else 0.0  # x_0: sigma = 0
        x_t = y / (1 + sigma**2) ** 0.5  # sqrt(ab) = 1 / sqrt(1 + sigma^2)
        eps = model(x_t, torch.full((len(x_t),), t))
        y = y + (sigma_prev - sigma) * eps
    return y  # at sigma = 0, y = x_0


def predict_ddim_spread():
    # (eta = 0 at 10 steps: narrower; the closer eta: 0)
    return (-1, 0)


# Why. For data N(0, kappa^2) the exact ODE keeps y(sigma) proportional to sqrt(kappa^2 + sigma^2),
# and eps_hat = E[eps | y] = sigma y / (kappa^2 + sigma^2) is exactly that curve's slope dy/dsigma
# at y: Euler follows the tangent. sqrt(kappa^2 + sigma^2) is convex in sigma, so a tangent step from
# sigma down to sigma' lands below the curve: every step shrinks y a little too much, and 10 coarse
# steps leave the samples clearly narrower than the data (an error that vanishes as the grid gets
# finer). At eta = 1 the same grid is the respaced ancestral sampler of notebook 04's exercise 2,
# which drops the uncertainty about x_0 at each jump and comes out narrower still: here, as in
# Song, Meng & Ermon's Table 1 at few steps, eta = 0 is the better sampler.
