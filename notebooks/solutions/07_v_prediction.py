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
import math


def v_loss(model, alpha_bars, x0, t, eps, gamma):
    """||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2, so the weight that makes the loss
    min(SNR, gamma) ||x0_hat - x0||^2 is min(SNR, gamma) / (SNR + 1) on the v error."""
    ab = alpha_bars[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    snr = alpha_bars[t] / (1 - alpha_bars[t])
    weight = snr.clamp(max=gamma) / (snr + 1)
    return weight * ((model(x_t, t) - v) ** 2).flatten(1).mean(1)


def ddim_step_from_v(x_t, v_hat, alpha_bar_t, alpha_bar_prev):
    """With t' < t written p: x_p = cos(phi_p) x0_hat + sin(phi_p) eps_hat with x0_hat = cos(phi_t) x_t - sin(phi_t) v_hat and
    eps_hat = sin(phi_t) x_t + cos(phi_t) v_hat gives
        x_p = (cos phi_p cos phi_t + sin phi_p sin phi_t) x_t - (cos phi_p sin phi_t - sin phi_p cos phi_t) v_hat
            = cos(phi_t - phi_p) x_t - sin(phi_t - phi_p) v_hat:
    deterministic DDIM turns (x_t, v_hat) back by the angle phi_t - phi_p, along the circle of the
    notebook's figure (Salimans & Ho 2022 write DDIM this way)."""
    phi_t = math.atan2((1 - alpha_bar_t) ** 0.5, alpha_bar_t**0.5)
    phi_p = math.atan2((1 - alpha_bar_prev) ** 0.5, alpha_bar_prev**0.5)
    return math.cos(phi_t - phi_p) * x_t - math.sin(phi_t - phi_p) * v_hat
