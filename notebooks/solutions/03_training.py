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
# # Solutions to the exercises of 03 · Training

# %%
import math


def min_snr_loss_x0(model, alpha_bars, x0, t, noise, gamma):
    # x_t and the x_0 it implies with the network's eps_hat (DDPM eq. 4 solved for x_0):
    #   x0_hat - x0 = -sqrt((1 - ab) / ab) (eps_hat - eps),  so  ||x0_hat - x0||^2 = ||eps_hat - eps||^2 / SNR.
    # min(SNR, gamma) ||x0_hat - x0||^2 is therefore min(SNR, gamma) / SNR ||eps_hat - eps||^2: the same loss
    # as the eps loss with the min-SNR weight (Hang et al. 2023, eq. 7 and its eps form).
    ab = alpha_bars[t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    x0_hat = (x_t - (1 - ab).sqrt() * model(x_t, t)) / ab.sqrt()
    snr = (alpha_bars[t] / (1 - alpha_bars[t])).float()
    return (snr.clamp(max=gamma) * ((x0_hat - x0) ** 2).flatten(1).mean(1)).mean()


def eps_from_denoiser(denoiser, x_t, alpha_bar):
    # Take E[. | x_t] of x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps: x_t = sqrt(ab) E[x_0 | x_t] + sqrt(1 - ab) E[eps | x_t].
    # The denoiser works in the units x = x_t / sqrt(ab) = x_0 + sigma eps, sigma = sqrt((1 - ab) / ab), and
    # conditioning on x is conditioning on x_t, so E[x_0 | x_t] = denoiser(x_t / sqrt(ab), sigma).
    sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
    x0_mean = denoiser(x_t / math.sqrt(alpha_bar), sigma)
    return (x_t - math.sqrt(alpha_bar) * x0_mean) / math.sqrt(1 - alpha_bar)


def eps_loss_floor(kappa, alpha_bar):
    # In the units x = x_t / sqrt(ab) = mu + kappa z + sigma eps (mu: the component's mean, known from x_t), eps and
    # x are jointly Gaussian per coordinate: Var[x] = kappa^2 + sigma^2, Cov[eps, x] = sigma, so
    #   E[eps | x] = sigma / (kappa^2 + sigma^2) (x - mu),  Var[eps | x] = 1 - sigma^2 / (kappa^2 + sigma^2) = kappa^2 / (kappa^2 + sigma^2).
    # The floor is that variance. In alpha_bar: ab kappa^2 / (ab kappa^2 + 1 - ab).
    #
    # For images: the fine texture plays the part of kappa. At small t, sigma is far smaller than the texture's
    # variation, so the floor is close to 1: most of the noise cannot be told apart from texture, which is why the
    # unweighted eps error is largest at small t. As sigma grows past kappa the floor falls towards 0: x_t is
    # mostly noise, and eps is nearly x_t itself. (With components that overlap, as on the notebook's ring at
    # code t = 250, not knowing the component adds to the floor; this formula ignores that.)
    sigma2 = (1 - alpha_bar) / alpha_bar
    return kappa**2 / (kappa**2 + sigma2)
