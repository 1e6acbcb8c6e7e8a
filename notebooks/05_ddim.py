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
# # 05 · DDIM: the same model in far fewer steps
#
# DDPM needs all $T$ steps because each one undoes one step of a Markov chain. Song, Meng & Ermon
# (2021, "DDIM") noticed that training only ever sees the marginals $q(x_t \mid x_0)$, so any
# process with those marginals fits the same trained network, and some of them can be sampled in
# a few dozen steps, even deterministically. This notebook shows that their processes keep the
# marginals, derives the DDIM update, checks it, and measures the trade between steps, wall time
# and quality on the model of notebook 03. Symbols as on the [notation](../docs/notation.md) page
# ($\sigma_t$ with a timestep subscript is the reverse step's standard deviation).
#
# It needs `03_ddpm_eps.pt` from notebook 03.

# %%
import json
import time

import matplotlib.pyplot as plt
import torch

from helpers.device import sync
from helpers.checkpoints import load_model
from helpers.config import setup
from helpers.device import cpu_generator
from helpers.samplers import DDIM, ddim_step, ddim_timesteps, sample
from helpers.viz import show_grid

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
model, d, ckpt = load_model(profile.require("eps"), device)
print(f"model after {ckpt['step']} training steps; {d}")

# %% [markdown]
# ## A non-Markovian forward process
#
# DDIM defines a family of processes, one for each choice of $\sigma_t$, by their reverse-time
# kernel (Song, Meng & Ermon 2021, eq. 7)
#
# $$q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\Big(\sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},\ \sigma_t^2 I\Big)$$
#
# and the joint $q_\sigma(x_{1:T} \mid x_0) = q_\sigma(x_T \mid x_0)\prod_{t=2}^{T} q_\sigma(x_{t-1} \mid x_t, x_0)$ with
# $q_\sigma(x_T \mid x_0) = \mathcal N(\sqrt{\bar\alpha_T}x_0, (1-\bar\alpha_T)I)$ (their eq. 6). They parametrise
# $\sigma_t$ by $\eta \ge 0$ (eq. 16):
#
# $$\sigma_t = \eta\,\sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t-1}}};$$
#
# $\eta = 1$ makes $\sigma_t^2 = \tilde\beta_t$, and the kernel is DDPM's posterior (the process is then
# DDPM's Markov chain); for any other $\eta$ the forward step $q_\sigma(x_t \mid x_{t-1}, x_0)$, which
# follows by Bayes' rule, depends on $x_0$: the process is not Markovian.
#
# **Every marginal is still $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$, whatever
# $\sigma$.** By induction down from $T$, where it holds by definition: suppose
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ with $\varepsilon \sim \mathcal N(0, I)$. The
# kernel's mean reads $\varepsilon$ back, $\frac{x_t - \sqrt{\bar\alpha_t}x_0}{\sqrt{1-\bar\alpha_t}} = \varepsilon$, so a
# draw from the kernel is
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\varepsilon + \sigma_t z,\qquad z \sim \mathcal N(0, I) \text{ independent of } \varepsilon,$$
#
# and two independent centred Gaussians of variances $1-\bar\alpha_{t-1}-\sigma_t^2$ and $\sigma_t^2$ add to
# one of variance $1-\bar\alpha_{t-1}$: $x_{t-1} \sim \mathcal N(\sqrt{\bar\alpha_{t-1}}x_0, (1-\bar\alpha_{t-1})I)$, the
# claim one level down (their Lemma 1). $\sigma_t$ only decides how much of $x_{t-1}$'s noise is
# the $\varepsilon$ that $x_t$ carried and how much is fresh: it changes how the levels correlate, the
# joint, never a marginal. Nothing used that $t-1$ is next to $t$: the same holds between the levels
# $t > t'$ of a shorter grid, with $\bar\alpha_{t'}$ in place of $\bar\alpha_{t-1}$ (in $\sigma_t$ too). Same
# marginals, same training loss: the eps-model of notebook 03 serves every member of the family.
#
# The check, by Monte Carlo on one pixel: fix $x_0$, draw many $x_T$ from $q(x_T \mid x_0)$, run the
# kernel by hand down the sampler's grid at three values of $\eta$, and compare each level's
# empirical mean and standard deviation with $\sqrt{\bar\alpha_t}x_0$ and $\sqrt{1-\bar\alpha_t}$ (in
# standard errors of the estimate); the correlation of each level with $x_T$ shows that the three
# processes differ all the same.

# %%
S = min(50, d.T)  # steps of the checks and pictures below
levels = ddim_timesteps(d.T, S)  # the sampler's trailing grid, code timesteps, descending
ab = d.alpha_bars
x0_pixel, n = 0.6, 32_000  # one pixel of x_0, and the number of chains
stats = {}  # eta -> [level, (mean, std, correlation with x_T)]
for eta in (0.0, 0.5, 1.0):
    gen = cpu_generator(20)
    x = ab[levels[0]].sqrt() * x0_pixel + (1 - ab[levels[0]]).sqrt() * torch.randn(n, generator=gen, dtype=torch.float64)
    x_top, rows_eta = x, []
    for t, t_prev in zip(levels, levels[1:] + [None]):
        correlation = ((x_top - x_top.mean()) * (x - x.mean())).mean() / (x_top.std(correction=0) * x.std(correction=0))
        rows_eta.append((x.mean(), x.std(), correlation))
        if t_prev is None:
            break
        sigma = eta * ((1 - ab[t_prev]) / (1 - ab[t]) * (1 - ab[t] / ab[t_prev])).sqrt()  # eq. 16 on the grid
        eps = (x - ab[t].sqrt() * x0_pixel) / (1 - ab[t]).sqrt()  # the noise that x_t carries
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        x = ab[t_prev].sqrt() * x0_pixel + (1 - ab[t_prev] - sigma**2).sqrt() * eps + sigma * z  # a draw of eq. 7
    stats[eta] = torch.tensor(rows_eta)

target_mean, target_std = ab[levels].sqrt() * x0_pixel, (1 - ab[levels]).sqrt()
print(f"{n} chains from x_0 = {x0_pixel} down {len(levels)} levels; the largest error over the levels, in standard errors:")
print(f"{'eta':>5} {'mean':>6} {'std':>6}  correlation of x_t with x_T at code t = {levels[-1]}")
for eta, st in stats.items():
    z_mean = ((st[:, 0] - target_mean) / (target_std / n**0.5)).abs().max()
    z_std = ((st[:, 1] / target_std - 1) / (1 / (2 * n) ** 0.5)).abs().max()
    print(f"{eta:>5} {z_mean:>6.2f} {z_std:>6.2f}  {st[-1, 2]:.3f}")
    assert z_mean < 5 and z_std < 5, f"eta = {eta}: a marginal is off by more than 5 standard errors"
last = [st[-1, 2].item() for st in stats.values()]
assert last[0] > 0.9999 and last[0] > last[1] > last[2], last  # eta = 0: x_t is a function of x_T; more eta, more fresh noise

fig, (ax, ax_corr) = plt.subplots(1, 2, figsize=(12, 3.6))
for k, ((eta, st), marker) in enumerate(zip(stats.items(), "o^s")):
    ax.plot(levels, st[:, 1], marker, color=f"C{k}", ms=4, mfc="none", label=f"std, eta = {eta:g}")
    ax.plot(levels, st[:, 0], marker, color=f"C{k}", ms=4, mfc="none", label=f"mean, eta = {eta:g}")
    ax_corr.plot(levels, st[:, 2], marker + "-", color=f"C{k}", ms=4, label=f"eta = {eta:g}")
ax.plot(levels, target_std, "k-", lw=1, label=r"$\sqrt{1-\bar\alpha_t}$")
ax.plot(levels, target_mean, "k--", lw=1, label=rf"$\sqrt{{\bar\alpha_t}}\,x_0$")
ax.set(xlabel="code timestep t (the chain runs right to left)", ylabel="mean and std across the chains", title="the marginals: the same for every eta")
ax_corr.set(xlabel="code timestep t (the chain runs right to left)", ylabel="correlation with $x_T$", title="the processes: different")
for a_ in (ax, ax_corr):
    a_.invert_xaxis()
ax.legend(fontsize=7, ncol=2, loc="center left")
ax_corr.legend(fontsize=8)
fig.suptitle(rf"DDIM's processes $q_\sigma$ from one $x_0$ = {x0_pixel}, {n} chains, {len(levels)}-level grid [{profile.name} profile]", y=1.02);

# %% [markdown]
# ## The DDIM update
#
# Replacing $x_0$ by the network's $\hat x_0$ and $\frac{x_t - \sqrt{\bar\alpha_t}x_0}{\sqrt{1-\bar\alpha_t}}$ by its
# $\hat\varepsilon$ in the kernel gives the update (eq. 12)
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\hat\varepsilon + \sigma_t z .$$
#
# $\eta = 0$ makes the sampler deterministic, and as above the same formula jumps between any two
# timesteps $t > t'$ of a shorter grid, with $\bar\alpha_{t'}$ in place of $\bar\alpha_{t-1}$.
#
# The whole sampler, written out: the trailing grid, and at each step the network's noise, the
# clipped guess $\hat x_0$, the noise re-derived from it (so that $\hat x_0$ and $\hat\varepsilon$ explain
# $x_t$ together), $\sigma_t$ of eq. 16, the step of eq. 12, and fresh noise when $\sigma_t > 0$:

# %%
def ddim_by_hand(model, x, steps, eta, gen):
    grid = [round(d.T - k * d.T / steps) - 1 for k in range(steps)]  # trailing: starts at T - 1
    for t, t_prev in zip(grid, grid[1:] + [-1]):  # t_prev = -1: alpha_bar = 1, land on x_0
        ab, ab_prev = d.alpha_bars[t].item(), (d.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0)
        eps = model(x, torch.full((len(x),), t, device=device))
        x0 = ((x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1, 1)  # the guess of x_0, clipped
        eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5  # the noise that goes with it
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5  # eq. 16
        x = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0) ** 0.5 * eps  # eq. 12
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=gen).to(device)
    return x.clamp(-1, 1)


assert [round(d.T - k * d.T / S) - 1 for k in range(S)] == ddim_timesteps(d.T, S)
x_T = torch.randn(8, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(5)).to(device)
for eta in (0.0, 0.5):
    with torch.no_grad():
        by_hand = ddim_by_hand(model, x_T, S, eta, cpu_generator(6))
    assert torch.allclose(by_hand, sample(model, d, x_T, DDIM(S, eta), cpu_generator(6), progress=False), atol=1e-4)

# %% [markdown]
# At $\eta = 1$ on the full grid, the noise that `ddim_step` adds has exactly the DDPM posterior
# variance at every step (checked here for this profile's schedule; `tests/` checks the whole
# step against `ddpm_step`):

# %%
# NBVAL_CHECK_OUTPUT
z = torch.ones(1, 1, 1, 1, dtype=torch.float64)
x, out = torch.zeros_like(z), torch.zeros_like(z)
sigma2 = torch.tensor([(ddim_step(d, out, x, s, s - 1, 1.0, z)[0] - ddim_step(d, out, x, s, s - 1, 1.0, 0 * z)[0]).item() ** 2 for s in range(1, d.T)], dtype=torch.float64)
print("eta = 1 variance equals beta tilde at every step:", torch.allclose(sigma2, d.posterior_variance[1:], rtol=1e-8, atol=1e-15))

# %% [markdown]
# ## Which timesteps to visit
#
# A sampler with $S < T$ steps needs a grid. diffusers offers three, and they differ most at few
# steps: **trailing** $\mathrm{round}(T - kT/S) - 1$ (starts at $T-1$, where $x_T$ is the pure noise
# the sampler starts from), **leading** $k\lfloor T/S\rfloor$ (starts at $(S-1)\lfloor T/S\rfloor$:
# $T - T/S$ when $S$ divides $T$, lower otherwise, and `ddim_timesteps` warns when it is far below
# $T-1$), **linspace** $\mathrm{round}(\mathrm{linspace}(0, T-1, S))$ (both ends). Trailing is the
# default of `DDIM` here, for the reason Lin et al. (2024) give (section below). The loop always
# steps to the next entry of the grid, and from the last to $\bar\alpha = 1$. For $T = 1000$ and $S = 10$:

# %%
# NBVAL_CHECK_OUTPUT
for spacing in ("trailing", "leading", "linspace"):
    print(f"{spacing:<9}", ddim_timesteps(1000, 10, spacing))

# %% [markdown]
# ## Steps against time and quality
#
# The quality number is FID (Heusel et al. 2017): a Gaussian fitted to the features of real
# images, another to the features of generated ones, and the Fréchet distance between them,
# $\lVert\mu_r-\mu_g\rVert^2 + \mathrm{Tr}\big(\Sigma_r+\Sigma_g-2(\Sigma_r\Sigma_g)^{1/2}\big)$. Lower is
# better; it is 0 only for identical statistics and is biased upward at a finite sample count,
# so held-out *real* images score above 0 too: that score is the **real-data floor**, the best a
# model can reach at these counts. FID is a distance, not a ratio scale: differences between
# models are what it supports. KID (Bińkowski et al. 2018) is an unbiased estimate of the
# squared MMD between the two feature sets, in the squared units of its kernel on these
# features (not ×1000); being unbiased, it scatters around 0 when the two sets match, so it can
# be negative, as the floor's is. Notebook 06 says more about both. Offline, and under the smoke
# and laptop profiles, the features come from a small classifier trained on the dataset (the
# first call trains and caches it), so the numbers are comparable with each other but not with
# published Inception FIDs.
#
# Every sampler below starts from the same noise: each sampling batch draws from its own
# generator, so the step noise of a stochastic sampler ($\eta > 0$) never shifts the next batch's
# start. Two samplers are
# therefore compared **paired**: `fid_interval` resamples the same image indices for both (200
# times) and reports the difference of their FIDs with a 95% bootstrap interval; an interval that
# excludes 0 is a difference that resampling the images does not explain. Each sampler costs one
# network evaluation per image and step, so the sweeps below stop at 50 steps.

# %% tags=["nbval-ignore-output"]
from helpers.evaluation import Evaluator
from helpers.metrics import get_features

features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, d, features, eta=0.0)  # this notebook's sweeps: deterministic DDIM

from helpers.metrics import extract_both, fid_interval

def paired(feats_a, feats_b, a, b):
    """FID(a) - FID(b) with its paired 95% bootstrap interval (200 resamples), and the verdict it supports."""
    interval = fid_interval(evaluator.real, feats_a, feats_b, replicates=200)
    if not interval.excludes_zero:
        return interval, f"{a} against {b}: no difference resolved"
    return interval, f"{a} {'lower (better)' if interval.estimate < 0 else 'higher (worse)'} than {b}"

# %%
rows, step_feats, step_quality = [], {}, {}
for steps in (10, 20, 50):
    evaluator.steps = steps
    sync(device)
    start = time.perf_counter()
    images, _ = evaluator.images(model)
    sync(device)
    seconds = time.perf_counter() - start
    q = step_quality[steps] = evaluator.score(images)
    step_feats[steps] = extract_both(features, images)[0]
    if steps == 10:
        first_eight = images[:8]  # for the comparison of grids below
    rows.append({"steps": steps, "seconds": seconds, "ms_per_image": 1000 * seconds / len(images), "fid": q.fid, "kid": q.kid})
print(f"DDIM (eta = {evaluator.eta:g}, {evaluator.spacing} grid), {q.n_fake} images each, {q.features} features, {q.n_real} real images, KID subsets of {q.kid_subset_size}")
print(f"real-data floor at these counts: {q.floor}")
print(f"{'steps':>6} {'ms/image':>9} {'FID':>8} {'KID':>8}")
for r in rows:
    print(f"{r['steps']:>6} {r['ms_per_image']:>9.1f} {r['fid']:>8.3f} {r['kid']:>8.4f}")
per_step = [r["ms_per_image"] / r["steps"] for r in rows]
print(f"ms per image and step: {', '.join(f'{v:.2f}' for v in per_step)} (largest / smallest {max(per_step) / min(per_step):.2f})")
step_verdicts = []
for fewer, more in zip(rows, rows[1:]):
    interval, verdict = paired(step_feats[more["steps"]], step_feats[fewer["steps"]], f"{more['steps']} steps", f"{fewer['steps']} steps")
    step_verdicts.append(interval)
    print(f"FID({more['steps']} steps) - FID({fewer['steps']} steps) = {interval}: {verdict}")
stop = next((fewer["steps"] for fewer, i in zip(rows, step_verdicts) if not (i.excludes_zero and i.estimate < 0)), None)
print("every step up lowered FID resolvably" if stop is None else f"verdict: beyond {stop} steps, extra steps did not lower FID resolvably")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["ms_per_image"] for r in rows], [r["fid"] for r in rows], "o-")
for r in rows:
    ax.annotate(f"{r['steps']} steps", (r["ms_per_image"], r["fid"]), textcoords="offset points", xytext=(5, 5))
ax.axhline(q.floor.fid, color="gray", ls="--", label="real-data floor")
ax.legend()
ax.set(xscale="log", xlabel="milliseconds per image (log scale)", ylabel=f"FID ({q.features})",
       title=f"DDIM: time against quality [{profile.name} profile]");

# %% [markdown]
# Time grows about linearly with the number of steps (the milliseconds per image and step above
# stay close): each step is one network evaluation. Whether quality keeps improving with more
# steps is a property of the model; the paired differences above say where extra evaluations
# stop paying for this one.
#
# ## Deterministic or stochastic: $\eta$
#
# Everything above used $\eta = 0$. Song, Meng & Ermon (2021, Table 1) found $\eta = 0$ the best
# of the values they tried at 10 to 100 steps, for fully trained CIFAR-10 and CelebA models, with
# the gap to $\eta = 1$ widest at few steps. Fresh noise at every step has a use that their models
# did not need: it partly washes out the errors that earlier steps made (Karras et al. 2022,
# section 4), and a model trained for minutes makes many. The same evaluator, the same starting
# noise, $\eta = 1$ at 20 and 50 steps, compared paired with $\eta = 0$ at the same steps and with
# itself across the two step counts (the bars show FID; the printed intervals are the comparison):

# %%
eta_rows = [{"eta": 0.0, **{k: r[k] for k in ("steps", "fid", "kid")}} for r in rows if r["steps"] in (20, 50)]  # measured above
eta_feats = {(0.0, steps): step_feats[steps] for steps in (20, 50)}
for steps in (20, 50):
    evaluator.eta, evaluator.steps = 1.0, steps
    images = evaluator.images(model)[0]
    q = evaluator.score(images)
    eta_feats[1.0, steps] = extract_both(features, images)[0]
    eta_rows.append({"eta": 1.0, "steps": steps, "fid": q.fid, "kid": q.kid})
evaluator.eta = 0.0
print(f"{q.n_fake} images each, {q.features} features; real-data floor {q.floor}")
print(f"{'eta':>5} {'steps':>6} {'FID':>8} {'KID':>8}")
for r in eta_rows:
    print(f"{r['eta']:>5} {r['steps']:>6} {r['fid']:>8.3f} {r['kid']:>8.4f}")
eta_verdicts = {}
for steps in (20, 50):
    interval, verdict = paired(eta_feats[1.0, steps], eta_feats[0.0, steps], "eta = 1", "eta = 0")
    eta_verdicts[steps] = interval
    print(f"at {steps} steps, FID(eta = 1) - FID(eta = 0) = {interval}: {verdict}")
interval, verdict = paired(eta_feats[1.0, 50], eta_feats[1.0, 20], "eta = 1 at 50 steps", "eta = 1 at 20 steps")
print(f"FID(eta = 1, 50 steps) - FID(eta = 1, 20 steps) = {interval}: {verdict}")
for steps, one in eta_verdicts.items():
    paper = ("agrees with" if one.estimate > 0 else "is the opposite of") if one.excludes_zero else "cannot confirm or contradict"
    print(f"so at {steps} steps this model {paper} Song, Meng & Ermon's Table 1 (eta = 0 best for fully trained models)")

fig, ax = plt.subplots(figsize=(6, 3.5))
for k, eta in enumerate((0.0, 1.0)):
    ax.bar([i + 0.4 * k for i in range(2)], [r["fid"] for r in eta_rows if r["eta"] == eta], width=0.4, label=f"eta = {eta:g}")
ax.axhline(q.floor.fid, color="gray", ls="--", label="real-data floor")
ax.set_xticks([0.2, 1.2], ["20 steps", "50 steps"])
ax.set_ylim(top=1.3 * max(r["fid"] for r in eta_rows))  # room for the legend
ax.legend(ncol=3)
ax.set(xlabel="DDIM steps", ylabel=f"FID ({q.features}), lower is better", title=f"DDIM: FID against eta [{profile.name} profile]");

# %% [markdown]
# What $\eta$ does to the images: the same eight starting noises at each value, $S$ steps, and
# the same fresh noise for both stochastic rows.

# %%
x_T = torch.randn(8, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(7)).to(device)
fig, axes = plt.subplots(3, 1, figsize=(11, 5.4))
for ax, eta in zip(axes, (0.0, 0.5, 1.0)):
    show_grid(sample(model, d, x_T, DDIM(S, eta), cpu_generator(8), progress=False).cpu(), f"eta = {eta:g}", nrow=8, ax=ax)
fig.suptitle(f"DDIM-{S} from the same noise at three values of eta [{profile.name} profile]", y=1.0)
fig.tight_layout()

# %% [markdown]
# The last two lines printed under the table are the verdicts on $\eta$ for this model, computed
# from the paired intervals, and stated against Song, Meng & Ermon whichever way they go. Whatever it says, a
# deterministic sampler keeps what makes DDIM useful in the rest of this notebook (the same noise
# decodes to the same image, and paths between noises decode to paths between images), so the
# sections below stay at $\eta = 0$, and so does notebook 06, which compares two sets of weights.
# The FIDs of the evaluator's own sampler in notebooks 07 and 08 (and those `python -m helpers
# train` logs) are another matter: they use the profile's `ddim_eta`
# (printed below): $\eta = 1$ under smoke and laptop, chosen on this kind of comparison at 2,000
# samples over several training runs (`docs/laptop-recipe.md`, section 9); $\eta = 0$ under gpu
# and full, after Song, Meng & Ermon's Table 1:

# %%
print(f"the {profile.name} profile's evaluator samples DDIM-{profile.sample.ddim_steps} at eta = {profile.sample.ddim_eta:g}")

# %% [markdown]
# ## The same noise, the same image
#
# At $\eta = 0$ DDIM is a deterministic map from $x_T$ to $x_0$, and it discretises one ODE, so it
# should be close to the same map whatever the number of steps: $x_T$ then behaves like a latent
# code. Each row below decodes the same eight noises; the number is the mean absolute pixel
# difference to the row with the most steps, and the printed line sets the largest of them against
# the difference between two different noises.

# %%
step_counts = [s for s in (5, 10, 20, 50, 100) if s <= d.T]
x_T = torch.randn(8, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(3)).to(device)
decoded = {s: sample(model, d, x_T, DDIM(s), progress=False).cpu() for s in step_counts}
reference = decoded[step_counts[-1]]
other = sample(model, d, x_T.shape, DDIM(step_counts[-1]), cpu_generator(4), progress=False).cpu()
fig, axes = plt.subplots(len(step_counts), 1, figsize=(11, 1.8 * len(step_counts)))
for ax, s in zip(axes, step_counts):
    show_grid(decoded[s], f"{s} steps: mean |difference| to {step_counts[-1]} steps = {(decoded[s] - reference).abs().mean():.3f}", nrow=8, ax=ax)
fig.suptitle(f"DDIM (eta = 0) decodes the same noise to the same image [{profile.name} profile]", y=1.01)
fig.tight_layout()
control = (other - reference).abs().mean().item()
largest = max((decoded[s] - reference).abs().mean().item() for s in step_counts)
print(f"for scale: two different noises at {step_counts[-1]} steps differ by {control:.3f} on average; "
      f"the largest gap above, at {step_counts[0]} steps, is {largest / control:.0%} of that")
if profile.name != "smoke":  # an untrained model need not hold it
    assert largest < 0.5 * control, "the step count changed the images as much as a different noise does"

# %% [markdown]
# ## Leading or trailing at few steps
#
# With 10 steps the grids differ in where they start. Leading starts at $t = T - T/S$, so its
# first step treats pure noise as if it were the less noisy $x_{T - T/S}$; trailing starts at
# $T-1$ (and so does linspace, which is therefore left out here). Lin et al. (2024, "Common
# diffusion noise schedules and sample steps are flawed") recommend trailing for this reason, and
# it is the default everywhere else in this course. How much the mistake costs depends on how much
# signal $x_{T - T/S}$ still carries, $\sqrt{\bar\alpha_{T-T/S}}$ (printed below): where that is close
# to 0, pure noise is a fair stand-in and the start costs little. The two grids also differ at
# every later step, though: with $T = 1000$ and 10 steps, leading visits $t = 900, 800, \dots, 0$
# and trailing $t = 999, 899, \dots, 99$, so a difference between them need not come from the
# start alone. What this model shows, paired (the trailing samples are the 10-step row of the
# sweep above, from the same noise):

# %%
evaluator.steps, evaluator.spacing = 10, "leading"
imgs, _ = evaluator.images(model)
spacing_rows = {"trailing": (step_quality[10], first_eight, step_feats[10]),
                "leading": (evaluator.score(imgs), imgs[:8], extract_both(features, imgs)[0])}
fig, axes = plt.subplots(2, 1, figsize=(11, 3.8))
for ax, (spacing, (q, imgs, _)) in zip(axes, spacing_rows.items()):
    show_grid(imgs, f"{spacing}: starts at t = {ddim_timesteps(d.T, evaluator.steps, spacing)[0]}, FID {q.fid:.3f}", nrow=8, ax=ax)
    print(f"{spacing:<9} {evaluator.steps} steps: {q}")
fig.suptitle(f"DDIM with {evaluator.steps} steps on two grids [{profile.name} profile]", y=1.02)
fig.tight_layout()
start = ddim_timesteps(d.T, evaluator.steps, "leading")[0]
print(f"leading starts at t = {start}, where x_t keeps sqrt(alpha_bar) = {d.alpha_bars[start].sqrt().item():.3f} of the image "
      f"against {(1 - d.alpha_bars[start]).sqrt().item():.3f} of noise ({d.schedule} schedule, T = {d.T})")
interval, verdict = paired(spacing_rows["leading"][2], spacing_rows["trailing"][2], "leading", "trailing")
print(f"FID(leading) - FID(trailing) at {evaluator.steps} steps = {interval}: {verdict}")
evaluator.spacing, evaluator.steps = "trailing", profile.sample.ddim_steps

# %% [markdown]
# ## Walking between two noises
#
# Because DDIM at $\eta = 0$ is a smooth map, a path between two noises decodes to a path between
# two images. The path must stay where Gaussian noise lives, near the sphere of radius
# $\sqrt{\dim}$; a straight line between two independent noises dips to $\sqrt{1/2}$ of it in the
# middle. Spherical interpolation (slerp) keeps the norm. Both paths, decoded from the same two
# noises, with each point's norm in its title:

# %%
from helpers.data import profile_dataset
from helpers.samplers import slerp

z0, z1 = (torch.randn(1, *x_T.shape[1:], generator=cpu_generator(s)) for s in (10, 11))
alphas = torch.linspace(0, 1, 8).tolist()
path = torch.cat([slerp(z0, z1, a) for a in alphas])
mid_line = 0.5 * (z0 + z1)
print(f"norm of the noises {z0.norm():.1f} and {z1.norm():.1f}; slerp midpoint {slerp(z0, z1, 0.5).norm():.1f}; "
      f"straight-line midpoint {mid_line.norm():.1f}")
line = torch.cat([(1 - a) * z0 + a * z1 for a in alphas])
walks = {name: sample(model, d, p.to(device), DDIM(min(50, d.T)), progress=False).cpu() for name, p in (("slerp", path), ("straight line", line))}
fig, axes = plt.subplots(2, len(alphas), figsize=(1.5 * len(alphas), 4.2))
for row, (name, p) in zip(axes, (("slerp", path), ("straight line", line))):
    for ax, img, z, a in zip(row, walks[name], p, alphas):
        show_grid(img[None], f"{name}\n|x_T| = {z.norm():.1f}" if a == 0 else f"|x_T| = {z.norm():.1f}", ax=ax)
fig.suptitle(f"DDIM decoding of two paths between the same two noises [{profile.name} profile]", y=1.02)
contrast = {name: w[len(alphas) // 2 - 1 : len(alphas) // 2 + 1].std().item() for name, w in walks.items()}
print(f"pixel std of the two middle images: slerp {contrast['slerp']:.3f}, straight line {contrast['straight line']:.3f} "
      f"(the straight line's are {'lower' if contrast['straight line'] < contrast['slerp'] else 'higher'}); "
      f"all test images: {profile_dataset(profile, train=False).tensors()[0][:500].std():.3f}")

# %% [markdown]
# ## DDIM inversion: from an image back to its noise
#
# At $\eta = 0$ DDIM takes steps of an ODE (Song, Meng & Ermon 2021, section 4.3), and an ODE can be
# run in either direction. Going up the grid from level $a$ to level $b > a$ is the same update
# with the two levels swapped, $x_b = \sqrt{\bar\alpha_b}\,\hat x_0 + \sqrt{1-\bar\alpha_b}\,\hat\varepsilon$; it needs
# the network at $x_b$, which is not known yet, so it uses the network at $x_a$ (at $t = 0$ for
# the first step, which starts from the image itself). Neither direction clips $\hat x_0$:
# clipping cannot be undone. Encoding eight held-out test images by hand, then with
# `ddim_invert`:

# %%
from helpers.data import profile_dataset
from helpers.samplers import ddim_invert

real = profile_dataset(profile, train=False).tensors()[0][:8]


def invert_by_hand(model, x, steps):
    grid = ddim_timesteps(d.T, steps)[::-1]  # ascending
    for a, b in zip([-1] + grid[:-1], grid):  # level -1 is the image itself
        t = max(a, 0)
        ab, ab_b = d.alpha_bars[t].item(), d.alpha_bars[b].item()
        eps = model(x, torch.full((len(x),), t, device=device))
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        x = ab_b**0.5 * x0 + (1 - ab_b) ** 0.5 * eps
    return x


with torch.no_grad():
    latents = invert_by_hand(model, real.to(device), S)
assert torch.allclose(latents, ddim_invert(model, d, real.to(device), S, progress=False), atol=1e-4)

# %% [markdown]
# Decoding the latents on the same grid returns the images only approximately, because each step
# up used the network one level too early, an error that a finer grid should shrink. The last
# printed line says whether it does for this model:

# %%
rows_inv = []
for s_inv in [s for s in (10, 20, 50, 100, 200) if s <= d.T]:
    latents = ddim_invert(model, d, real.to(device), s_inv, progress=False)
    back = sample(model, d, latents, DDIM(s_inv, clip_x0=False), progress=False).cpu()
    rows_inv.append({"steps": s_inv, "error": (back - real).abs().mean().item(), "latent_std": latents.std().item(), "back": back, "latents": latents.cpu()})
    print(f"{s_inv:>4} steps: mean |x_0 - decoded| = {rows_inv[-1]['error']:.4f}, std of the latents {rows_inv[-1]['latent_std']:.3f}")
print(f"for scale: a test image differs from the next one by {(real - real.roll(1, 0)).abs().mean():.3f} on average")
errors = [r["error"] for r in rows_inv]
print(f"the error {'shrinks' if all(b < a for a, b in zip(errors, errors[1:])) else 'does not shrink'} at every refinement of the grid")
if profile.name != "smoke":  # an untrained model need not hold it
    assert all(b < a for a, b in zip(errors, errors[1:])), errors

fig, (ax, ax_img) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
ax.plot([r["steps"] for r in rows_inv], [r["error"] for r in rows_inv], "o-")
ax.set(xscale="log", yscale="log", xlabel="DDIM steps, each way (log scale)", ylabel="mean |x_0 - decoded| (pixels in [-1, 1])",
       title="reconstruction error after inversion")
last = rows_inv[-1]
show_grid(torch.cat([real, last["latents"].clamp(-3, 3) / 3, last["back"]]),
          f"{last['steps']} steps: test images, their latents (scaled by 1/3), decoded", nrow=8, ax=ax_img)
fig.suptitle(f"DDIM inversion [{profile.name} profile]", y=1.02);

# %% [markdown]
# ## What this notebook leaves
#
# The timing and η tables, in `artifacts/<profile>/figures/05_ddim_steps.json`. Next, **06 · EMA and
# FID** explains the quality numbers used here and compares the raw weights with their average.

# %%
path = profile.artifacts / "figures" / "05_ddim_steps.json"
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({"device": str(device), "features": q.features, "rows": rows, "eta_rows": eta_rows}, indent=2))
print(f"saved {path}")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers`, or runs the experiment you made a prediction for, and prints ✓, what is wrong, or
# "not done yet". The solutions are in `notebooks/solutions/05_ddim.py`.
#
# **1. DDIM is Euler's method.** Write the image in noise-level units, $y = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma\varepsilon$,
# with the noise level $\sigma(t) = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ (`d.sigmas`, see the
# [notation](../docs/notation.md) page). Divide the update of eq. 12 at $\eta = 0$ by $\sqrt{\bar\alpha_{t'}}$
# and express it in $y$, $\sigma(t)$, $\sigma(t')$ and $\hat\varepsilon$: it becomes one step of Euler's method
# for an ODE in $\sigma$. Derive that step, then write the deterministic sampler with it: start from
# $y = x_T/\sqrt{\bar\alpha}$ at the grid's first timestep, call the network on $x_t$ (not on $y$) at each
# timestep, step $y$ to the next timestep's noise level, and to $\sigma = 0$ after the last one,
# where $y = x_0$. No clipping. The check compares your sampler with `DDIM(steps, clip_x0=False)`
# from the same $x_T$, with a stand-in for the network that knows the answer (the exact
# $\mathbb E[\varepsilon \mid x_t]$ of 2-D toy data from `helpers.toy`).

# %%
def ddim_euler(model, d, x_T, timesteps):
    """Deterministic DDIM from x_T over `timesteps` (code indices, descending) as Euler steps in sigma; returns x_0.

    model(x_t, t) -> eps_hat, with t a LongTensor [B]; d: the Diffusion (d.alpha_bars, d.sigmas).
    """
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(ddim_euler)

# %% [markdown]
# **2. Predict, then run: what 10 steps do to the spread.** Take data $x_0 \sim \mathcal N(0, \kappa^2)$,
# one number per sample, with $\kappa = 0.5$, and in place of the network its exact
# $\mathbb E[\varepsilon \mid x_t]$, so that every error comes from the sampler. The check draws 20,000
# samples with 10-step DDIM, unclipped, at $\eta = 0$ and at $\eta = 1$, from the same $x_T$. Predict
# (a) whether at $\eta = 0$ the samples' standard deviation comes out narrower than $\kappa$ ($-1$),
# the same within 3% ($0$) or wider ($+1$), and (b) which $\eta$, 0 or 1, comes closer to $\kappa$. A
# hint for (a): along the exact ODE, $y$ grows with $\sigma$ like $\sqrt{\kappa^2 + \sigma^2}$, and Euler
# follows the tangent. The solution file explains the answer.

# %%
def predict_ddim_spread():
    """(eta = 0 at 10 steps: -1 narrower than the data, 0 the same within 3%, +1 wider; the closer eta: 0 or 1)."""
    raise NotImplementedError  # your prediction here


# %%
check(predict_ddim_spread)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
