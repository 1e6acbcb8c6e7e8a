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
import torch


def ddpm_respaced(model, d, x_T, timesteps, generator):
    x = x_T
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):  # t_prev = -1: x_0, alpha_bar = 1
        ab = d.alpha_bars[t].item()
        ab_prev = d.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
        alpha = ab / ab_prev  # the jump as one step of a Markov chain: alpha_bar_t = alpha * alpha_bar_t'
        beta = 1 - alpha
        eps = model(x, torch.full((len(x),), t))
        x0 = ((x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1, 1)
        # the posterior of the notebook (DDPM eq. 6-7) with this alpha and beta
        mean = ab_prev**0.5 * beta / (1 - ab) * x0 + alpha**0.5 * (1 - ab_prev) / (1 - ab) * x
        if t_prev >= 0:
            z = torch.randn(x.shape, generator=generator)
            x = mean + ((1 - ab_prev) / (1 - ab) * beta) ** 0.5 * z
        else:
            x = mean  # alpha_bar' = 1: the mean is x0 itself, and beta tilde is 0
    return x


# On the full grid alpha = ab_t / ab_{t-1} = alpha_t: this is DDPM's loop. On a shorter grid it is
# exactly DDIM at eta = 1 (notebook 05): eq. 16 at eta = 1 is this jump's beta tilde.


def predict_sample_spread():
    # (full chain: the same within 2%, 10-step grid: narrower)
    return (0, -1)


# Why. The true reverse step p(x_{t-1} | x_t) = integral of q(x_{t-1} | x_t, x_0) p(x_0 | x_t) over x_0
# has mean mu_tilde(x_t, E[x_0 | x_t]), what the sampler uses, but variance
#     beta_tilde_t + c_t^2 Var[x_0 | x_t],    c_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
# the coefficient of x_0 in mu_tilde. Fixed small keeps only beta_tilde_t, the variance when x_0 is
# known, and drops the uncertainty about x_0. Over the full chain c_t is of the order of beta_t,
# so each step drops O(beta_t^2) and the sum stays small (the samples come out about 1% narrower
# here). Over 10 jumps beta = 1 - ab_t / ab_t' is large, so is c, and the samples come out about a
# third narrower. (Fixed large, sigma^2 = beta, adds more noise per step and happens to be exact for
# data N(0, I): both choices are approximations of this one variance.)
