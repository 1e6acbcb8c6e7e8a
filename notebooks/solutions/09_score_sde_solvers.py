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
# # Solutions to the exercises of 09 · Scores, SDEs and fast solvers

# %%
def heun_sampler(denoiser, x, sigmas):
    # Heun's method (Karras et al. 2022, algorithm 1 without churn): an Euler step to the next noise
    # level, the slope where it lands, and the step again with the average of the two slopes. Two
    # evaluations per step; the step to sigma = 0 stays Euler, since its second slope would divide by 0
    # (and there D(x; 0) = x anyway: nothing is left to correct).
    pairs = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))
    for sigma, sigma_next in pairs:
        slope = (x - denoiser(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        if sigma_next == 0:
            x = x_euler
        else:
            slope_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * (slope + slope_next) / 2
    return x


def error_shrink_factors():
    # A method of order p makes a global error proportional to h^p for steps of length h, so doubling
    # the number of steps on the same grid shape divides it by 2^p: 2 for Euler (order 1), 4 for Heun
    # (order 2) and 4 for DPM-Solver++(2M), which is second order as well although it makes one
    # evaluation per step (its extra term reuses the previous step's D), so of the two second-order
    # methods it is the cheaper per evaluation: doubling Heun's steps doubles its evaluations too.
    # The grid of the check stops at sigma_min = 0.1: the usual last step, sigma_min -> 0, is an Euler
    # step whose length does not change with n, so its error stays while the others shrink and
    # would eventually hide Heun's order.
    return 2.0, 4.0, 4.0
