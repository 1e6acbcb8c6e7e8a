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
# with and without clipping. Symbols as on the [notation](../docs/notation.md) page: formulas use the
# maths index $t = 1..T$, code the index `t = 0..T-1` (code `t` is maths $t+1$).
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
# every image costs T network calls: a grid of 36 (6 x 6) at most, and 16 studied step by step
shape = (min(36, profile.train.grid_size), profile.channels, profile.image_size, profile.image_size)
few = (min(16, shape[0]), *shape[1:])

# %% [markdown]
# ## The posterior $q(x_{t-1} \mid x_t, x_0)$
#
# Given $x_0$, the step back is a Gaussian we can compute exactly. By Bayes' rule, and because
# the chain is Markov ($q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$),
#
# $$q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)} \;\propto\; q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)
# \quad\text{as a function of } x_{t-1}.$$
#
# The second factor is a Gaussian in $x_{t-1}$, $\mathcal N(x_{t-1}; \sqrt{\bar\alpha_{t-1}}x_0, (1-\bar\alpha_{t-1})I)$.
# The first, $\mathcal N(x_t; \sqrt{\alpha_t}x_{t-1}, \beta_t I)$, is a Gaussian in $x_t$; read as a
# function of $x_{t-1}$ it is one too, because its exponent is a square in $x_{t-1}$:
#
# $$\frac{\lVert x_t - \sqrt{\alpha_t}\,x_{t-1}\rVert^2}{2\beta_t} = \frac{\lVert x_{t-1} - x_t/\sqrt{\alpha_t}\rVert^2}{2\beta_t/\alpha_t},
# \qquad\text{so}\qquad q(x_t \mid x_{t-1}) = \alpha_t^{-n/2}\,\mathcal N\big(x_{t-1};\ x_t/\sqrt{\alpha_t},\ (\beta_t/\alpha_t) I\big)$$
#
# for $n$ pixels: an *unnormalised* Gaussian in $x_{t-1}$ (a likelihood, whose integral over
# $x_{t-1}$ is $\alpha_t^{-n/2}$, not 1), with mean $x_t/\sqrt{\alpha_t}$ and precision $\alpha_t/\beta_t$.
#
# Two Gaussians in the same variable multiply to a third: per pixel, completing the square,
# $\frac{(x-a)^2}{A} + \frac{(x-b)^2}{B} = \big(\frac1A + \frac1B\big)(x-m)^2 + \text{const}$ with
# $m = \big(\frac aA + \frac bB\big)/\big(\frac1A + \frac1B\big)$: **precisions add, and the mean is the
# precision-weighted mean**. With $1/A = \alpha_t/\beta_t$, $a = x_t/\sqrt{\alpha_t}$, $1/B = 1/(1-\bar\alpha_{t-1})$,
# $b = \sqrt{\bar\alpha_{t-1}}x_0$, and $\alpha_t + \beta_t = 1$, $\alpha_t\bar\alpha_{t-1} = \bar\alpha_t$:
#
# $$\frac{1}{\tilde\beta_t} = \frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}} = \frac{\alpha_t(1-\bar\alpha_{t-1}) + \beta_t}{\beta_t(1-\bar\alpha_{t-1})} = \frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})},
# \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t,$$
#
# $$\tilde\mu_t = \tilde\beta_t\Big(\frac{\alpha_t}{\beta_t}\,\frac{x_t}{\sqrt{\alpha_t}} + \frac{\sqrt{\bar\alpha_{t-1}}\,x_0}{1-\bar\alpha_{t-1}}\Big)
# = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
# \qquad\text{(DDPM eq. 6–7)}.$$
#
# Three checks against `Diffusion.q_posterior`, at a few timesteps. First the precision form
# (the middle of each line above) on random images $x_0$ and $x_t$. Then, on one pixel, without
# any algebra: the rewriting of $q(x_t \mid x_{t-1})$ on a fine grid of $x_{t-1}$, and the product of the
# two densities normalised on that grid, whose mean and variance must be $\tilde\mu_t$ and
# $\tilde\beta_t$ and whose shape must be their Gaussian. In code, `d.alphas[t]` and `d.betas[t]` are
# $\alpha$ and $\beta$ of maths step $t+1$, and `d.alpha_bars_prev[t]` is the $\bar\alpha$ before it.

# %%
g = cpu_generator(2)
x0_probe = torch.rand(4, *shape[1:], generator=g) * 2 - 1
x_t_probe = torch.randn(4, *shape[1:], generator=g)
for t in (1, d.T // 2, d.T - 1):
    a, b, ab_prev = d.alphas[t].item(), d.betas[t].item(), d.alpha_bars_prev[t].item()
    precision = a / b + 1 / (1 - ab_prev)  # the precisions of the two Gaussians in x_{t-1} add
    mean = (a / b * x_t_probe / a**0.5 + 1 / (1 - ab_prev) * ab_prev**0.5 * x0_probe) / precision
    helper_mean, helper_var = d.q_posterior(x0_probe, x_t_probe, t)
    assert torch.allclose(mean, helper_mean, atol=1e-5) and abs(1 / precision - helper_var) < 1e-9 * max(1.0, helper_var)


def normal(x, mean, var):
    """The density of N(mean, var) at x (one pixel)."""
    return torch.exp(-((x - mean) ** 2) / (2 * var)) / (2 * torch.pi * var) ** 0.5


def posterior_on_grid(t, x0, noise):
    """q(x_t | x_{t-1}) and q(x_{t-1} | x_0) on a fine grid of x_{t-1}, for x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
    a, b, ab, ab_prev = (v[t].double() for v in (d.alphas, d.betas, d.alpha_bars, d.alpha_bars_prev))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    means = (x_t / a.sqrt(), ab_prev.sqrt() * x0)  # of the two factors as Gaussians in x_{t-1}
    step = min(b / a, 1 - ab_prev).sqrt() / 200  # 200 points per standard deviation of the narrower factor
    grid = torch.arange((min(means) - 4000 * step).item(), (max(means) + 4000 * step).item(), step.item(), dtype=torch.float64)
    likelihood = normal(x_t, a.sqrt() * grid, b)  # q(x_t | x_{t-1}), a density in x_t, at every x_{t-1}
    assert torch.allclose(likelihood, normal(grid, means[0], b / a) / a.sqrt(), rtol=1e-9)  # the rewriting, n = 1
    return x_t, grid, step, likelihood, normal(grid, means[1], 1 - ab_prev)


x0_pixel = torch.tensor(0.6, dtype=torch.float64)
widths = (d.betas / d.alphas).log() - (1 - d.alpha_bars_prev).log()  # log of the two factors' variance ratio
t_even = 1 + int(widths[1:].abs().argmin())  # where the two factors are about equally wide
for t in sorted({1, t_even, d.T // 2, d.T - 1}):
    x_t, grid, step, likelihood, prior = posterior_on_grid(t, x0_pixel, 1.3)
    posterior = likelihood * prior / ((likelihood * prior).sum() * step)  # the product, normalised on the grid
    grid_mean = (grid * posterior).sum() * step
    grid_var = ((grid - grid_mean) ** 2 * posterior).sum() * step
    mu_tilde, beta_tilde = d.q_posterior(x0_pixel.view(1), x_t.view(1), t)
    assert abs(grid_mean - mu_tilde.item()) < 1e-6 * beta_tilde**0.5 and abs(grid_var / beta_tilde - 1) < 1e-6, (t, grid_mean, grid_var)
    assert (posterior - normal(grid, mu_tilde, beta_tilde)).abs().max() < 1e-6 * posterior.max()
    print(f"code t = {t:>4}: on the grid, mean {grid_mean:+.6f} and variance {grid_var:.4e}; "
          f"q_posterior: mu tilde {mu_tilde.item():+.6f}, beta tilde {beta_tilde:.4e}")
print(f"at the last timestep the likelihood's variance beta/alpha = {(d.betas[-1] / d.alphas[-1]).item():.4f}, "
      f"the prior's 1 - alpha_bar = {(1 - d.alpha_bars_prev[-1]).item():.4f}")

x_t, grid, step, likelihood, prior = posterior_on_grid(t_even, x0_pixel, 1.3)
mu_tilde, beta_tilde = d.q_posterior(x0_pixel.view(1), x_t.view(1), t_even)
fig, ax = plt.subplots(figsize=(7.5, 3.4))
ax.plot(grid, likelihood / (likelihood.sum() * step), label=r"$q(x_t \mid x_{t-1})$ as a function of $x_{t-1}$, normalised")
ax.plot(grid, prior, label=r"$q(x_{t-1} \mid x_0)$")
ax.plot(grid, likelihood * prior / ((likelihood * prior).sum() * step), lw=3, alpha=0.5, label="their product, normalised on the grid")
ax.plot(grid, normal(grid, mu_tilde, beta_tilde), "k--", label=r"$\mathcal{N}(\tilde\mu_t, \tilde\beta_t)$ from q_posterior")
spread = 5 * (1 - d.alpha_bars_prev[t_even]).sqrt().item()
ax.set(xlim=(mu_tilde.item() - spread, mu_tilde.item() + spread), xlabel="$x_{t-1}$ (one pixel)", ylabel="density",
       title=f"the posterior, a product of two Gaussians in $x_{{t-1}}$ (code t = {t_even}, $x_0$ = {x0_pixel:.1f})")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1));

# %% [markdown]
# The figure is drawn at the timestep where the two factors are about equally wide: their
# product is narrower than either (the precisions add) and sits between their means (the
# precision-weighted mean). Late in the chain the likelihood is the narrower factor by far (the
# last printed line), and the posterior sits almost on it: there $x_t$ says more about $x_{t-1}$
# than $x_0$ does.

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
# $\frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon_\theta\big)$ (eq. 11; checked
# at the end of the next cell).
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

x_t_probe, eps_probe = torch.randn(2, *few, generator=cpu_generator(3))
for t in (1, d.T // 2, d.T - 1):  # the unclipped posterior mean at x0_hat is eq. 11
    a, b, ab = d.alphas[t].item(), d.betas[t].item(), d.alpha_bars[t].item()
    mean, _ = d.q_posterior(d.predict_x0(x_t_probe, t, eps_probe), x_t_probe, t)
    assert torch.allclose(mean, (x_t_probe - b / (1 - ab) ** 0.5 * eps_probe) / a**0.5, atol=1e-4)

# %% [markdown]
# The tested sampler draws the same noises in the same order, so it must give the same images.
# It also calls a callback after every step with $x_t$ and its current guess $\hat x_0$; a
# `Trajectory` is a callback that keeps every `every`-th of them, for the next section.

# %% tags=["nbval-ignore-output"]
from helpers.samplers import DDPM, Trajectory, sample

trajectory = Trajectory(every=max(1, d.T // 50))
start = time.perf_counter()
samples = sample(model, d, few, DDPM(), cpu_generator(0), callback=trajectory, progress=False)
assert torch.allclose(samples, by_hand, atol=1e-5)
print(f"DDPM(): {few[0]} images, {d.T} steps in {time.perf_counter() - start:.0f} s, equal to the loop by hand; "
      f"{len(trajectory.t)} frames of the trajectory kept")

# %% [markdown]
# ## A trajectory
#
# Scrub from $t = T-1$ (left of the slider) to $t = 0$ and watch when the guess stops changing;
# the numbers printed with the figure measure it, and their last line says from which $t$ on the guess
# stays close to the final image.

# %% tags=["nbval-ignore-output"]
from ipywidgets import IntSlider

from helpers.viz import TrajectoryView, slider_widget

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
# Two changes to the default sampler (fixed small, clipped), one at a time, from the same noise
# as above. Fixed large injects $\sum_t \beta_t$ of noise variance over the chain against
# $\sum_t \tilde\beta_t$ for fixed small (printed first), and
# $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ differs from $\beta_t$ only where
# $\bar\alpha_{t-1}$ and $\bar\alpha_t$ are both close to 1, at small $t$, where $\beta_t$ itself is
# small (the first figure plots the ratio). Without clipping nothing keeps the early, poor $\hat x_0$
# guesses inside $[-1, 1]$. Two numbers summarise each grid against the data: the mean and the
# standard deviation of its pixels (over only a few images, so only large gaps mean anything);
# notebook 06 replaces such summaries by FID. The second row of the second figure maps the
# differences between images from the same noise, with two unrelated samples as the control for scale.

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
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(range(1, d.T), (small / large).numpy())
ax.set(xscale="log", xlabel="code timestep t (log scale)", ylabel=r"$\tilde\beta_t / \beta_t$", title="fixed small / fixed large, per step")
plt.show()

print(f"{'data':<32} pixel mean {real.mean():+.3f}, std {real.std():.3f}")
variants = {"fixed small, clip (the default)": samples.cpu()}  # the run above: the same noise, cpu_generator(0)
for name, sampler in (("fixed large, clip", DDPM("fixed_large", True)), ("fixed small, no clip", DDPM("fixed_small", False))):
    variants[name] = sample(model, d, few, sampler, cpu_generator(0), progress=False).cpu()
for name, v in variants.items():
    print(f"{name:<32} pixel mean {v.mean():+.3f}, std {v.std():.3f}")

base = variants["fixed small, clip (the default)"]
differences = {
    "control: two different samples\n(the default)": base.roll(1, 0) - base,
    "fixed large - fixed small\n(both clipped)": variants["fixed large, clip"] - base,
    "no clip - clip\n(both fixed small)": variants["fixed small, no clip"] - base,
}
gap = {name: diff.abs().mean().item() for name, diff in differences.items()}
control = gap[list(differences)[0]]
for name, value in gap.items():
    print(f"mean |difference|, {name.replace(chr(10), ' ')}: {value:.4f}")
for name, value in list(gap.items())[1:]:
    verdict = "under a tenth of" if value < 0.1 * control else "not far below"
    print(f"verdict: the difference {name.split(chr(10))[0]} is {verdict} the gap between two unrelated samples")

fig, axes = plt.subplots(2, 3, figsize=(10, 7))
for ax, (name, v) in zip(axes[0], variants.items()):
    show_grid(v, name, ax=ax)
for ax, (name, diff) in zip(axes[1], differences.items()):
    im = ax.imshow(grid_image(diff / 2, padding=0)[..., 0], cmap="RdBu", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{name}\nmean |difference| {gap[name]:.4f}", fontsize=9)
    ax.set_axis_off()
fig.colorbar(im, ax=axes[1], ticks=[0, 0.5, 1], format=FuncFormatter(lambda v, _: f"{4 * v - 2:+.0f}"), label="pixel difference", shrink=0.8)
fig.suptitle(f"DDPM variants from the same noise (top) and their differences (bottom) [{profile.name} profile]", y=0.98);

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
# `helpers`, or runs the experiment you made a prediction for, and prints ✓, what is wrong, or
# "not done yet". The solutions are in `notebooks/solutions/04_ddpm_sampling.py`.
#
# **1. DDPM on a shorter grid.** The posterior above holds between any two levels of a Markov
# chain, not only neighbours. Visit only the timesteps of a grid $t_1 > t_2 > \dots$ (code indices,
# descending) and treat each jump $t \to t'$ as one step of a chain with $\alpha = \bar\alpha_t/\bar\alpha_{t'}$
# and $\beta = 1 - \alpha$ ("respacing", Nichol & Dhariwal 2021, section 4); after the grid's last
# timestep comes $x_0$, with $\bar\alpha = 1$. At each jump: the network's $\hat\varepsilon$, the guess
# $\hat x_0$ clipped to $[-1, 1]$, the posterior mean of the jump, and noise $\sigma z$ with $\sigma^2$ the
# jump's $\tilde\beta$, except on the last jump. Draw each $z$ as `torch.randn(x.shape, generator=generator)`
# right after that step's network call, so that the check can run `helpers` on the same noise;
# return $x_0$. On the full grid it must reproduce `DDPM()`. The check runs your sampler with a
# stand-in for the network that knows the answer (the exact $\mathbb E[\varepsilon \mid x_t]$ of
# 2-D toy data from `helpers.toy`), on the full grid and on a 10-step one.

# %%
def ddpm_respaced(model, d, x_T, timesteps, generator):
    """Ancestral sampling from x_T over `timesteps` (code indices, descending), then to x_0.

    model(x, t) -> eps_hat, with t a LongTensor [B]; d: the Diffusion (d.alpha_bars).
    """
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(ddpm_respaced)

# %% [markdown]
# **2. Predict, then run: how wide are the samples?** Take data $x_0 \sim \mathcal N(0, \kappa^2)$,
# one number per sample, with $\kappa = 0.5$, and in place of the network its exact
# $\mathbb E[\varepsilon \mid x_t]$, so that the model makes no error. The check draws 20,000 samples
# with the fixed-small ancestral sampler, without clipping, twice: over the full chain of
# $T = 1000$ steps, and over a 10-step grid with your exercise-1 jumps. For each run, predict
# whether the samples' standard deviation comes out narrower than $\kappa$ ($-1$), the same within
# 3% ($0$) or wider ($+1$). A hint: $\tilde\beta_t$ is the variance of $x_{t-1}$ when $x_0$ is *known*.
# The solution file explains the answer.

# %%
def predict_sample_spread():
    """(full chain, 10-step grid): -1 narrower than the data, 0 the same within 3%, +1 wider."""
    raise NotImplementedError  # your prediction here


# %%
check(predict_sample_spread)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
