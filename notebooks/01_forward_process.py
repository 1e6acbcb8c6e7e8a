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
# Gaussian step at a time. This notebook first shows the whole method at a glance: samples from
# the course's trained model, one figure of its three parts, and the same method trained end to
# end on a 2-D toy in seconds. Then it builds the first part, the forward process: the noise
# **schedule**, the closed-form jump $q(x_t \mid x_0)$ to any step, and the signal-to-noise ratio
# that later notebooks reason with. Symbols and the timestep convention are on the
# [notation](../docs/notation.md) page: $x_0$ is the data, $x_1, \dots, x_T$ are noised, and the
# code numbers those $T$ steps $0, \dots, T-1$ (code `t = 0` is $x_1$, already one step of noise).
#
# Every notebook starts the same way: the device (CUDA, then Apple MPS, then the CPU), the
# profile that sets the scale (`DIFFUSION_PROFILE`: smoke, laptop, gpu or full; without it `gpu` on
# CUDA and `laptop` elsewhere) and the seed.

# %%
import time

import matplotlib.pyplot as plt
import torch

from helpers.config import setup

notebook_start = time.perf_counter()
device, profile = setup(seed=0)

# %% [markdown]
# ## The whole method at a glance
#
# 1. **Forward noising** (fixed, nothing learned): $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$,
#    $\varepsilon \sim \mathcal N(0, I)$, where $\bar\alpha_t$ falls from near 1 at $t = 1$ to near 0
#    at $t = T$, so $x_T$ is almost pure noise. This notebook.
# 2. **Training**: a network $\varepsilon_\theta(x_t, t)$ learns to predict the noise $\varepsilon$
#    from $x_t$ and $t$, by minimising $\mathbb E\,\|\varepsilon_\theta(x_t, t) - \varepsilon\|^2$
#    over images, timesteps and noise (the network: notebook 02; the training: 03).
# 3. **Sampling**: start from $x_T \sim \mathcal N(0, I)$ and step back to $x_0$; each step turns
#    the prediction $\hat\varepsilon$ into an estimate $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$
#    and moves towards it (DDPM: 04; DDIM, the sampler used here: 05).
#
# First the result. The model is notebook 03's for this profile if 03 has run, else the shipped
# laptop model in `pretrained/`; DDIM draws 36 images in 50 network evaluations:

# %%
from helpers.checkpoints import load_model
from helpers.paths import portable_path, pretrained_dir
from helpers.samplers import DDIM, Trajectory, sample
from helpers.viz import show_grid

try:
    path = profile.require("eps")  # notebook 03's model of this profile (laptop: else the shipped one)
except FileNotFoundError:  # another profile before notebook 03 has run
    path = pretrained_dir() / "03_ddpm_eps.pt"
model, diffusion, _ = load_model(path, device)
shape = (36, model.in_channels, model.image_size, model.image_size)
trajectory = Trajectory(every=10)
start = time.perf_counter()
samples = sample(model, diffusion, shape, DDIM(50), generator=torch.Generator().manual_seed(0), callback=trajectory, progress=False)
print(f"{portable_path(path)}: {shape[0]} samples with DDIM-50 in {time.perf_counter() - start:.1f} s")
show_grid(samples, f"36 samples, DDIM-50\n{portable_path(path)}", nrow=6, ax=plt.subplots(figsize=(5, 5.4))[1]);

# %% [markdown]
# The three parts on one of these samples, taken as $x_0$. Top: the forward process noises it.
# Middle: one training example at $t = 0.3\,T$ — the noise $\varepsilon$ drawn, the $x_t$ it makes,
# the network's $\hat\varepsilon$, their difference (what the loss squares) and the $\hat x_0$ that
# $\hat\varepsilon$ implies. Bottom: the sampler's states on its way from noise to this sample.
# Images are titled with the maths index ($x_{300}$ is code `t = 299`; $T$ is this model's).

# %%
def panel(ax, image, title, limit=1.0):
    """One image [C, H, W] in grey, values from -limit (black) to +limit (white)."""
    ax.imshow(image[0].detach().cpu(), cmap="gray", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


x0_demo = samples[:1]
fig, axes = plt.subplots(3, 6, figsize=(11, 6.6))
panel(axes[0, 0], x0_demo[0], "$x_0$")
for ax, fraction in zip(axes[0, 1:], (0.1, 0.25, 0.5, 0.75, 1.0)):
    n = round(fraction * diffusion.T)  # the maths index: x_n is code t = n - 1
    panel(ax, diffusion.q_sample(x0_demo, n - 1, torch.randn_like(x0_demo))[0], f"$x_{{{n}}}$")

n = round(0.3 * diffusion.T)
t_demo = n - 1  # the code index of x_n
eps_demo = torch.randn(x0_demo.shape, generator=torch.Generator().manual_seed(1)).to(device)
x_t_demo = diffusion.q_sample(x0_demo, t_demo, eps_demo)
with torch.no_grad():
    eps_hat = model(x_t_demo, torch.full((1,), t_demo, device=device))
x0_hat = diffusion.predict_x0(x_t_demo, t_demo, eps_hat)
mse = ((eps_hat - eps_demo) ** 2).mean().item()
for ax, image, title, limit in zip(axes[1], (x0_demo, eps_demo, x_t_demo, eps_hat, eps_hat - eps_demo, x0_hat),
                                   ("$x_0$", r"$\varepsilon$ (drawn)", f"$x_{{{n}}}$", rf"$\hat\varepsilon = \varepsilon_\theta(x_{{{n}}}, t)$",
                                    rf"$\hat\varepsilon - \varepsilon$, mse {mse:.3f}", r"$\hat x_0$ from $\hat\varepsilon$"), (1, 3, 1, 3, 3, 1)):
    panel(ax, image[0], title, limit)

for ax, t, x_t in zip(axes[2], trajectory.t[:5], trajectory.x_t[:5, 0]):
    panel(ax, x_t, f"$x_{{{t + 1}}}$ (sampling)")
panel(axes[2, 5], samples[0], "$x_0$ (the sample)")
for row, label in enumerate(("forward:\nnoising", "training:\npredict $\\varepsilon$", "sampling:\ndenoising")):
    axes[row, 0].text(-0.35, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=11)
fig.suptitle(f"the three parts of a diffusion model (noise images from -3 to 3, the others from -1 to 1) [{profile.name} profile]");

# %% [markdown]
# ## The same method in two dimensions, trained in seconds
#
# Images hide what the model learns; points in the plane show it. The data is the toy of
# `helpers.toy`, six Gaussians (std 0.25) on a circle of radius 2. The network is a small MLP
# that reads $x_t$ and the sinusoidal embedding of $t$ (notebook 02 explains the embedding). The
# loss is the one of part 2, written out and checked once against `Diffusion.loss`:

# %%
from torch import nn

from helpers.diffusion import Diffusion
from helpers.toy import GaussianMixture
from helpers.unet import timestep_embedding
from helpers.viz import centred_mean


class ToyNet(nn.Module):
    """eps_theta(x_t, t) for points in the plane: an MLP on x_t and the embedding of t."""

    def __init__(self, width=128, emb_dim=32):
        super().__init__()
        self.emb_dim = emb_dim
        self.mlp = nn.Sequential(nn.Linear(2 + emb_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x_t, t):
        return self.mlp(torch.cat([x_t, timestep_embedding(t, self.emb_dim)], dim=1))


toy, toy_d = GaussianMixture.ring(), Diffusion.from_schedule("linear", 1000)
torch.manual_seed(0)
net = ToyNet()
optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
gen, steps, batch, losses = torch.Generator().manual_seed(0), 1500, 512, []
threads = torch.get_num_threads()
torch.set_num_threads(1)  # for matrices this small, a second thread mostly adds synchronisation
start = time.perf_counter()
for step in range(steps):
    x0 = toy.sample(batch, gen).float()
    t = torch.randint(0, toy_d.T, (batch,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    loss = ((net(toy_d.q_sample(x0, t, eps), t) - eps) ** 2).mean()  # E ||eps_theta(x_t, t) - eps||^2
    if step == 0:
        assert torch.allclose(loss, toy_d.loss(net, x0, t=t, noise=eps))
    optimizer.zero_grad()
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = 2e-3 * (1 - step / steps)  # decay to 0: the last steps average out the noise of the gradients
    optimizer.step()
    losses.append(loss.item())
torch.set_num_threads(threads)
print(f"{steps} steps at batch {batch} in {time.perf_counter() - start:.1f} s; loss {losses[0]:.3f} at the start, "
      f"{sum(losses[-100:]) / 100:.3f} over the last 100 steps")

# %% [markdown]
# Sampling runs the same DDIM as for the images (without clipping $\hat x_0$ to $[-1, 1]$, which
# is meant for pixels). The toy also knows its exact score, so the learned one can be checked:
# for $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ the best possible
# prediction is $\mathbb E[\varepsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log q(x_t)$
# (notebook 09 derives it), and the score $\nabla\log q$ of a Gaussian mixture has a closed form
# (`GaussianMixture.score`, in the units $x_t/\sqrt{\bar\alpha_t}$ with noise level
# $\sigma = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, see the [notation](../docs/notation.md) page).
# The arrows compare the network's score $-\hat\varepsilon/\sqrt{1-\bar\alpha_t}$ with the exact one.

# %%
def exact_eps(x_t, t):
    """E[eps | x_t] at code index t: -sqrt(1 - ab) grad log q(x_t) = -sigma grad log p_sigma(x_t / sqrt(ab))."""
    ab, sigma = toy_d.alpha_bars[t], toy_d.sigmas[t].item()
    return -sigma * toy.score(x_t.double() / ab.sqrt(), sigma)


toy_samples = sample(net, toy_d, (2000, 2), DDIM(50, clip_x0=False), generator=torch.Generator().manual_seed(1), progress=False, clamp=False)
real = toy.sample(2000, torch.Generator().manual_seed(2))
near = {name: torch.cdist(p.double(), toy.means).min(1) for name, p in (("real", real), ("samples", toy_samples))}
within = {name: (n.values < 3 * 0.25).double().mean().item() for name, n in near.items()}
share = torch.bincount(near["samples"].indices, minlength=6) / len(toy_samples)
print(f"within 3 std of a component's mean: real {within['real']:.1%}, samples {within['samples']:.1%}; "
      f"samples per component: {', '.join(f'{v:.0%}' for v in share)}")
assert within["samples"] > 0.8 and share.min() > 0.1 and share.max() < 0.25  # on the ring, every component found

errors = {}
for t in (49, 199, 499):
    x_t = toy_d.q_sample(toy.sample(2000, gen), t, torch.randn(2000, 2, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        eps_hat = net(x_t.float(), torch.full((2000,), t)).double()
    errors[t] = (((eps_hat - exact_eps(x_t, t)) ** 2).sum(1).mean() / (exact_eps(x_t, t) ** 2).sum(1).mean()).item()
print("relative squared error of the learned score against the exact one, over x_t ~ q(x_t): "
      + ", ".join(f"x_{t + 1}: {e:.3f}" for t, e in errors.items()))
assert errors[499] < 0.05 and errors[49] > errors[499]

fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
axes[0].plot(losses, alpha=0.3, label="per step")
axes[0].plot(centred_mean(losses, 50), label="centred mean of 101 steps")
axes[0].set(title="training loss", xlabel="optimiser step", ylabel=r"$\|\hat\varepsilon - \varepsilon\|^2$ (mean)", ylim=(0, 1.2))
axes[0].legend()
axes[1].scatter(*real.T, s=2, alpha=0.4, label="data")
axes[1].scatter(*toy_samples.T, s=2, alpha=0.4, label="DDIM-50 samples")
axes[1].set(title="data and samples", aspect="equal", xlim=(-3.2, 3.2), ylim=(-3.2, 4.2))
axes[1].legend(markerscale=5, loc="upper center", ncol=2, fontsize=7)
grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 15), torch.linspace(-3, 3, 15), indexing="xy"), -1).reshape(-1, 2)
for ax, t in zip(axes[2:], (49, 199)):
    factor = (1 - toy_d.alpha_bars[t]).sqrt().item()  # score = -eps / sqrt(1 - alpha_bar)
    with torch.no_grad():
        learned = -net(grid, torch.full((len(grid),), t)) / factor
    exact = -exact_eps(grid, t) / factor
    arrows = dict(angles="xy", scale_units="xy", scale=exact.norm(dim=1).max().item() / 0.8)  # one scale for both
    ax.quiver(*grid.T, *exact.T, color="C3", label="exact score", **arrows)
    ax.quiver(*grid.T, *learned.T.float(), color="C0", alpha=0.7, label="learned score", **arrows)
    ax.set(title=f"score at $x_{{{t + 1}}}$ ($\\sigma$ = {toy_d.sigmas[t]:.2f})", aspect="equal", xlabel="$x_t$, first coordinate")
    ax.legend(loc="upper right", fontsize=8)
fig.suptitle("a diffusion model on the 2-D toy: loss, samples, and its score against the exact one");

# %% [markdown]
# The printed fractions say how close the samples come to the data, and that every component of
# the ring gets a share of them (the cell asserts between a tenth and a quarter each). The learned score is closest to the exact one where noise
# dominates; near the data (small $t$) the exact field turns sharply between components and the
# small network matches it least well. Every piece of this page, on images, is a notebook:
# 02 the network, 03 the training, 04 and 05 the samplers, 06 the weight average and the quality
# measure (FID), 07 other prediction targets, 08 class guidance, 09 the score and faster solvers,
# 10 diffusion in an autoencoder's latent space, 11 one-step sampling. The rest of this notebook
# builds part 1.

# %% [markdown]
# ## A look at the data
#
# The profile names the dataset and the image size. Images are scaled to $[-1, 1]$ (the range the
# Gaussian noise lives in). The laptop profile keeps Fashion-MNIST at its own 28×28, which the
# U-Net halves twice (28 → 14 → 7, notebook 02); the smoke profile zero-pads it to 32×32 and
# shrinks it to 16×16 to stay fast on a CPU; the gpu and full profiles' CIFAR-10 is 32×32. The printed
# shape is this profile's:

# %%
from helpers.data import profile_dataset

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
# $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{i=1}^{t} \alpha_i$ (eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\quad \varepsilon\sim\mathcal N(0, I).$$
#
# Why the steps compose: if $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\bar\varepsilon$, then
#
# $$x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t
# = \sqrt{\bar\alpha_t}\,x_0 + \underbrace{\sqrt{\alpha_t(1-\bar\alpha_{t-1})}\,\bar\varepsilon + \sqrt{1-\alpha_t}\,\varepsilon_t}_{\text{variance } \alpha_t - \bar\alpha_t + 1 - \alpha_t\ =\ 1 - \bar\alpha_t},$$
#
# because the variances of independent Gaussian noises add; induction from $\bar\alpha_1 = \alpha_1$
# does the rest. So training never has to run the chain: it jumps straight to a random $t$. Here is DDPM's
# linear schedule ($\beta$ from $10^{-4}$ to $0.02$ over $T = 1000$ steps) in three lines, then
# the tested version. For other $T$ (the smoke profile trains with $T = 100$) the tested version
# scales both ends by $1000/T$, so that $\bar\alpha$ at the last step stays near zero, as DDPM's
# does (both printed below).

# %%
T = 1000
betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
alpha_bars = torch.cumprod(1 - betas, dim=0)  # code index i holds the maths step i + 1

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
# $$\bar\alpha(t) = \frac{f(t)}{f(0)},\qquad f(t) = \cos^2\!\Big(\frac{t/T + 0.008}{1.008}\cdot\frac{\pi}{2}\Big)$$
#
# (the small offset 0.008 keeps $\beta$ from being tiny near $t = 0$; Nichol & Dhariwal call it $s$),
#
# and the **sigmoid** schedule (Jabri et al. 2022; here in the form of Chen 2023, algorithm 1) sets
# it to a rescaled sigmoid, with $\sigma(z) = 1/(1+e^{-z})$ and $(a, b, \tau) = (-3, 3, 1)$,
#
# $$\bar\alpha(t) = \frac{\sigma(b/\tau) - \sigma\big((t/T\,(b-a) + a)/\tau\big)}{\sigma(b/\tau) - \sigma(a/\tau)}.$$
#
# Both are continuous in $t/T \in [0, 1]$ with $\bar\alpha(0) = 1$. The steps are
# $\beta_t = 1 - \bar\alpha(t)/\bar\alpha(t-1)$ for $t = 1, \dots, T$, capped at 0.999 so that the
# last step does not divide by zero (Nichol & Dhariwal 2021, sec. 3.2); the table's
# $\bar\alpha_t = \prod_{i \le t}(1-\beta_i)$ is then the continuous $\bar\alpha(t)$ (up to that cap).
# The functions below return the $T+1$ values $\bar\alpha(0), \dots, \bar\alpha(T)$; the table has
# $T$, at code indices $0, \dots, T-1$.
# By hand, checked against `helpers.schedules`:

# %%
import math


def cosine_alpha_bar(T, offset=0.008):
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + offset) / (1 + offset) * math.pi / 2) ** 2
    return f / f[0]


def sigmoid_alpha_bar(T, a=-3.0, b=3.0, tau=1.0):
    sig = lambda z: torch.sigmoid(torch.as_tensor(z, dtype=torch.float64) / tau)  # noqa: E731
    return (sig(b) - sig(torch.arange(T + 1, dtype=torch.float64) / T * (b - a) + a)) / (sig(b) - sig(a))


for name, alpha_bar in (("cosine", cosine_alpha_bar(T)), ("sigmoid", sigmoid_alpha_bar(T))):
    betas_by_hand = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    assert torch.allclose(betas_by_hand, Diffusion.from_schedule(name, T).betas), name

# %% [markdown]
# The clearest way to compare the three schedules is the signal-to-noise ratio
# $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$ on a log scale. The axes, the table and the
# slider below count timesteps by the code index ($t = 0$ is $x_1$).

# %%
schedules = {name: Diffusion.from_schedule(name, T) for name in ("linear", "cosine", "sigmoid")}

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, d in schedules.items():
    ax.plot(d.alpha_bars, label=name)
ax.set(title=r"$\bar\alpha_t$: how much signal is left", xlabel="timestep t (code index)", ylabel=r"$\bar\alpha_t$")
ax.legend();

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, d in schedules.items():
    ax.plot(d.snr.log(), label=name)
ax.set(title="log-SNR against t", xlabel="timestep t (code index)", ylabel=r"$\log \mathrm{SNR}(t) = \log \bar\alpha_t - \log(1-\bar\alpha_t)$")
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
    print(f"{name:<8} alpha_bar at code t = 500: {ab[500].item():.3f}; falls by {drops[name][0]:.3f} over t = 250..500 "
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
# slider is the code index (its 0 is $x_1$); the dot marks $\bar\alpha$ on its curve. (The slider needs a live kernel: in JupyterLab, run the
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
fig, axes = plt.subplots(1, len(steps), figsize=(14, 2.8))
for ax, step in zip(axes, steps):
    x_t, ab = view.frame(step)
    show_grid(x_t[:4], f"$x_{{{step + 1}}}$ (code t = {step})\n" + r"$\bar\alpha$" + f" = {ab:.3f}", nrow=2, ax=ax)
    ax.title.set_fontsize(9)
fig.suptitle(f"q(x_t | x_0) under the linear schedule, T = {T} [{profile.name} profile data]", y=1.12);

# %% [markdown]
# ## Step by step equals the jump
#
# The closed form claims that running $t$ single steps from $x_0$ gives the same distribution as
# one jump. Check it on 20,000 noisy copies of one pixel value, $x_0 = 0.5$, after 100 steps
# ($x_{100}$, code index 99): compare the mean and standard deviation of both with the formula.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
n, steps_taken = 20_000, 100
start = torch.full((n, 1), 0.5, dtype=torch.float64)
chain = start.clone()
for i in range(steps_taken):  # code index i takes x_i to x_{i+1}
    chain = linear.q_step(chain, torch.full((n,), i), torch.randn(chain.shape, generator=gen, dtype=torch.float64))
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
# **1. From one noisy step to a later one.** The notebook jumps from the data $x_0$ to any
# $x_t$. Write the jump from a noisy $x_a$ to a later $x_b$: a sample of $q(x_b \mid x_a)$, the
# steps $a+1, \dots, b$ of the chain composed, given the noise $\varepsilon$ of that jump. (Hint:
# run the composition argument above from $x_a$ instead of $x_0$.) Timesteps are code indices,
# `0 <= t_from < t_to <= T - 1`.

# %%
def jump_forward(x_from, t_from, t_to, alpha_bars, eps):
    """x at code index t_to from x at code index t_from < t_to, a sample of q(x_to | x_from).

    alpha_bars: the float64 table [T]; eps: standard normal noise shaped like x_from.
    """
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(jump_forward)

# %% [markdown]
# **2. Where signal and noise are equal.** Return the first timestep (code index) at which
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
