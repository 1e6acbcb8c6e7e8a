# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · DDPM sampling
#
# A trained noise predictor turns into a generator by running the chain backwards: start from
# pure noise $x_T \sim \mathcal N(0, I)$ and step to $x_{T-1}, \dots, x_0$. This notebook derives
# each step from the posterior of the forward process, writes the loop out, checks it against
# `helpers.samplers.sample`, watches a trajectory, and compares the two classic variance choices
# with and without clipping.
#
# It needs `03_ddpm_eps.pt` from notebook 03.

# %%
import time

import matplotlib.pyplot as plt
import torch

from helpers.checkpoints import load_model
from helpers.config import setup
from helpers.device import cpu_generator

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
model, d, ckpt = load_model(profile.require("eps"), device)
print(f"model after {ckpt['step']} training steps; {d}")
shape = (profile.train.grid_size, profile.channels, profile.image_size, profile.image_size)
few = (min(16, profile.train.grid_size), *shape[1:])  # every full chain costs T network calls: study 16 images, grid the rest

# %% [markdown]
# ## The posterior $q(x_{t-1} \mid x_t, x_0)$
#
# Given $x_0$, the step back is a Gaussian we can compute exactly. By Bayes' rule,
# $q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)$, a product of two
# Gaussians in $x_{t-1}$: $\mathcal N(x_t; \sqrt{\alpha_t}x_{t-1}, \beta_t)$ and
# $\mathcal N(x_{t-1}; \sqrt{\bar\alpha_{t-1}}x_0, 1-\bar\alpha_{t-1})$. Adding their precisions
# and precision-weighting their means gives (DDPM eq. 6–7)
#
# $$\tilde\beta_t = \Big(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\Big)^{-1} = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t,
# \qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t .$$
#
# The first form is how it is derived, so compute it that way, at a few timesteps and on random
# $x_0$ and $x_t$, and compare with the closed-form coefficients of `Diffusion.q_posterior`:

# %%
g = cpu_generator(2)
x0_probe = torch.rand(4, *shape[1:], generator=g) * 2 - 1
x_t_probe = torch.randn(4, *shape[1:], generator=g)
for t in (1, d.T // 2, d.T - 1):
    a, b, ab_prev = d.alphas[t].item(), d.betas[t].item(), d.alpha_bars_prev[t].item()
    # q(x_t | x_{t-1}) as a Gaussian in x_{t-1}: mean x_t / sqrt(a), precision a / b;
    # q(x_{t-1} | x_0): mean sqrt(ab_prev) x_0, precision 1 / (1 - ab_prev)
    precision = a / b + 1 / (1 - ab_prev)
    mean = (a / b * x_t_probe / a**0.5 + 1 / (1 - ab_prev) * ab_prev**0.5 * x0_probe) / precision
    helper_mean, helper_var = d.q_posterior(x0_probe, x_t_probe, t)
    assert torch.allclose(mean, helper_mean, atol=1e-5) and abs(1 / precision - helper_var) < 1e-9 * max(1.0, helper_var)

# %% [markdown]
# ## The ancestral step
#
# We do not know $x_0$, but the network estimates it: from $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$,
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}}.$$
#
# One step of DDPM's algorithm 2 is then: predict $\hat x_0$, optionally clip it to the data range
# $[-1, 1]$, take the posterior mean $\tilde\mu_t(x_t, \hat x_0)$ and add $\sigma_t z$,
# $z \sim \mathcal N(0, I)$, except at the last step. Without clipping the mean equals the paper's
# $\frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon_\theta\big)$.
# For $\sigma_t^2$ DDPM tried $\tilde\beta_t$ ("fixed small", exact when $x_0$ is known) and $\beta_t$
# ("fixed large", the right choice when $x_0 \sim \mathcal N(0, I)$), and found both similar.
#
# The loop, written out, from noise drawn on the CPU from a seeded generator (so the same seed
# gives the same noise on any device):

# %%
gen = cpu_generator(0)
x = torch.randn(few, generator=gen).to(device)
with torch.no_grad():
    for t in reversed(range(d.T)):
        eps = model(x, torch.full((few[0],), t, device=device))
        ab, ab_prev, a, b = (v[t].item() for v in (d.alpha_bars, d.alpha_bars_prev, d.alphas, d.betas))
        x0 = ((x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1, 1)
        mean = (ab_prev**0.5 * b / (1 - ab)) * x0 + (a**0.5 * (1 - ab_prev) / (1 - ab)) * x
        if t > 0:
            x = mean + ((1 - ab_prev) / (1 - ab) * b) ** 0.5 * torch.randn(few, generator=gen).to(device)
        else:
            x = mean
by_hand = x.clamp(-1, 1)

# %% [markdown]
# The tested sampler draws the same noises in the same order, so it must give the same images:

# %% tags=["nbval-ignore-output"]
from helpers.samplers import DDPM, sample

start = time.perf_counter()
samples = sample(model, d, few, DDPM(), cpu_generator(0), progress=False)
assert torch.allclose(samples, by_hand, atol=1e-5)
print(f"DDPM(): {few[0]} images, {d.T} steps in {time.perf_counter() - start:.0f} s, equal to the loop by hand")

# %% [markdown]
# ## A trajectory
#
# The sampler calls a callback after every step with $x_t$ and its current guess $\hat x_0$; a
# `Trajectory` is a callback that keeps every `every`-th of them. Scrub from $t = T-1$ (left of
# the slider) to $t = 0$ and watch when the guess stops changing; the numbers under the figure
# measure it, and their last line says from which $t$ on the guess stays close to the final image.

# %% tags=["nbval-ignore-output"]
from ipywidgets import IntSlider

from helpers.samplers import Trajectory
from helpers.viz import TrajectoryView, slider_widget

trajectory = Trajectory(every=max(1, d.T // 50))
start = time.perf_counter()
sample(model, d, few, DDPM(), cpu_generator(0), callback=trajectory, progress=False)
print(f"trajectory of {few[0]} images, {d.T} steps, {len(trajectory.t)} frames kept, in {time.perf_counter() - start:.0f} s")
view = TrajectoryView(trajectory, title=f"[{profile.name}] ")
slider_widget(view.render, IntSlider(value=0, min=0, max=len(view) - 1, description="frame"))

# %%
from helpers.viz import show_grid

frames = [0, len(view) // 4, len(view) // 2, 3 * len(view) // 4, len(view) - 1]
fig, axes = plt.subplots(2, len(frames), figsize=(2.2 * len(frames), 4.6))
for j, k in enumerate(frames):
    show_grid(trajectory.x_t[k, :4], f"$x_t$, t = {trajectory.t[k]}", nrow=2, ax=axes[0, j])
    show_grid(trajectory.x0[k, :4], rf"$\hat x_0$, t = {trajectory.t[k]}", nrow=2, ax=axes[1, j])
fig.suptitle(f"one DDPM trajectory: noisy state (top) and predicted x0 (bottom) [{profile.name} profile]", y=1.02)
final = trajectory.x0[-1]
print("mean |x0 guess - final image| at t =", ", ".join(f"{trajectory.t[k]}: {(trajectory.x0[k] - final).abs().mean():.3f}" for k in frames))
gaps = [(trajectory.x0[k] - final).abs().mean().item() for k in range(len(trajectory.t))]
settled = next(k for k in range(len(gaps)) if max(gaps[k:]) < 0.1)  # the first frame after which every guess is within 0.1
print(f"from t = {trajectory.t[settled]} on ({trajectory.t[settled] / d.T:.0%} of the chain before its end) the guess stays within "
      f"0.1 of the final image (mean |difference|, pixels in [-1, 1]): the steps after that only refine it")

# %% [markdown]
# ## Fixed small or fixed large, clipped or not
#
# The same noise through the four combinations. Fixed large injects $\sum_t \beta_t$ of noise
# variance over the chain against $\sum_t \tilde\beta_t$ for fixed small (printed first), and
# $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ differs from $\beta_t$ only where
# $\bar\alpha_{t-1}$ and $\bar\alpha_t$ are both close to 1, at small $t$, where $\beta_t$ itself is
# small. Without clipping nothing keeps the early, poor $\hat x_0$ guesses inside $[-1, 1]$. Two
# numbers summarise each grid against the data: the mean and the standard deviation of its
# pixels (over only a few images, so only large gaps mean anything); notebook 06 replaces such
# summaries by FID. The second row maps the differences between images from the same noise, with
# two unrelated samples as the control for scale.

# %%
from helpers.data import profile_dataset
from matplotlib.ticker import FuncFormatter

from helpers.viz import grid_image

real = profile_dataset(profile).tensors()[0][:1024]
large, small = d.betas[1:], d.posterior_variance[1:]
print(f"noise variance added over the chain: fixed large {large.sum():.2f}, fixed small {small.sum():.2f}")
apart = small / large < 0.99  # the steps where fixed small injects less than 99% of fixed large
print(f"beta tilde / beta < 0.99 at {int(apart.sum())} of {d.T - 1} steps, all with beta_t <= {large[apart].max():.4f}; "
      f"together they differ by {(large - small).sum():.3f} of the {large.sum():.2f}")
assert (large - small).sum() < 0.02 * large.sum()  # the reason the two chains barely differ
print(f"{'data':<24} pixel mean {real.mean():+.3f}, std {real.std():.3f}")
variants = {}
for variance in ("fixed_small", "fixed_large"):
    for clip in (True, False):
        name = f"{variance}, {'clip' if clip else 'no clip'}"
        variants[name] = sample(model, d, few, DDPM(variance, clip), cpu_generator(0), progress=False).cpu()
        v = variants[name]
        print(f"{name:<24} pixel mean {v.mean():+.3f}, std {v.std():.3f}")

base = variants["fixed_small, clip"]
differences = {
    "fixed large - fixed small\n(both clipped)": variants["fixed_large, clip"] - base,
    "no clip - clip\n(both fixed small)": variants["fixed_small, no clip"] - base,
    "control: two different samples\n(fixed small, clip)": base.roll(1, 0) - base,
}
gap = {name: diff.abs().mean().item() for name, diff in differences.items()}
control = gap[list(differences)[-1]]
for name, value in gap.items():
    print(f"mean |difference|, {name.replace(chr(10), ' ')}: {value:.4f}")
for name, value in list(gap.items())[:2]:
    verdict = "under a tenth of" if value < 0.1 * control else "not far below"
    print(f"verdict: the difference {name.split(chr(10))[0]} is {verdict} the gap between two unrelated samples")

fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
for ax, (name, v) in zip(axes[0], variants.items()):
    show_grid(v, name, ax=ax)
for ax, (name, diff) in zip(axes[1], differences.items()):
    im = ax.imshow(grid_image(diff / 2, padding=0)[..., 0], cmap="RdBu", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{name}\nmean |difference| {gap[name]:.4f}", fontsize=9)
    ax.set_axis_off()
fig.colorbar(im, ax=axes[1, :3], ticks=[0, 0.5, 1], format=FuncFormatter(lambda v, _: f"{4 * v - 2:+.0f}"), label="pixel difference", shrink=0.8)
ax = axes[1, 3]
ax.plot(range(1, d.T), (small / large).numpy())
ax.set(xscale="log", xlabel="timestep t (log scale)", ylabel=r"$\tilde\beta_t / \beta_t$", title="fixed small / fixed large, per step")
fig.suptitle(f"DDPM variants from the same noise, and their differences [{profile.name} profile]", y=1.0);

# %% [markdown]
# ## A sample grid, its cost, and what this notebook leaves
#
# Milliseconds per image for the full $T$-step chain with fixed-small variance and clipping (the
# defaults), and a memory figure: CUDA's peak allocation during sampling, MPS's current
# allocation, or on the CPU the process's peak resident memory since it started (an upper bound
# that includes the data and everything before, not the sampler's own). The grid is saved to
# `artifacts/<profile>/figures/`.

# %%
from helpers.device import peak_memory_mb, reset_peak_memory, sync
from helpers.viz import save_grid

reset_peak_memory(device)
sync(device)
start = time.perf_counter()
grid = sample(model, d, shape, DDPM(), cpu_generator(1), progress=False)
sync(device)
seconds = time.perf_counter() - start
memory, what = peak_memory_mb(device)
print(f"DDPM, {d.T} steps, batch {shape[0]} on {device.type}: {1000 * seconds / shape[0]:.1f} ms per image; {what} {memory:.0f} MiB")
path = save_grid(grid, profile.artifacts / "figures" / "04_ddpm_samples.png")
show_grid(grid, f"DDPM samples, {d.T} steps [{profile.name} profile]", ax=plt.subplots(figsize=(6.5, 6.5))[1])
print(f"saved {path}; next: 05 · DDIM, the same model in far fewer steps")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/04_ddpm_sampling.py`.
#
# **1. The network's guess of $x_0$.** Invert $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$
# for $x_0$, with the predicted noise in place of $\varepsilon$ (DDPM eq. 15).

# %%
def x0_from_eps(alpha_bar, x_t, eps_hat):
    """The x_0 that x_t and the predicted noise imply; alpha_bar: a float."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(x0_from_eps)

# %% [markdown]
# **2. The step's mean in terms of the noise.** Substitute your $\hat x_0$ into $\tilde\mu_t$ and
# simplify: the result is DDPM's eq. 11, $\frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\varepsilon\big)$.
# Write it; the check compares it with the posterior mean at $\hat x_0$.

# %%
def posterior_mean_from_eps(alpha, alpha_bar, x_t, eps_hat):
    """The mean of p(x_{t-1} | x_t) from the predicted noise, without clipping; alpha = 1 - beta_t."""
    raise NotImplementedError  # your code here


# %%
check(posterior_mean_from_eps)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
