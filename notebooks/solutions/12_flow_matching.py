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
# # Solutions to the exercises of 12 · Flow matching and rectified flow


# %%
def flow_matching_loss(model, x0, t, eps):
    t_img = t.view(-1, *([1] * (x0.dim() - 1)))  # one t per image, broadcast over its pixels
    x_t = (1 - t_img) * x0 + t_img * eps  # the straight path
    return (model(x_t, 1000 * t) - (eps - x0)).pow(2).mean()  # the network sees 1000 t; the target is the line's velocity


def flow_heun(velocity, x, steps):
    times = [1 - k / steps for k in range(steps + 1)]
    for t, t_next in zip(times[:-1], times[1:]):
        u = velocity(x, t)
        guess = x + (t_next - t) * u  # Euler's predictor
        if t_next == 0:  # the last step stays Euler's: no evaluation at t = 0
            x = guess
        else:
            x = x + (t_next - t) * (u + velocity(guess, t_next)) / 2  # the trapezoid rule with the predicted end
    return x


def predict_reflow_steps():
    # Each pair (eps, M + S eps) is joined by a straight line, and through each point x at time t passes
    # exactly one of them (eps = (x - (1 - t) M) / ((1 - t) S + t) is determined by x): the marginal velocity
    # is that line's own velocity, (1 - S) eps - M, constant along the path. The ODE's paths are the lines,
    # so one Euler step, itself a straight line, lands exactly on M + S x_1. The first flow needs many
    # steps: along its paths the noise's share sqrt((1 - t)^2 S^2 + t^2) is not linear in t, so they curve.
    return 1
