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
# # 09 · Scores, SDEs and fast solvers
#
# DDPM and DDIM step along the timesteps the model was trained on. The samplers people use
# today (Heun, DPM-Solver++, Euler-ancestral in k-diffusion and diffusers) work in another set
# of coordinates: the noise level $\sigma$ of Karras et al. (2022). This notebook shows why a model
# trained with the plain $\varepsilon$ loss of notebook 03 fits them: its output is a **score**,
# the sampling process is a stochastic or ordinary differential equation in that score (Song et
# al. 2021, score SDE), and any good ODE solver can integrate it. It derives each of these steps
# (Tweedie's formula, DDPM's chain as a discretised SDE, the exponential-integrator step behind
# DPM-Solver++) and checks each numerically, writes the solvers by hand (all but Heun, which is
# the first exercise), checks them against `helpers.solvers`, and measures quality against the
# number of network evaluations. Symbols follow the [notation](../docs/notation.md) page: $\sigma$
# is the VE noise level and $\lambda = -\log\sigma$.
#
# It needs `03_ddpm_eps.pt` from notebook 03 (under `laptop`, the shipped model in `pretrained/`
# when 03 has not been run).

# %%
import json
import math
import time

import matplotlib.pyplot as plt
import torch

from helpers.device import sync
from helpers.checkpoints import load_model
from helpers.config import setup
from helpers.device import cpu_generator
from helpers.toy import GaussianMixture
from helpers.viz import show_grid

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
model, d, ckpt = load_model(profile.require("eps"), device)
model.eval()
print(f"model after {ckpt['step']} training steps; {d}")

# %% [markdown]
# ## The score, and Tweedie's formula
#
# The **score** of a density is $\nabla_x \log p(x)$: the direction in which the density rises
# fastest. Noise the data as $x = x_0 + \sigma\varepsilon$ and call the noisy density $p_\sigma$.
# **Tweedie's formula** (Efron 2011) says that the best guess of the clean image, the posterior mean,
# is one step up the score. It takes three lines:
#
# 1. The noisy density is the data density convolved with the noise's Gaussian:
#    $p_\sigma(x) = \int p_0(x_0)\,\mathcal N(x; x_0, \sigma^2 I)\,\mathrm dx_0$.
# 2. Differentiate under the integral, with $\nabla_x\mathcal N(x; x_0, \sigma^2 I) = \mathcal N(x; x_0, \sigma^2 I)\,(x_0 - x)/\sigma^2$,
#    and divide by $p_\sigma(x)$. What then multiplies $(x_0 - x)/\sigma^2$ is
#    $p_0(x_0)\,\mathcal N(x; x_0, \sigma^2 I)/p_\sigma(x) = p(x_0 \mid x)$, the posterior (Bayes' rule), so
#    $\nabla_x\log p_\sigma(x) = \int p(x_0 \mid x)\,\frac{x_0 - x}{\sigma^2}\,\mathrm dx_0 = \frac{\mathbb E[x_0 \mid x] - x}{\sigma^2}$.
# 3. Rearrange:
#
# $$\mathbb E[x_0 \mid x] = x + \sigma^2\,\nabla_x \log p_\sigma(x).$$
#
# For DDPM's $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ the same three lines, with
# $\sqrt{\bar\alpha_t}x_0$ in place of $x_0$ and $1-\bar\alpha_t$ in place of $\sigma^2$, give
# $\mathbb E[\sqrt{\bar\alpha_t}x_0 \mid x_t] = x_t + (1-\bar\alpha_t)\nabla_{x_t}\log q(x_t)$; with
# $\varepsilon = (x_t - \sqrt{\bar\alpha_t}x_0)/\sqrt{1-\bar\alpha_t}$ that is
# $\nabla_{x_t}\log q(x_t) = -\mathbb E[\varepsilon \mid x_t]/\sqrt{1-\bar\alpha_t}$. The network trained on the
# $\varepsilon$ loss estimates exactly that expectation (a mean squared error is smallest at the
# conditional mean), so
#
# $$s_\theta(x_t, t) = -\frac{\varepsilon_\theta(x_t, t)}{\sqrt{1-\bar\alpha_t}} .$$
#
# In two dimensions the score can be drawn. Take a mixture of six Gaussians on a ring,
# $x_0 \sim \frac16\sum_k \mathcal N(\mu_k, \kappa^2 I)$. Noised, each component stays Gaussian with
# variance $\kappa^2+\sigma^2$, so the score is the responsibility-weighted pull towards each mean:
# $\nabla\log p_\sigma(x) = \sum_k r_k(x)\,(\mu_k - x)/(\kappa^2+\sigma^2)$. By hand, against
# `helpers.toy.GaussianMixture`:

# %%
toy = GaussianMixture.ring(k=6, radius=2.0, std=0.25)


def mixture_score(x, sigma):
    var = toy.stds**2 + sigma**2  # each component's variance after noising
    log_w = toy.weights.log() - ((x[:, None] - toy.means) ** 2).sum(-1) / (2 * var) - var.log()  # log pi_k N(x; mu_k, var_k I) + const (2-D), pi_k = toy.weights
    r = log_w.softmax(dim=1)  # responsibilities r_k(x)
    return (r[..., None] * (toy.means - x[:, None]) / var[:, None]).sum(1)


probe = 2 * torch.randn(500, 2, generator=cpu_generator(0), dtype=torch.float64)
for sigma in (0.1, 0.5, 2.0):
    assert torch.allclose(mixture_score(probe, sigma), toy.score(probe, sigma))
    assert torch.allclose(toy(probe, sigma), probe + sigma**2 * toy.score(probe, sigma))  # Tweedie
print("score by hand == GaussianMixture.score; its denoiser == x + sigma^2 score (Tweedie)")

# %% [markdown]
# That check trusts the toy's two closed forms. Tweedie's formula can also be checked from the
# definitions alone. The left side, $\mathbb E[x_0 \mid x]$, is an average over draws $x_0^{(i)}$ of
# the data weighted by the posterior of step 2, $\propto \mathcal N(x; x_0^{(i)}, \sigma^2 I)$ (Monte
# Carlo). The right side needs only $\log p_\sigma$, the convolution of step 1 (`toy.log_prob`),
# differentiated by autograd:

# %%
draws = toy.sample(200_000, cpu_generator(10))  # x_0^(i), i = 1..200,000, from the mixture
points = torch.tensor([[1.5, 0.5], [-0.5, 1.0], [0.2, -2.5], [3.0, 0.0]], dtype=torch.float64)
for sigma in (0.3, 1.0, 3.0):
    posterior = (-((points[:, None] - draws) ** 2).sum(-1) / (2 * sigma**2)).softmax(dim=1)  # p(x_0^(i) | x) for each point x
    monte_carlo = posterior @ draws  # E[x_0 | x] from its definition
    x = points.clone().requires_grad_()
    (score,) = torch.autograd.grad(toy.log_prob(x, sigma).sum(), x)  # grad_x log p_sigma(x)
    gap = float((monte_carlo - (points + sigma**2 * score)).abs().max())
    print(f"sigma = {sigma}: Monte Carlo E[x_0 | x] and x + sigma^2 score differ by at most {gap:.4f}")
    assert gap < 0.03, "Tweedie's formula should hold up to the Monte Carlo error"

# %% [markdown]
# The score field at three noise levels, over the noisy density. Arrows show
# $\sigma\,\nabla\log p_\sigma = -\mathbb E[\varepsilon \mid x]$, which has the scale of one noise
# sample at every $\sigma$: at small $\sigma$ the field points into the nearest component, at large
# $\sigma$ everything points towards the middle of the ring.

# %%
lim = 4.0
ticks = torch.linspace(-lim, lim, 121, dtype=torch.float64)
dense = torch.cartesian_prod(ticks, ticks).flip(1)  # (x_1, x_2) pairs, x_1 varying fastest
coarse = torch.cartesian_prod(*[torch.linspace(-lim, lim, 13, dtype=torch.float64)] * 2)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), constrained_layout=True)
for ax, sigma in zip(axes, (0.1, 0.6, 2.0)):
    ax.contourf(ticks, ticks, toy.log_prob(dense, sigma).exp().reshape(121, 121), levels=8, cmap="Blues")
    arrows = sigma * toy.score(coarse, sigma)
    ax.quiver(coarse[:, 0], coarse[:, 1], arrows[:, 0], arrows[:, 1], color="tab:red", angles="xy", scale_units="xy", scale=3, width=0.004)
    ax.set(title=f"sigma = {sigma}", xlabel="x_1", ylabel="x_2", aspect="equal")
fig.suptitle(f"noisy density p_sigma (blue) and sigma * score (red arrows, a third of their length) of the ring mixture [{profile.name} profile]");

# %% [markdown]
# ## From the score to a sampler: SDEs and the probability-flow ODE
#
# Song et al. (2021, score SDE) write a noising process as a stochastic differential equation
# $\mathrm dx = f(x, t)\,\mathrm dt + g(t)\,\mathrm dW$ on a clock $t \in [0, 1]$, where $W$ is Brownian
# motion: over a short time $\Delta t$ its increment is $\sqrt{\Delta t}\,\varepsilon$, $\varepsilon \sim \mathcal N(0, I)$.
# DDPM's chain is such an equation, discretised. Put its $T$ steps on the clock, $\Delta t = 1/T$,
# step $t$ at a time $u \approx t/T$, and write each $\beta_t$ as a rate times the time step,
# $\beta_t = \beta(u)\,\Delta t$. The course's linear schedule is the rate $\beta(u) = 0.1 + 19.9\,u$ taken
# at $T$ evenly spaced times from 0 to 1, at every $T$ (at $T = 1000$ these are DDPM's $10^{-4}$ to
# 0.02). With $\sqrt{1-b} = 1 - \tfrac b2 + O(b^2)$, one step of the chain is
#
# $$x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon
#   = x_{t-1} - \tfrac12\beta(u)\,x_{t-1}\,\Delta t + \sqrt{\beta(u)}\,\sqrt{\Delta t}\,\varepsilon + O(\Delta t^2),$$
#
# one Euler–Maruyama step (the Euler step of an SDE) of the **variance-preserving** (VP) SDE
# $\mathrm dx = -\tfrac12\beta(t)\,x\,\mathrm dt + \sqrt{\beta(t)}\,\mathrm dW$ (their eq. 11); as $T$ grows the
# chain becomes it. Both leave $x$ Gaussian given $x_0$. The SDE's mean $m$ obeys
# $\mathrm dm/\mathrm dt = -\tfrac12\beta m$ and its variance $v$ obeys $\mathrm dv/\mathrm dt = -\beta v + \beta$, so
# at time $u$ they are $e^{-\frac12\int_0^u\beta}x_0$ and $1 - e^{-\int_0^u\beta}$; the chain's are
# $\sqrt{\bar\alpha_t}\,x_0$ and $1-\bar\alpha_t$. They agree to first order in $1/T$:
# $\log\bar\alpha_t = \sum_{i\le t}\log(1-\beta_i) = -\sum_{i\le t}\beta_i + O(1/T) = -\int_0^{t/T}\beta(u)\,\mathrm du + O(1/T)$.
# The cell checks one step against `Diffusion.q_step` and the whole chain as $T$ grows:

# %%
from helpers.diffusion import Diffusion

chain = Diffusion.from_schedule("linear", 1000)
x_prev = torch.randn(1000, 2, generator=cpu_generator(11), dtype=torch.float64)
eps = torch.randn(1000, 2, generator=cpu_generator(12), dtype=torch.float64)
for t in (100, 500, 999):  # code indices
    beta = float(chain.betas[t])
    euler_maruyama = x_prev - 0.5 * beta * x_prev + beta**0.5 * eps
    chain_step = chain.q_step(x_prev, torch.full((len(x_prev),), t), eps)
    assert torch.allclose(chain_step - euler_maruyama, -(beta**2) / 8 * x_prev, rtol=0.02, atol=0)  # sqrt(1 - b) - (1 - b/2) = -b^2/8 + O(b^3)
print("one step of the chain (q_step) = one Euler-Maruyama step of the VP SDE - beta_t^2 x / 8, to within 2% of that term")
scaled_gaps = []
for T in (100, 1000, 10_000):
    chain = Diffusion.from_schedule("linear", T)
    assert torch.allclose(chain.betas * T, torch.linspace(0.1, 20.0, T, dtype=torch.float64))  # beta_t = beta(u) / T, beta(u) from 0.1 to 20
    u = torch.arange(1, T + 1, dtype=torch.float64) / T  # the time after each step
    integral = 0.1 * u + (20.0 - 0.1) * u**2 / 2  # int_0^u beta
    gap = float((chain.alpha_bars.log() + integral).abs().max())
    scaled_gaps.append(gap * T)
    print(f"T = {T:>6}: log alpha_bar and -int beta differ by at most {gap:.5f} ({gap * T:.1f} / T)")
assert max(scaled_gaps) < 1.25 * min(scaled_gaps), "the gap should shrink like 1 / T"

# %% [markdown]
# The gap shrinks like $1/T$: the chain is a first-order discretisation of the VP SDE. Adding
# noise without shrinking the signal, $\mathrm dx = \sqrt{\mathrm d[\sigma^2]/\mathrm dt}\;\mathrm dW$, is the
# **variance-exploding** (VE) SDE (eq. 9). Every such SDE has
#
# * a **reverse-time SDE** (Anderson 1982; Song et al. 2021, score SDE, eq. 6),
#   $\mathrm dx = [f - g^2\,\nabla_x\log p_t(x)]\,\mathrm dt + g\,\mathrm d\bar W$, which runs
#   from noise to data, and
# * a **probability-flow ODE** (eq. 13), $\mathrm dx = [f - \tfrac12 g^2\,\nabla_x\log p_t(x)]\,\mathrm dt$,
#   with no noise at all, whose solutions have the same marginals $p_t$ at every $t$.
#
# The two views are one. Divide DDPM's $x_t$ by $\sqrt{\bar\alpha_t}$: $x = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma(t)\varepsilon$
# with $\sigma(t) = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, a VE process. There the probability-flow
# ODE with $\sigma$ as its clock is, with Tweedie's formula,
#
# $$\frac{\mathrm dx}{\mathrm d\sigma} = -\sigma\,\nabla_x\log p_\sigma(x) = \frac{x - D(x;\sigma)}{\sigma},
# \qquad D(x;\sigma) = \mathbb E[x_0 \mid x],$$
#
# (Karras et al. 2022, their eq. 1 with the score written through $D$ by their eq. 3; eq. 4 with
# $s(t) = 1$ and $\sigma(t) = t$). All we need is a **denoiser**
# $D(x;\sigma)$. The DDPM network becomes one in four lines: scale $x$ back to the $x_t$ it was
# trained on, $x_t = x/\sqrt{1+\sigma^2}$; find the timestep whose $\sigma(t)$ is nearest to
# $\sigma$ (in $\log\sigma$); read $\hat\varepsilon$; return $x - \sigma\hat\varepsilon$:

# %%
from helpers.solvers import Denoiser, karras_sigmas

sigma_table = ((1 - d.alpha_bars) / d.alpha_bars).sqrt()  # sigma(t) for t = 0..T-1, float64


def denoise_by_hand(x, sigma):
    t = int((sigma_table.log() - math.log(sigma)).abs().argmin())  # nearest trained timestep in log sigma
    eps = model(x / (1 + sigma**2) ** 0.5, torch.full((len(x),), t, device=device))
    return x - sigma * eps


denoiser = Denoiser(model, d)
x_probe = 3 * torch.randn(4, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(1)).to(device)
with torch.no_grad():
    for sigma in (0.05, 1.0, 7.3, denoiser.sigma_max):
        assert torch.allclose(denoise_by_hand(x_probe, sigma), denoiser(x_probe, sigma), atol=1e-5)
print(f"denoiser by hand == helpers.solvers.Denoiser; the model spans sigma {denoiser.sigma_min:.4f} .. {denoiser.sigma_max:.1f}")

# %% [markdown]
# The same picture on the trained image model: a test image noised to several $t$ with one fixed
# noise $\varepsilon$, the network's error $\hat\varepsilon - \varepsilon$ with $\hat\varepsilon = -\sqrt{1-\bar\alpha_t}\,s_\theta$
# ($\hat\varepsilon$ itself would look like that same $\varepsilon$ in every column), and Tweedie's
# estimate of $x_0$. The last row is what `Diffusion.predict_x0` returns, computed here from the score.

# %%
from helpers.data import profile_dataset

image = profile_dataset(profile, train=False).tensors()[0][:1].to(device)
fracs = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8)
rows = {"x_t": [], "the network's error eps_hat - eps, eps_hat = -sqrt(1 - alpha_bar) score": [], "Tweedie: (x_t + (1 - alpha_bar) score) / sqrt(alpha_bar)": []}
noise = torch.randn(image.shape, generator=cpu_generator(2)).to(device)  # one noise for every t
errors = []
with torch.no_grad():
    for frac in fracs:
        t = int(frac * (d.T - 1))
        tt = torch.full((1,), t, device=device)
        ab = float(d.alpha_bars[t])
        x_t = d.q_sample(image, tt, noise)
        score = -model(x_t, tt) / (1 - ab) ** 0.5
        x0_tweedie = (x_t + (1 - ab) * score) / ab**0.5
        assert torch.allclose(x0_tweedie, d.predict_x0(x_t, t, -score * (1 - ab) ** 0.5), atol=1e-4)
        eps_error = -(1 - ab) ** 0.5 * score - noise
        errors.append((t, float(eps_error.pow(2).mean().sqrt()), float(((1 - ab) / ab) ** 0.5)))
        for key, v in zip(rows, (x_t, eps_error, x0_tweedie)):
            rows[key].append(v.clamp(-1, 1).cpu())
fig, axes = plt.subplots(3, 1, figsize=(10, 6.2), constrained_layout=True)
for ax, (key, imgs) in zip(axes, rows.items()):
    show_grid(torch.cat(imgs), key, nrow=len(fracs), ax=ax)
fig.suptitle(f"one test image at t = {', '.join(str(int(f * (d.T - 1))) for f in fracs)} (left to right) [{profile.name} profile]")
for t, rms, sigma_t in errors:
    print(f"t = {t:>4}: rms of eps_hat - eps {rms:.3f}; sigma(t) = {sigma_t:7.3f}; error reaching Tweedie's x0, rms {sigma_t * rms:.3f}")

# %% [markdown]
# At small $t$ Tweedie's estimate is close to the image itself. As $t$ grows it can only be the
# average of every image the noisy one could have come from, so it blurs; and the network's error
# in $\hat\varepsilon$ reaches it multiplied by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t} = \sigma(t)$ (the printed
# rms: the error in $\hat\varepsilon$ itself shrinks as $t$ grows, but $\sigma(t)$ grows faster, so the
# error that reaches the estimate of $x_0$ grows). One jump from
# noise to data is not enough: a sampler takes many smaller steps, each trusting the estimate
# only a little.
#
# ## Trajectories: the ODE and the SDE on the toy
#
# The mixture's exact denoiser (`toy(x, sigma)`, the posterior mean of each component weighted by
# its responsibility) has the same signature as `Denoiser`, so every solver of `helpers.solvers`
# runs on it unchanged. From the same eight starting points, the probability-flow ODE (Heun, below)
# and the reverse SDE (Euler-ancestral, below) both end on the ring (the cell checks that every end
# lies within three component stds of a mean); the ODE's paths are smooth and each start has one
# end, the SDE's jitter and may end in another component (the cell counts how many do).

# %%
from helpers.solvers import sample_euler_ancestral, sample_heun

toy_sigma_max = 4.0
toy_grid = karras_sigmas(40, 0.01, toy_sigma_max)
starts = toy_sigma_max * torch.randn(8, 2, generator=cpu_generator(3), dtype=torch.float64)
paths = {}
for name, solve in (("probability-flow ODE (Heun, 40 steps)", lambda cb: sample_heun(toy, starts, toy_grid, callback=cb)),
                    ("reverse SDE (Euler-ancestral, 40 steps)", lambda cb: sample_euler_ancestral(toy, starts, toy_grid, cpu_generator(4), callback=cb))):
    visited = []
    end = solve(lambda step: visited.append(step["x"]))
    paths[name] = torch.stack(visited + [end])  # [steps + 1, 8, 2]
frame = math.ceil(max(float(p.abs().max()) for p in paths.values()) + 0.2)  # every start and path inside the frame
frame_ticks = torch.linspace(-frame, frame, 161, dtype=torch.float64)
data = toy.log_prob(torch.cartesian_prod(frame_ticks, frame_ticks).flip(1), 0.0).exp().reshape(161, 161)
fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
for ax, (name, path) in zip(axes, paths.items()):
    ax.contourf(frame_ticks, frame_ticks, data, levels=8, cmap="Blues")
    for k in range(path.shape[1]):
        ax.plot(path[:, k, 0], path[:, k, 1], "-", lw=1.2, color=f"C{k}")
        ax.plot(*path[0, k], "o", color=f"C{k}", ms=4)
        ax.plot(*path[-1, k], "*", color=f"C{k}", ms=11, mec="black", mew=0.5)
    ax.set(title=name, xlabel="x_1", ylabel="x_2", xlim=(-frame, frame), ylim=(-frame, frame), aspect="equal")
fig.suptitle(f"from N(0, {toy_sigma_max:g}^2 I) (dots) to the ring mixture (stars) [{profile.name} profile]")
ends = {name: torch.cdist(p[-1], toy.means).min(1).values.max().item() for name, p in paths.items()}
print("farthest end from a component mean:", ", ".join(f"{name.split(' (')[0]} {v:.2f}" for name, v in ends.items()), f"(component std {toy.stds[0]:g})")
assert max(ends.values()) < 3 * float(toy.stds[0]), "an end lies off the ring"
component = {name: torch.cdist(p[-1], toy.means).argmin(1) for name, p in paths.items()}
moved = int((component["probability-flow ODE (Heun, 40 steps)"] != component["reverse SDE (Euler-ancestral, 40 steps)"]).sum())
print(f"the SDE ends in another component than the ODE from the same start for {moved} of {len(starts)} starts")

# %% [markdown]
# The same two samplers on the image model, from the same three noises: each column is the
# denoiser's guess $D(x;\sigma)$ at one step of the path, from $\sigma_{\max}$ (left) down to the
# sample (right). At high $\sigma$ the guess is mostly the network's error magnified by $\sigma$ (as
# in Tweedie's row above); then it becomes a blur of an item and sharpens. The ODE's path is fixed
# by its start; the SDE's fresh noise takes it elsewhere, so the two need not end on the same item.

# %%
image_grid = karras_sigmas(20, denoiser.sigma_min, denoiser.sigma_max)
x_img = torch.randn(3, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(10)).to(device) * (1 + denoiser.sigma_max**2) ** 0.5
fig, axes = plt.subplots(2, 1, figsize=(12, 5.6), constrained_layout=True)
for ax, (name, solve) in zip(axes, (("probability-flow ODE (Heun)", lambda cb: sample_heun(denoiser, x_img, image_grid, callback=cb)),
                                    ("reverse SDE (Euler-ancestral)", lambda cb: sample_euler_ancestral(denoiser, x_img, image_grid, cpu_generator(11), callback=cb)))):
    guesses = []
    end = solve(lambda step: guesses.append(step["x0"].clamp(-1, 1).cpu()) if step["i"] % 2 == 0 else None)
    frames = torch.stack(guesses + [end.clamp(-1, 1).cpu()], dim=1)  # [3 images, 11 frames, C, H, W]
    show_grid(frames.flatten(0, 1), f"{name}: D(x; sigma) every 2nd of 20 steps, then the sample", nrow=frames.shape[1], ax=ax)
fig.suptitle(f"denoised guesses along a path, sigma from {denoiser.sigma_max:.0f} (left) to 0 (right) [{profile.name} profile]");

# %% [markdown]
# ## Where to put the steps: the Karras grid
#
# A solver needs a grid $\sigma_0 > \sigma_1 > \dots > \sigma_{n-1} > 0$ and a last step to
# $\sigma = 0$. Karras et al. (2022, eq. 5) space the steps evenly in $\sigma^{1/\rho}$,
#
# $$\sigma_i = \Big(\sigma_{\max}^{1/\rho} + \tfrac{i}{n-1}\big(\sigma_{\min}^{1/\rho} - \sigma_{\max}^{1/\rho}\big)\Big)^{\rho},$$
#
# and found $\rho = 7$ best: it puts more of its steps at small $\sigma$, where the image's details are
# decided, than a grid uniform in $\sigma$ or in $t$ (the counts under the figure). Here $\sigma_{\max}$ and $\sigma_{\min}$ are the model's own $\sigma(t)$ at code $t = T-1$ and code $t = 0$. By hand,
# against `karras_sigmas`, and beside the $\sigma(t)$ of DDIM's trailing grid (uniform in $t$):

# %%
from helpers.samplers import ddim_timesteps


def karras_by_hand(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat([(sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho, torch.zeros(1, dtype=torch.float64)])


n = 10
assert torch.allclose(karras_by_hand(n, denoiser.sigma_min, denoiser.sigma_max), karras_sigmas(n, denoiser.sigma_min, denoiser.sigma_max))
grids = {"Karras, rho = 7": karras_sigmas(n, denoiser.sigma_min, denoiser.sigma_max)[:-1],
         "Karras, rho = 1 (uniform in sigma)": karras_sigmas(n, denoiser.sigma_min, denoiser.sigma_max, rho=1.0)[:-1],
         "DDIM trailing (uniform in t)": sigma_table[ddim_timesteps(d.T, n)]}
fig, ax = plt.subplots(figsize=(7, 3.8))
for name, g in grids.items():
    ax.plot(range(n), g, "o-", label=name)
ax.set(yscale="log", xlabel="step i", ylabel="noise level sigma (log scale)", title=f"{n}-step grids from sigma_max = {denoiser.sigma_max:.0f} to sigma_min = {denoiser.sigma_min:.3f} [{profile.name} profile]")
ax.legend();
below_one = {name: int((g < 1).sum()) for name, g in grids.items()}
for name, k in below_one.items():
    print(f"{name:<36} steps with sigma < 1: {k} of {n}")
print(f"most steps below sigma = 1: {max(below_one, key=below_one.get)}")

# %% [markdown]
# ## The solvers by hand
#
# Each function below integrates from $x = \sqrt{1+\sigma_{\max}^2}\,x_T$ (DDPM's pure-noise $x_T$
# in VE coordinates) down a grid `sigmas` that ends with 0, and is checked against its helper from
# the same noise. The slope of the ODE is $(x - D)/\sigma$ throughout.
#
# **Euler** (first order, one evaluation per step): $x \leftarrow x + (\sigma' - \sigma)\,(x - D(x;\sigma))/\sigma$.
#
# **Heun** (Karras et al. 2022, algorithm 1; second order, two evaluations per step): take the
# Euler step, evaluate the slope where it lands, and step again from the start with the average of
# the two slopes. The last step, to $\sigma = 0$, stays Euler: the slope there divides by zero. You
# write this one in exercise 1; the notebook runs the tested `helpers.solvers.sample_heun`.

# %%
from helpers.solvers import sample_dpmpp_2m, sample_euler, sample_pc

sigmas = karras_sigmas(10, denoiser.sigma_min, denoiser.sigma_max)
x_start = torch.randn(8, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(5)).to(device) * (1 + denoiser.sigma_max**2) ** 0.5
pairs = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))


@torch.no_grad()
def euler_by_hand(x):
    for s, s_next in pairs:
        x = x + (s_next - s) * (x - denoiser(x, s)) / s
    return x


assert torch.allclose(euler_by_hand(x_start), sample_euler(denoiser, x_start, sigmas), atol=1e-4)

# %% [markdown]
# **DPM-Solver++(2M)** (Lu et al. 2022, algorithm 2) is an *exponential integrator*: it solves the
# part of the ODE it knows exactly and approximates only the network. Change the clock to
# $\lambda = -\log\sigma$ (half the log-SNR; $\mathrm d\sigma = -\sigma\,\mathrm d\lambda$):
#
# $$\frac{\mathrm dx}{\mathrm d\lambda} = -\sigma\frac{\mathrm dx}{\mathrm d\sigma} = D(x;\sigma) - x,$$
#
# a linear part $-x$ plus the denoiser. Multiply by $e^{\lambda}$: $\frac{\mathrm d}{\mathrm d\lambda}(e^{\lambda}x) = e^{\lambda}D$.
# Integrate over one step from $\lambda$ to $\lambda' = \lambda + h$, $h = \log(\sigma/\sigma')$, and divide by $e^{\lambda'}$:
#
# $$x' = e^{-h}x + \int_{\lambda}^{\lambda'} e^{u - \lambda'}\,D\,\mathrm du \qquad (\text{exact}; e^{-h} = \sigma'/\sigma).$$
#
# Only $D$ along the step needs an approximation. Held at its value at the start (first order), the
# integral is $(1 - e^{-h})D$:
#
# $$x' = \frac{\sigma'}{\sigma}x + \Big(1 - \frac{\sigma'}{\sigma}\Big)D,$$
#
# which is DDIM's step at $\eta = 0$ (without clipping) written in VE units. For second order, extrapolate
# linearly in $\lambda$ from the previous step's $D_{\text{prev}}$, a step of length $h_{\text{prev}}$
# earlier: $D(u) \approx D + (u - \lambda)(D - D_{\text{prev}})/h_{\text{prev}}$. The extra term integrates
# to $(h - 1 + e^{-h})(D - D_{\text{prev}})/h_{\text{prev}}$; DPM-Solver++(2M) uses
# $(1 - e^{-h})\frac{h}{2}(D - D_{\text{prev}})/h_{\text{prev}}$ instead, the same up to $h^3$ (both
# $\frac{h^2}{2} + O(h^3)$), which folds into one corrected denoiser:
# $x' = \frac{\sigma'}{\sigma}x + (1 - \frac{\sigma'}{\sigma})\hat D$ with
# $\hat D = (1 + \frac1{2r})D - \frac1{2r}D_{\text{prev}}$, $r = h_{\text{prev}}/h$. It costs no extra
# evaluation; the first step (no $D_{\text{prev}}$ yet) and the last (to $\sigma' = 0$, $h = \infty$)
# use $D$ itself. The cell checks the first-order step against DDIM's (`helpers.samplers.ddim_step`,
# on the same $x_t$ and network output) and the two coefficients of the extra term:

# %%
from helpers.samplers import ddim_step

x_t = torch.randn(4, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(13))
out = torch.randn(x_t.shape, generator=cpu_generator(14))  # any network output: the step is pure arithmetic
for t, t_next in ((d.T - 1, d.T // 2), (d.T // 2, d.T // 4), (d.T // 10, -1)):  # code indices; -1: to x_0
    sigma, sigma_next = float(d.sigmas[t]), (float(d.sigmas[t_next]) if t_next >= 0 else 0.0)
    x = x_t * (1 + sigma**2) ** 0.5  # VE coordinates
    D = d.predict_x0(x_t, t, out)
    x_next = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * D  # first-order exponential integrator
    ddim, _ = ddim_step(d, out, x_t, t, t_next, eta=0.0, clip_x0=False)
    assert torch.allclose(x_next / (1 + sigma_next**2) ** 0.5, ddim, atol=1e-5)  # back to x_t coordinates
print("first-order exponential-integrator step == DDIM's step (eta = 0, unclipped) on the same x_t")
for h in (1.0, 0.3, 0.1, 0.03):
    exact, dpmpp = h - 1 + math.exp(-h), (1 - math.exp(-h)) * h / 2
    print(f"h = {h:<4}: exact integral {exact:.6f}, DPM-Solver++(2M)'s {dpmpp:.6f}, difference / h^3 = {(dpmpp - exact) / h**3:+.4f}")
    assert abs(dpmpp - exact) <= h**3 / 12

# %% [markdown]
# The difference is $-h^3/12$ to leading order: DPM-Solver++(2M)'s coefficient is the exact one up to
# a term of third order, an error of order $h^3$ per step, so the method is second order. By hand:

# %%
@torch.no_grad()
def dpmpp_2m_by_hand(x):
    prev = None  # (D at the previous step, that step's length h in lambda)
    for s, s_next in pairs:
        D = denoiser(x, s)
        h = math.log(s / s_next) if s_next > 0 else math.inf
        D_hat = D if prev is None or s_next == 0 else (1 + 1 / (2 * prev[1] / h)) * D - 1 / (2 * prev[1] / h) * prev[0]
        x = (s_next / s) * x + (1 - s_next / s) * D_hat
        prev = (D, h)
    return x


assert torch.allclose(dpmpp_2m_by_hand(x_start), sample_dpmpp_2m(denoiser, x_start, sigmas), atol=1e-4)

# %% [markdown]
# **Euler-ancestral**: a stochastic sampler of the reverse SDE. Split the step to $\sigma'$ into a
# deterministic Euler step down to $\sigma_\downarrow$ and fresh noise of standard deviation
# $\sigma_\uparrow$ back up, with $\sigma_\downarrow^2 + \sigma_\uparrow^2 = \sigma'^2$ and
# $\sigma_\uparrow^2 = \sigma'^2(\sigma^2 - \sigma'^2)/\sigma^2$, the DDPM posterior variance in
# VE units (so on the full grid it is DDPM's $\tilde\beta_t$).
#
# **Predictor-corrector** (Song et al. 2021, score SDE, algorithm 2 for the VE SDE). The predictor is a
# reverse-diffusion step, $x' = x + (\sigma^2 - \sigma'^2)\,\nabla_x\log p_\sigma + \sqrt{\sigma^2-\sigma'^2}\,z$ with the score
# $\nabla_x\log p_\sigma = (D - x)/\sigma^2$ (Tweedie's formula read backwards); the corrector then runs Langevin dynamics at $\sigma'$,
# $x \leftarrow x + \epsilon\,\nabla_x\log p_{\sigma'} + \sqrt{2\epsilon}\,z$, with the step $\epsilon = 2(r\,\lVert z\rVert/\lVert \nabla_x\log p_{\sigma'}\rVert)^2$
# set by a signal-to-noise ratio $r$ (0.16 in the paper; norms averaged over the batch, as in its code).

# %%
from helpers.solvers import Solver


@torch.no_grad()
def euler_ancestral_by_hand(x, gen):
    for s, s_next in pairs:
        up = min(s_next, (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        down = (s_next**2 - up**2) ** 0.5
        x = x + (down - s) * (x - denoiser(x, s)) / s
        if s_next > 0:
            x = x + up * torch.randn(x.shape, generator=gen).to(device)
    return x


@torch.no_grad()
def pc_by_hand(x, gen, snr=0.16):
    norm = lambda v: v.flatten(1).norm(dim=1).mean()  # noqa: E731
    for s, s_next in pairs:
        D = denoiser(x, s)
        if s_next == 0:  # the last predictor step: Tweedie's estimate itself
            x = D
            continue
        x = x + (s**2 - s_next**2) * (D - x) / s**2 + (s**2 - s_next**2) ** 0.5 * torch.randn(x.shape, generator=gen).to(device)
        score, z = (denoiser(x, s_next) - x) / s_next**2, torch.randn(x.shape, generator=gen).to(device)
        step = 2 * (snr * norm(z) / norm(score)) ** 2
        x = x + step * score + (2 * step) ** 0.5 * z
    return x


assert torch.allclose(euler_ancestral_by_hand(x_start, cpu_generator(6)), sample_euler_ancestral(denoiser, x_start, sigmas, cpu_generator(6)), atol=1e-4)
assert torch.allclose(pc_by_hand(x_start, cpu_generator(7)), sample_pc(denoiser, x_start, sigmas, generator=cpu_generator(7)), atol=1e-4)
print("Euler, DPM-Solver++(2M), Euler-ancestral and PC by hand == helpers.solvers on the same noise")

# %% [markdown]
# What a run costs is its number of network evaluations (NFE), not its number of steps. `Solver`
# turns a budget into a grid: Heun spends two per step and one on the last, PC one per predictor
# and one per corrector step. On a budget of 10:

# %%
# NBVAL_CHECK_OUTPUT
for name in ("euler", "heun", "dpmpp-2m", "euler-a", "pc"):
    print(Solver(name, 10))

# %% [markdown]
# ## Quality against network evaluations
#
# Every sampler draws the same images from the same noise (the evaluator's seed), and each set
# is scored with FID against the real-data floor at the same count (notebook 06). DDIM here is
# $\eta = 0$ on the trailing grid, DDPM the full ancestral chain of $T$ steps; the solvers use the
# Karras grid with $\rho = 7$. DDIM and DDPM clip their $\hat x_0$ to $[-1, 1]$ at every step
# (notebooks 04 and 05); the solvers do not. So DDIM runs twice, clipped and unclipped: the
# unclipped one is the control that says what the clipping, not the grid, changes. On a CPU this is
# the notebook's long cell: per image it makes $T$ network evaluations for DDPM and up to each
# budget for each of the seven others (the cell prints its minutes). DDPM's chain is most of that
# cost, so every sampler draws only 100 images (16 under `smoke`; the table prints the count). FID
# depends on the count, so these numbers compare with each other and with the real-data floor at
# the same count, not with other notebooks' FIDs.

# %% tags=["nbval-ignore-output"]
from helpers.evaluation import Evaluator
from helpers.metrics import extract_both, fid_interval, get_features
from helpers.samplers import DDIM, DDPM

features = get_features(profile, device)
n_images = 16 if profile.name == "smoke" else min(100, profile.sample.fid_samples)  # DDPM's T evaluations per image set the cost; smoke: CI's minutes
evaluator = Evaluator.for_profile(profile, d, features, n=n_images, kid_subset_size=min(n_images, profile.sample.kid_subset_size))

# %%
budgets = [n for n in (10, 20, 50) if n <= d.T][: 2 if profile.name == "smoke" else None]  # smoke: CI's minutes
methods = {"DDIM": lambda nfe: DDIM(nfe), "DDIM unclipped": lambda nfe: DDIM(nfe, clip_x0=False)}
methods |= {name: (lambda nfe, name=name: Solver(name, nfe)) for name in ("euler", "heun", "dpmpp-2m", "euler-a", "pc")}
results, feats = [], {}  # feats[(method, budget)]: the classifier features of its samples, for paired intervals
shown = {}  # the first eight images of DDPM and of every sampler at a budget of 10, with their classes (figure below)
table_start = time.perf_counter()
for method, make in [("DDPM", lambda nfe: DDPM())] + list(methods.items()):
    for nfe in [d.T] if method == "DDPM" else budgets:
        sampler = make(nfe)
        sync(device)
        start = time.perf_counter()
        images, _ = evaluator.images(model, sampler=sampler)
        sync(device)
        seconds = time.perf_counter() - start
        q = evaluator.score(images)
        feats[(method, nfe)], logits = extract_both(features, images)
        if method == "DDPM" or nfe == 10:
            shown[method] = (str(sampler), images[:8], logits[:8].argmax(1))  # the FID classifier's label of each
        spent = sampler.spent if isinstance(sampler, Solver) else len(sampler.timesteps(d.T))
        results.append({"method": method, "budget": nfe, "nfe": spent, "sampler": str(sampler), "fid": q.fid, "kid": q.kid, "seconds": seconds})
floor = q.floor
print(f"{q.n_fake} images per sampler, {q.features} features, {q.n_real} real images; real-data floor {floor}")
print(f"{'sampler':<15} {'NFE':>5} {'FID':>8} {'s':>7}")
for r in results:
    print(f"{r['method']:<15} {r['nfe']:>5} {r['fid']:>8.2f} {r['seconds']:>7.1f}")
print(f"the table took {(time.perf_counter() - table_start) / 60:.1f} minutes")

# %%
fig, ax = plt.subplots(figsize=(8, 4.8))
for k, method in enumerate(methods):
    rs = [r for r in results if r["method"] == method]
    ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o--" if method == "DDIM unclipped" else "o-", color=f"C{k}", label=method)
ddpm = next(r for r in results if r["method"] == "DDPM")
ax.plot([ddpm["nfe"]], [ddpm["fid"]], "*", ms=14, color="black", label=f"DDPM ({ddpm['nfe']} steps)")
ax.axhline(ddpm["fid"], color="black", lw=0.8, ls=":")
ax.axhspan(floor.fid - floor.fid_std, floor.fid + floor.fid_std, color="gray", alpha=0.25, label="real-data floor ± std")
ax.set(xscale="log", yscale="log", xlabel="network evaluations per image (NFE, log scale)", ylabel=f"FID, {q.n_fake} samples (log scale)",
       title=f"quality against network evaluations [{profile.name} profile]")
ax.legend(ncol=2, fontsize=9);

# %% [markdown]
# What the table says, from its own numbers. Every sampler starts from the same noise, so two of
# them are compared by the paired bootstrap interval of their FID difference
# (`helpers.metrics.fid_interval`: both FIDs recomputed on the same resampled images); an interval
# that excludes 0 is a difference that resampling the images does not explain.

# %%
replicates = 100 if profile.name == "smoke" else 200  # each replicate recomputes two FIDs: seconds per interval
fid = {(r["method"], r["budget"]): r["fid"] for r in results}


def paired(a, b):
    """FID(a) - FID(b) on the same noise, with its bootstrap interval and a verdict."""
    iv = fid_interval(evaluator.real, feats[a], feats[b], replicates=replicates)
    verdict = "no difference resolved" if not iv.excludes_zero else f"{a[0]} {'lower' if iv.estimate < 0 else 'higher'}"
    return iv, verdict


ddpm_key = ("DDPM", d.T)
for nfe in [b for b in (10, 50) if b in budgets]:
    b = min((r for r in results if r["method"] != "DDPM" and r["budget"] == nfe), key=lambda r: r["fid"])
    iv, verdict = paired((b["method"], nfe), ddpm_key)
    print(f"best at a budget of {nfe} NFE: {b['method']} ({b['nfe']} NFE), FID {b['fid']:.1f}; minus DDPM-{ddpm['nfe']}'s {ddpm['fid']:.1f}: {iv} -> {verdict}")
top = max(budgets)
at_top = sorted(((r["fid"], r["method"]) for r in results if r["budget"] == top))
print(f"at a budget of {top}: " + ", ".join(f"{m} {f:.1f}" for f, m in at_top) + f"; DDPM-{ddpm['nfe']} {ddpm['fid']:.1f}; floor {floor.fid:.1f} ± {floor.fid_std:.1f}")
ode = ["DDIM unclipped", "euler", "heun", "dpmpp-2m"]  # the four unclipped integrators of one ODE
ode_fids = [fid[(m, top)] for m in ode]
print(f"the four unclipped ODE samplers at {top}: FID {min(ode_fids):.1f} to {max(ode_fids):.1f} (a spread of {max(ode_fids) - min(ode_fids):.1f})")
ode_lo, *_, ode_hi = sorted(ode, key=lambda m: fid[(m, top)])
spread_iv, spread_verdict = paired((ode_hi, top), (ode_lo, top))
print(f"the spread's two ends (the pair chosen after seeing the FIDs), {ode_hi} minus {ode_lo} at {top}: {spread_iv} -> {spread_verdict}")
clip_iv, clip_verdict = paired(("DDIM", top), ("DDIM unclipped", top))
print(f"DDIM clipped minus unclipped at {top}: {clip_iv} -> {clip_verdict}")
same_iv, same_verdict = paired(("DDIM unclipped", top), ("dpmpp-2m", top))
print(f"DDIM unclipped minus DPM-Solver++(2M) at {top}: {same_iv} -> {same_verdict}")
sde_iv, sde_verdict = paired(("euler-a", top), ("dpmpp-2m", top))
print(f"Euler-ancestral (reverse SDE) minus DPM-Solver++(2M) (ODE) at {top}: {sde_iv} -> {sde_verdict}")
pc_rank = [m for _, m in at_top].index("pc") + 1
print(f"PC at {top}: rank {pc_rank} of {len(at_top)} (1 = lowest FID)")

# %% [markdown]
# Why the curves look as they do. Euler, Heun, DPM-Solver++ and DDIM without clipping integrate
# the same probability-flow ODE, so as the budget grows their samples approach the same images and
# their FIDs one value, the ODE's own; a better solver gets there in fewer evaluations, which is all
# it can do. The printed spread of the four at the largest budget says how close they have come,
# with the paired interval of its two ends. That pair was picked as the extremes after the FIDs
# were seen, so its interval leans towards a difference: an interval that still includes 0 says
# the four are not told apart, one that excludes it is weaker evidence than the same interval for
# a pair named in advance (such as the one below).
# Clipping $\hat x_0$ changes the ODE: every step of clipped DDIM projects its guess into the pixel
# range, which removes the part of a large high-noise error that falls outside it; the paired
# interval of clipped against unclipped DDIM says whether that is a difference here, and which way.
# Euler-ancestral (and DDPM) sample the reverse SDE instead and approach its samples. Which limit is
# better is a property of the model: Karras et al. (2022, section 4) found that the fresh noise of a
# stochastic sampler corrects earlier errors, which helps a network with large errors and costs
# detail with a very good one; the SDE-against-ODE interval above says which holds for this one.
# PC's predictor is the Euler–Maruyama step of the reverse SDE, whose noise of variance
# $\sigma^2-\sigma'^2$ is right only for steps with $\sigma'/\sigma$ near 1: Song et al. (2021, score SDE,
# Table 1) ran it with 1,000 predictor and 1,000 corrector steps, far beyond these budgets (its
# rank is printed above).

# %% [markdown]
# The table's first eight images from every sampler at a budget of 10 evaluations (the same eight
# noises for all), with DDPM's full chain on top for reference:

# %%
fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.45 * len(shown)), constrained_layout=True)
for ax, (title, images, _) in zip(axes, shown.values()):
    show_grid(images, title, nrow=8, ax=ax)
spent_at_10 = {r["method"]: r["nfe"] for r in results if r["budget"] == 10}
fewer = ", ".join(f"{m} spends {n}" for m, n in spent_at_10.items() if n < 10)
fig.suptitle(f"the same noise, a budget of 10 NFE ({fewer or 'all spend 10'}) except DDPM [{profile.name} profile]")
labels = {method: classes for method, (_, _, classes) in shown.items()}
print("samples given the same class as DPM-Solver++(2M)'s from the same noise: "
      + ", ".join(f"{m} {int((labels[m] == labels['dpmpp-2m']).sum())} of {len(labels[m])}" for m in labels if m != "dpmpp-2m"))
print(f"FID at a budget of 10 (table above): " + ", ".join(f"{m} {fid[(m, 10)]:.1f}" for m in methods if (m, 10) in fid))

# %% [markdown]
# The deterministic samplers (DDIM with and without clipping, Euler, Heun, DPM-Solver++) follow one
# ODE, so each noise should become much the same item under all of them, drawn more or less cleanly
# (Heun has only five steps); Euler-ancestral and DDPM add fresh noise on the way and may draw other
# items. The printed counts of samples the feature classifier puts in the same class as
# DPM-Solver++'s say how far each holds for these eight noises; PC's row and its FID at this budget
# show how far it is from an image.
#
# ## What this notebook leaves
#
# The FID-against-NFE table, in `artifacts/<profile>/figures/09_nfe_fid.json`. The solvers are on the
# command line too: `python -m helpers sample --checkpoint ... --sampler dpmpp-2m --nfe 20`.

# %%
path = profile.artifacts / "figures" / "09_nfe_fid.json"
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({"device": str(device), "features": q.features, "n": q.n_fake, "floor": floor.fid, "floor_std": floor.fid_std, "rows": results}, indent=2))
print(f"saved {path}")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/09_score_sde_solvers.py`.
#
# **1. Heun's sampler.** Write Heun's method as "The solvers by hand" describes it: down a grid
# `sigmas` that ends with 0, each step an Euler step to the next noise level, then the step again
# from the same start with the average of the slope at the start and the slope where the Euler step
# landed; the step to $\sigma = 0$ stays Euler. The check runs it on the ring mixture's exact denoiser
# against `helpers.solvers.sample_heun`, and counts your denoiser calls (two per step, one for the last).

# %%
def heun_sampler(denoiser, x, sigmas):
    """x at the end of the grid sigmas (float64, decreasing, ending with 0) by Heun's method on
    dx/dsigma = (x - denoiser(x, sigma)) / sigma, starting from x at sigmas[0]."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(heun_sampler)

# %% [markdown]
# **2. Predict, then run: how fast does the error shrink?** Integrate the probability-flow ODE of the
# ring mixture (exact denoiser) from $\sigma = 5$ down to $\sigma = 0.1$ on a Karras grid of $n$ steps,
# and call the error the mean distance of the end points from the exact solution (the check takes
# Heun with 256 steps for it). Doubling $n$ from
# 16 to 32 divides the error by some factor. Predict it for Euler, Heun and DPM-Solver++(2M) (the
# steps double, whatever each costs in evaluations); the check runs the three and passes a
# prediction within 20% of what it measures. Why does its grid stop at $\sigma = 0.1$ rather than go
# on to 0?

# %%
def error_shrink_factors():
    """(Euler's, Heun's, DPM-Solver++(2M)'s) error with 16 steps divided by their error with 32."""
    raise NotImplementedError  # your code here


# %%
check(error_shrink_factors)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
