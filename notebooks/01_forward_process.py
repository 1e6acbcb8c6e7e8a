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
# # 01 · The forward process
#
# A diffusion model learns to undo a fixed process that turns images into noise, one small
# Gaussian step at a time. This notebook builds that process: the noise **schedule**, the
# closed-form jump $q(x_t \mid x_0)$ to any step, and the signal-to-noise ratio that later
# notebooks reason with. Nothing here is learned yet, and nothing from another notebook is needed:
# only the dataset.
#
# Every notebook starts the same way: the device (CUDA, then Apple MPS, then the CPU), the
# profile that sets the scale (`DIFFUSION_PROFILE`: smoke, laptop or full) and the seed.

# %%
import time

import matplotlib.pyplot as plt
import torch

from helpers.config import setup

notebook_start = time.perf_counter()
device, profile = setup(seed=0)

# %% [markdown]
# ## A look at the data
#
# The profile names the dataset and the image size. Images are scaled to $[-1, 1]$ (the range the
# Gaussian noise lives in). The laptop profile keeps Fashion-MNIST at its own 28×28, which the
# U-Net halves twice (28 → 14 → 7, notebook 02); the smoke profile zero-pads it to 32×32 and
# shrinks it to 16×16 to stay fast on a CPU; the full profile's CIFAR-10 is 32×32. The printed
# shape is this profile's:

# %%
from helpers.data import profile_dataset
from helpers.viz import show_grid

data = profile_dataset(profile)
x, labels = data.tensors()
print(f"{profile.dataset}: {len(data)} training images of shape {tuple(x.shape[1:])}, "
      f"values in [{x.min():.0f}, {x.max():.0f}]")
assert x.shape[-1] == profile.image_size and -1 <= x.min() and x.max() <= 1
show_grid(x[:32], f"{profile.dataset}, first 32 images [{profile.name} profile]", nrow=8);

# %% [markdown]
# ## One step, and the jump to any step
#
# The forward process adds a little Gaussian noise at each of $T$ steps, with a variance
# $\beta_t$ from a schedule (DDPM, Ho et al. 2020, eq. 2):
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big).$$
#
# Shrinking by $\sqrt{1-\beta_t}$ keeps the variance at 1 when the data has variance 1. Because a
# Gaussian step after a Gaussian step is Gaussian, the steps compose. With
# $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\quad \varepsilon\sim\mathcal N(0, I).$$
#
# Why the steps compose: if $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\bar\varepsilon$, then
#
# $$x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t
# = \sqrt{\bar\alpha_t}\,x_0 + \underbrace{\sqrt{\alpha_t(1-\bar\alpha_{t-1})}\,\bar\varepsilon + \sqrt{1-\alpha_t}\,\varepsilon_t}_{\text{variance } \alpha_t - \bar\alpha_t + 1 - \alpha_t\ =\ 1 - \bar\alpha_t},$$
#
# because the variances of independent Gaussian noises add; induction from $\bar\alpha_0 = \alpha_0$
# does the rest. So training never has to run the chain: it jumps straight to a random $t$. Here is DDPM's
# linear schedule ($\beta$ from $10^{-4}$ to $0.02$ over $T = 1000$ steps) in three lines, then
# the tested version. For other $T$ (the smoke profile trains with $T = 100$) the tested version
# scales both ends by $1000/T$, so that $\bar\alpha$ at the last step stays near zero, as DDPM's
# does (both printed below).

# %%
T = 1000
betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
alpha_bars = torch.cumprod(1 - betas, dim=0)

from helpers.diffusion import Diffusion

linear = Diffusion.from_schedule("linear", T)
assert torch.allclose(linear.alpha_bars, alpha_bars)
last_100 = Diffusion.from_schedule("linear", 100).alpha_bars[-1].item()
assert last_100 < 1e-3 and alpha_bars[-1] < 1e-3
print(f"alpha_bar at the last step: T = 1000: {alpha_bars[-1].item():.1e}; T = 100 (ends scaled by 10): {last_100:.1e}")

# %% [markdown]
# The tables are float64, computed once on the CPU; every use hands the device float32 (Apple's
# MPS has no float64). The forward jump by hand and through `Diffusion.q_sample` agree:

# %%
x0 = x[:8]
t = torch.full((8,), 300)
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
by_hand = alpha_bars[300].sqrt().float() * x0 + (1 - alpha_bars[300]).sqrt().float() * eps
assert torch.allclose(linear.q_sample(x0, t, eps), by_hand, atol=1e-6)

# %% [markdown]
# ## Three schedules
#
# A schedule decides how fast the signal fades. Besides DDPM's **linear** $\beta_t$, the
# **cosine** schedule (Nichol & Dhariwal 2021, eq. 17) sets $\bar\alpha$ directly,
#
# $$\bar\alpha(t) = \frac{f(t)}{f(0)},\qquad f(t) = \cos^2\!\Big(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\Big),\ s = 0.008,$$
#
# and the **sigmoid** schedule (Jabri et al. 2022; here in the form of Chen 2023, algorithm 1) sets
# it to a rescaled sigmoid, with $\sigma(z) = 1/(1+e^{-z})$ and $(a, b, \tau) = (-3, 3, 1)$,
#
# $$\bar\alpha(t) = \frac{\sigma(b/\tau) - \sigma\big((t/T\,(b-a) + a)/\tau\big)}{\sigma(b/\tau) - \sigma(a/\tau)}.$$
#
# Both are continuous in $t/T \in [0, 1]$; the discrete $\beta_t = 1 - \bar\alpha(t+1)/\bar\alpha(t)$ is
# capped at 0.999 so that the last step does not divide by zero (Nichol & Dhariwal 2021, sec. 3.2),
# and the table's $\bar\alpha_t = \prod_{s \le t}(1-\beta_s)$ is then the continuous $\bar\alpha(t+1)$
# (the functions below return $T+1$ values, the table has $T$).
# By hand, checked against `helpers.schedules`:

# %%
import math


def cosine_alpha_bar(T, s=0.008):
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def sigmoid_alpha_bar(T, a=-3.0, b=3.0, tau=1.0):
    sig = lambda z: torch.sigmoid(torch.as_tensor(z, dtype=torch.float64) / tau)  # noqa: E731
    return (sig(b) - sig(torch.arange(T + 1, dtype=torch.float64) / T * (b - a) + a)) / (sig(b) - sig(a))


for name, alpha_bar in (("cosine", cosine_alpha_bar(T)), ("sigmoid", sigmoid_alpha_bar(T))):
    betas_by_hand = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    assert torch.allclose(betas_by_hand, Diffusion.from_schedule(name, T).betas), name

# %% [markdown]
# The clearest way to compare the three schedules is the signal-to-noise ratio
# $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$ on a log scale.

# %%
schedules = {name: Diffusion.from_schedule(name, T) for name in ("linear", "cosine", "sigmoid")}

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, d in schedules.items():
    ax.plot(d.alpha_bars, label=name)
ax.set(title=r"$\bar\alpha_t$: how much signal is left", xlabel="timestep t", ylabel=r"$\bar\alpha_t$")
ax.legend();

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, d in schedules.items():
    ax.plot(d.snr.log(), label=name)
ax.set(title="log-SNR against t", xlabel="timestep t", ylabel=r"$\log \mathrm{SNR}(t) = \log \bar\alpha_t - \log(1-\bar\alpha_t)$")
ax.legend();

# %% [markdown]
# The values behind the curves:

# %%
# NBVAL_CHECK_OUTPUT
print("t      " + "".join(f"{name:>10}" for name in schedules))
for step in (0, 250, 500, 750, 999):
    print(f"{step:<7}" + "".join(f"{d.alpha_bars[step].item():10.5f}" for d in schedules.values()))

# %%
# what the sentences below read off the table and the curves (T = 1000 whatever the profile)
drops, near_noise = {}, {}
for name, d in schedules.items():
    ab = d.alpha_bars
    drops[name] = (ab[250] - ab[500]).item(), (ab[500] - ab[750]).item()
    near_noise[name] = int((ab < 0.01).sum())  # steps whose x_t keeps under 1% of the signal's variance
    print(f"{name:<8} alpha_bar at t = 500: {ab[500].item():.3f}; falls by {drops[name][0]:.3f} over t = 250..500 "
          f"and {drops[name][1]:.3f} over 500..750; below 0.01 for the last {near_noise[name]} steps")
gap = (schedules["cosine"].alpha_bars - schedules["sigmoid"].alpha_bars).abs().max().item()
print(f"largest |cosine - sigmoid| in alpha_bar: {gap:.3f}")
assert schedules["linear"].alpha_bars[500] < 0.1 and near_noise["linear"] > max(200, 4 * near_noise["cosine"])
assert abs(drops["cosine"][0] - drops["cosine"][1]) < 0.05 * drops["cosine"][0] and drops["linear"][0] > 4 * drops["linear"][1]
assert gap < 0.02
more_signal = int((schedules["cosine"].alpha_bars > schedules["linear"].alpha_bars).sum())
print(f"cosine keeps more signal than linear at {more_signal} of {T} steps")
assert more_signal > 0.99 * T

# %% [markdown]
# The linear schedule destroys the signal early: by the middle of the chain less than a tenth of
# the signal's variance is left, and the last few hundred steps are spent on near-pure noise.
# The cosine schedule keeps more signal at all but the last few $t$ and lets $\bar\alpha$ fall by equal amounts
# over the two quarters of the middle (nearly a straight line there, its design), spending its
# steps more evenly; the sigmoid schedule stays within a few hundredths of it.
# %% [markdown]
# ## Scrub through $t$
#
# Move the slider: the same images and the same noise $\varepsilon$, mixed as
# $\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ under the linear schedule. The
# dot marks $\bar\alpha_t$ on its curve. (The slider needs a live kernel: in JupyterLab, run the
# notebook.)

# %% tags=["nbval-ignore-output"]
from ipywidgets import IntSlider

from helpers.viz import ForwardProcessView, slider_widget

view = ForwardProcessView(linear, x[:8], torch.randn(x[:8].shape, generator=torch.Generator().manual_seed(1)))
slider_widget(view.render, IntSlider(value=0, min=0, max=T - 1, step=1, description="t", continuous_update=True))

# %% [markdown]
# The same trajectory at a few fixed steps, for reading without a kernel:

# %%
steps = [0, 50, 100, 250, 500, 999]
fig, axes = plt.subplots(1, len(steps), figsize=(12, 2.4))
for ax, step in zip(axes, steps):
    x_t, ab = view.frame(step)
    show_grid(x_t[:4], f"t = {step}\n" + r"$\bar\alpha_t$" + f" = {ab:.3f}", nrow=2, ax=ax)
fig.suptitle(f"q(x_t | x_0) under the linear schedule, T = {T} [{profile.name} profile data]", y=1.12);

# %% [markdown]
# ## Step by step equals the jump
#
# The closed form claims that running $t$ single steps from $x_0$ gives the same distribution as
# one jump. Check it on 20,000 noisy copies of one pixel value, $x_0 = 0.5$, after $t = 100$
# steps: compare the mean and standard deviation of both with the formula.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
n, steps_taken = 20_000, 100
start = torch.full((n, 1), 0.5, dtype=torch.float64)
chain = start.clone()
for s in range(steps_taken):
    chain = linear.q_step(chain, torch.full((n,), s), torch.randn(chain.shape, generator=gen, dtype=torch.float64))
jump = linear.q_sample(start, torch.full((n,), steps_taken - 1), torch.randn(start.shape, generator=gen, dtype=torch.float64))

ab = linear.alpha_bars[steps_taken - 1].item()
print(f"formula:        mean {ab ** 0.5 * 0.5:.3f}, std {(1 - ab) ** 0.5:.3f}")
print(f"100 steps:      mean {chain.mean():.3f}, std {chain.std():.3f}")
print(f"one jump:       mean {jump.mean():.3f}, std {jump.std():.3f}")
se = ((1 - ab) / n) ** 0.5  # standard error of a mean of n draws
print("agree within 5 standard errors:", abs(chain.mean() - jump.mean()).item() < 5 * 2**0.5 * se)

# %%
std_se = ((1 - ab) / (2 * n)) ** 0.5  # standard error of the standard deviation of n Gaussian draws
for name, v in (("100 steps", chain), ("one jump", jump)):
    assert abs(v.mean().item() - ab**0.5 * 0.5) < 5 * se and abs(v.std().item() - (1 - ab) ** 0.5) < 5 * std_se, name
print("both match the formula's mean and standard deviation within 5 standard errors")

# %% [markdown]
# ## What this notebook leaves
#
# Nothing on disk: the schedule is three lines of arithmetic that every later notebook rebuilds
# from its name. Next, **02 · U-Net** builds the network that will learn to predict the noise
# $\varepsilon$ from $x_t$ and $t$.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/01_forward_process.py`.
#
# **1. One step forward.** Write one step of the chain, $q(x_t \mid x_{t-1})$ (eq. 2), given
# $x_{t-1}$, $\beta_t$ and the noise $\varepsilon$.

# %%
def forward_step(x_prev, beta, eps):
    """x_t from x_{t-1}: a tensor, beta_t: a float, eps: noise shaped like x_prev."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(forward_step)

# %% [markdown]
# **2. Where signal and noise are equal.** Return the first timestep at which
# $\mathrm{SNR}(t) \le 1$, given a schedule's $\bar\alpha$ table. The check tries all three schedules;
# compare your answers with the log-SNR plot above.

# %%
def snr_crossing(alpha_bars):
    """The first t with alpha_bar_t / (1 - alpha_bar_t) <= 1; alpha_bars: float64 [T]."""
    raise NotImplementedError  # your code here


# %%
check(snr_crossing)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
