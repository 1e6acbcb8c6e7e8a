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
# # 07 · What to predict: $\varepsilon$, $x_0$ or $v$
#
# Notebook 03 trained the network to output the noise $\varepsilon$. It could as well output the
# clean image $x_0$, or the "velocity" $v$ of Salimans & Ho (2022). All three determine each
# other given $x_t$, so they describe the same model; they differ in how errors scale across
# timesteps, which changes what training optimises. This notebook defines $v$, shows why
# $\varepsilon$-prediction is fragile at high noise, shows that the three losses are one objective
# up to a weight per timestep, and trains all three (and min-SNR weighting) on the same budget,
# compared on their EMA weights with paired intervals. Symbols as in the
# [notation](../docs/notation.md) page; timesteps printed or plotted are code indices.
#
# It needs `02_unet_config.json` from notebook 02 and `03_ddpm_eps.pt` from notebook 03.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from helpers.config import setup
from helpers.diffusion import Diffusion

notebook_start = time.perf_counter()
device, profile = setup(seed=0)

# %% [markdown]
# ## $v$ is a rotation
#
# Write $\sqrt{\bar\alpha_t} = \cos\phi_t$ and $\sqrt{1-\bar\alpha_t} = \sin\phi_t$. Then
# $x_t = \cos\phi\,x_0 + \sin\phi\,\varepsilon$ is a point on a circle in the plane spanned by
# $x_0$ and $\varepsilon$ (drawn here as unit vectors: in many dimensions an image and independent
# noise are nearly orthogonal), turning from $x_0$ ($\phi = 0$) to $\varepsilon$ ($\phi = \pi/2$)
# as $t$ grows. Its velocity along the circle is
#
# $$v = \frac{dx_t}{d\phi} = \cos\phi\,\varepsilon - \sin\phi\,x_0 = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0 .$$
#
# $(x_t, v)$ is $(x_0, \varepsilon)$ rotated by $\phi$, so rotating back converts:
#
# $$x_0 = \cos\phi\,x_t - \sin\phi\,v,\qquad \varepsilon = \sin\phi\,x_t + \cos\phi\,v .$$
#
# The angle is one more coordinate of the noise axis (the notation page's table): $\mathrm{SNR} =
# \bar\alpha/(1-\bar\alpha) = \cot^2\phi$, the noise level of notebooks 09–11 is $\sigma =
# \sqrt{(1-\bar\alpha)/\bar\alpha} = \tan\phi$, and $\lambda = -\log\sigma = -\log\tan\phi =
# \tfrac12\log\mathrm{SNR}$. SNR = 1 is $\phi = \pi/4$, where image and noise weigh the same.

# %%
phi = 0.9  # the angle at one timestep
arc = torch.linspace(0, math.pi / 2, 60)
fig, ax = plt.subplots(figsize=(4.6, 4.6))
ax.plot(torch.cos(arc), torch.sin(arc), "k:", lw=1, label=r"$x_t$ for $\phi$ from 0 to $\pi/2$")
arrow = dict(arrowstyle="->", lw=1.5)
ax.annotate("", (1, 0), (0, 0), arrowprops={**arrow, "color": "gray"})
ax.annotate("", (0, 1), (0, 0), arrowprops={**arrow, "color": "gray"})
ax.text(1.02, -0.04, "$x_0$", color="gray")
ax.text(-0.08, 1.02, r"$\varepsilon$", color="gray")
xt = (math.cos(phi), math.sin(phi))
ax.annotate("", xt, (0, 0), arrowprops={**arrow, "color": "C0"})
ax.text(xt[0] * 0.5 + 0.03, xt[1] * 0.5 - 0.08, r"$x_t = \cos\phi\,x_0 + \sin\phi\,\varepsilon$", color="C0")
v_end = (xt[0] - 0.45 * math.sin(phi), xt[1] + 0.45 * math.cos(phi))
ax.annotate("", v_end, xt, arrowprops={**arrow, "color": "C3"})
ax.text(v_end[0] - 0.05, v_end[1] + 0.03, r"$v = \cos\phi\,\varepsilon - \sin\phi\,x_0$", color="C3")
ax.text(0.12, 0.04, r"$\phi$")
ax.set(title="$x_t$ turns from $x_0$ to $\\varepsilon$; $v$ is its velocity", xlabel="component along $x_0$",
       ylabel=r"component along $\varepsilon$", xlim=(-0.1, 1.25), ylim=(-0.1, 1.25), aspect="equal")
ax.legend(loc="center left", fontsize=8);

# %% [markdown]
# The conversions by hand against `Diffusion.target` / `predict_x0` / `predict_eps` on real-sized
# tensors; $v$ as the derivative of $x_t$ along the angle, by a central difference in $\phi$; and
# the angle against the schedule's SNR, $\sigma$ and $\lambda$ tables:

# %%
d_v = Diffusion.from_schedule("cosine", 1000, prediction="v")
g = torch.Generator().manual_seed(0)
x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
eps = torch.randn(4, 1, 8, 8, generator=g)
t = torch.tensor([0, 300, 700, 999])
cos, sin = d_v.sqrt_alpha_bars[t].float().view(-1, 1, 1, 1), d_v.sqrt_one_minus_alpha_bars[t].float().view(-1, 1, 1, 1)
x_t = cos * x0 + sin * eps
v = cos * eps - sin * x0
assert torch.allclose(d_v.target(x0, t, eps), v, atol=1e-6)
assert torch.allclose(d_v.predict_x0(x_t, t, v), cos * x_t - sin * v, atol=1e-6) and torch.allclose(cos * x_t - sin * v, x0, atol=1e-5)
assert torch.allclose(d_v.predict_eps(x_t, t, v), sin * x_t + cos * v, atol=1e-6) and torch.allclose(sin * x_t + cos * v, eps, atol=1e-5)

phi_t = torch.arccos(d_v.sqrt_alpha_bars[t]).view(-1, 1, 1, 1)  # float64
x_at = lambda angle: torch.cos(angle) * x0.double() + torch.sin(angle) * eps.double()  # noqa: E731
h = 1e-4
assert torch.allclose((x_at(phi_t + h) - x_at(phi_t - h)) / (2 * h), v.double(), atol=1e-5)  # v = dx_t / dphi

phi_all = torch.arccos(d_v.sqrt_alpha_bars)
assert torch.allclose(1 / torch.tan(phi_all) ** 2, d_v.snr, rtol=1e-6)  # SNR = cot^2 phi
assert torch.allclose(torch.tan(phi_all), d_v.sigmas, rtol=1e-6)  # sigma = tan phi
assert torch.allclose(-torch.log(torch.tan(phi_all)), -d_v.log_sigmas, rtol=1e-6, atol=1e-9)  # lambda = -log tan phi
print(f"{'t':>4} {'phi':>7} {'SNR':>10} {'sigma':>9} {'lambda':>8}   (cosine schedule, T = 1000)")
for i in (0, 250, 500, 750, 999):
    print(f"{i:>4} {phi_all[i]:7.4f} {d_v.snr[i]:10.4g} {d_v.sigmas[i]:9.4g} {-d_v.log_sigmas[i]:8.3f}")

# %% [markdown]
# ## Why $\varepsilon$-prediction struggles at high noise
#
# An $\varepsilon$-model's image estimate is $\hat x_0 = (x_t - \sin\phi\,\hat\varepsilon)/\cos\phi$,
# so an error $\delta$ in $\hat\varepsilon$ becomes an error $\tan\phi\,\delta = \delta/\sqrt{\mathrm{SNR}}$
# in $\hat x_0$: harmless at small $t$, without bound as $\bar\alpha_t \to 0$. A $v$-model's estimate
# $\hat x_0 = \cos\phi\,x_t - \sin\phi\,\hat v$ turns $\delta$ into $\sin\phi\,\delta \le \delta$
# at every $t$; an $x_0$-model's error is its own.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("linear", "cosine"):
    d = Diffusion.from_schedule(name, 1000)
    ax.plot(1 / d.snr.sqrt(), label=fr"$\varepsilon$-prediction, {name} schedule")
ax.plot(Diffusion.from_schedule("cosine", 1000).sqrt_one_minus_alpha_bars, label="v-prediction, cosine schedule")
ax.set(yscale="log", title=r"how an output error reaches $\hat x_0$", xlabel="timestep t (code index)", ylabel=r"$|\partial \hat x_0 / \partial\,\mathrm{output}|$")
ax.legend();

# %% [markdown]
# The same thing in the $\varepsilon$-model of notebook 03 (linear schedule): its $\hat x_0$ from
# noisy versions of a grey image, $x_0 = 0$, at the last step (almost pure noise) and half-way.
# The true answer is grey at both; values far outside $[-1, 1]$ at the last step are the
# amplified error (sampling hides it by clipping).

# %%
from helpers.checkpoints import load_model
from helpers.viz import show_grid

eps_model, d_eps, _ = load_model(profile.require("eps"), device)
noise = torch.randn(8, profile.channels, profile.image_size, profile.image_size, generator=torch.Generator().manual_seed(1)).to(device)
fig, axes = plt.subplots(2, 1, figsize=(11, 3.8))
outside = {}
with torch.no_grad():
    for ax, step in zip(axes, (d_eps.T // 2, d_eps.T - 1)):
        tt = torch.full((8,), step)
        x_t = d_eps.q_sample(torch.zeros_like(noise), tt, noise)  # a noisy version of a grey image
        x0_hat = d_eps.predict_x0(x_t, tt, eps_model(x_t, tt.to(device)))
        outside[step] = (x0_hat.abs() > 1).float().mean().item()
        print(f"t = {step} (1/sqrt(SNR) = {1 / d_eps.snr[step].sqrt():.3g}): implied x0 has std {x0_hat.std():.2f}, {outside[step]:.0%} of pixels outside [-1, 1]")
        show_grid(x0_hat.cpu(), f"implied $\\hat x_0$ at t = {step}", nrow=8, ax=ax)
fig.suptitle(f"the eps-model's x0 estimates from the same noise [{profile.name} profile]", y=1.02)
fig.tight_layout()
if profile.name != "smoke":
    assert outside[d_eps.T - 1] > outside[d_eps.T // 2]

# %% [markdown]
# ## One objective, three weightings
#
# For a guess $\hat x_0$ and the $\hat\varepsilon$, $\hat v$ it implies at $x_t$, the three squared
# errors are proportional:
#
# $$\|\hat\varepsilon - \varepsilon\|^2 = \mathrm{SNR}(t)\,\|\hat x_0 - x_0\|^2,\qquad \|\hat v - v\|^2 = (\mathrm{SNR}(t)+1)\,\|\hat x_0 - x_0\|^2 .$$
#
# So training on a target is training $c(t)\,\|\hat x_0 - x_0\|^2$ with a weight $c$ that the
# target picks: SNR for $\varepsilon$, $\mathrm{SNR}+1$ for $v$, 1 for $x_0$. The $\varepsilon$
# loss puts enormous weight on small $t$ (the table above: SNR at $t = 0$). **Min-SNR-$\gamma$** weighting (Hang
# et al. 2023) caps it: $c = \min(\mathrm{SNR}, \gamma)$, $\gamma = 5$, which means a weight
# $\min(\mathrm{SNR},\gamma)/\mathrm{SNR}$ on the $\varepsilon$ loss,
# $\min(\mathrm{SNR},\gamma)/(\mathrm{SNR}+1)$ on the $v$ loss and $\min(\mathrm{SNR},\gamma)$ on the
# $x_0$ loss. Checked on one guess:

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(2)
x0 = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
eps = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
x0_hat = x0 + 0.1 * torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
t = torch.tensor([1, 100, 300, 500, 800, 999])
d = Diffusion.from_schedule("cosine", 1000)
x_t = d.q_sample(x0, t, eps)
eps_hat = d.eps_from_x0(x_t, t, x0_hat)
a, s = d.sqrt_alpha_bars[t].view(-1, 1, 1, 1), d.sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1)
mse = lambda p, q: ((p - q) ** 2).flatten(1).mean(1)  # noqa: E731
errors = {"eps": mse(eps_hat, eps), "x0": mse(x0_hat, x0), "v": mse(a * eps_hat - s * x0_hat, a * eps - s * x0)}
for prediction, err in errors.items():
    w = Diffusion.from_schedule("cosine", 1000, prediction=prediction, loss_weighting="min_snr").loss_weight(t).double()
    print(f"{prediction:>3}: min-SNR-weighted loss per timestep", [f"{v:.5f}" for v in (w * err).tolist()])

# %% [markdown]
# **A weighting is not a sampling of $t$.** Min-SNR changes the objective: how much each
# timestep's error counts, and so which model training converges to. Notebook 03's recipe also
# changes which $t$ a batch sees (`timesteps="importance"`): it draws $t$ with probability
# $p(t) \propto \sqrt{\mathbb E[L_t^2]}$ and multiplies each image's loss by $1/(T\,p(t))$. The
# expectation of that product is the uniform average over $t$, the same objective; only the noise
# of each step's estimate of it falls (Nichol & Dhariwal 2021, §3.3; the cell below checks the
# expectation on a made-up loss table). The recipe uses both: min-SNR-5 chooses what to learn,
# importance sampling spends the batch where that loss is large and noisy. The runs below take
# importance-sampled $t$ and the learning-rate decay from the profile and set the weighting per
# run (printed).

# %%
from helpers.device import cpu_generator
from helpers.timesteps import ImportanceTimesteps

loss_table = (torch.linspace(0.1, 2.0, 1000) ** 2).flip(0)  # any per-timestep loss L_t, large at small t
draws = ImportanceTimesteps(1000)
gen = cpu_generator(0)
for _ in range(50):  # feed it losses until its p(t) settles
    t_draw, _ = draws.sample(1024, gen)
    draws.update(t_draw, loss_table[t_draw])
t_draw, weight = draws.sample(200_000, gen)
importance = weight * loss_table[t_draw]  # L_t / (T p(t)) under p
uniform = loss_table[torch.randint(0, 1000, (200_000,), generator=gen)]
print(f"average of L_t: {loss_table.mean():.4f} exactly; estimated from uniform t {uniform.mean():.4f}, "
      f"from importance-sampled t with its weights {importance.mean():.4f}; "
      f"spread of one draw {uniform.std():.3f} against {importance.std():.3f}")
assert abs(importance.mean() / loss_table.mean() - 1) < 0.01 and importance.std() < uniform.std()
#
# ## Three targets, one budget
#
# Train an $\varepsilon$-, an $x_0$- and a $v$-model from the same initial weights on the same data
# for the same number of steps, all on the cosine schedule, then a $v$-model with min-SNR-5
# weighting. So that every model is measured the same way, each run keeps an EMA of its weights
# with warm-up (the profile's decay), and every model is measured on its average. In a run this short the warm-up rule $(1+n)/(10+n)$ sets the
# decay throughout (printed below), so the average spans the last few dozen steps, not the
# whole run and its random start. Two
# comparisons: the error of $\hat x_0$ by timestep on held-out images (the one quantity all
# three predict), and FID/KID of DDIM samples at the profile's $\eta$ (printed), all from the same noise, so that the FIDs are
# compared paired (`fid_interval`, as in notebooks 05 and 06).

# %% tags=["nbval-ignore-output"]
import json

from helpers.data import profile_dataset
from helpers.training import TrainConfig, Trainer
from helpers.unet import UNet

model_config = json.loads(profile.require("unet_config").read_text())
data = profile_dataset(profile)
runs = {"eps": ("eps", "none"), "x0": ("x0", "none"), "v": ("v", "none"), "v + min-SNR-5": ("v", "min_snr")}
trainers = {}
for name, (prediction, weighting) in runs.items():
    d = Diffusion.from_schedule("cosine", profile.T, prediction=prediction, loss_weighting=weighting)
    torch.manual_seed(0)
    config = TrainConfig.from_profile(profile, steps=profile.compare_steps, eval_every=0, sample_every=0)  # the profile's EMA decay, with warm-up
    run_start = time.perf_counter()
    trainers[name] = Trainer(UNet(**model_config), d, data, config, device, progress=False).train()
    print(f"{name}: {config.steps} steps (t {config.timesteps}, weighting {weighting}, learning rate decay {config.lr_decay}) "
          f"in {time.perf_counter() - run_start:.0f} s")

# %% tags=["nbval-ignore-output"]
from helpers.evaluation import Evaluator, x0_error_by_timestep
from helpers.metrics import extract_both, fid_interval, get_features

features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, trainers["eps"].diffusion, features, steps=min(20, profile.sample.ddim_steps))
test_images = profile_dataset(profile, train=False).tensors()[0][:256]
probe_t = [int((i + 0.5) * profile.T / 10) for i in range(10)]
scores, feats, errors = {}, {}, {}
for name, trainer in trainers.items():
    with trainer.ema.averaged(trainer.model):
        errors[name] = x0_error_by_timestep(trainer.model, trainer.diffusion, test_images, probe_t)
        evaluator.d = trainer.diffusion
        images = evaluator.images(trainer.model)[0]  # the same noise for every model
    scores[name], feats[name] = evaluator.score(images), extract_both(features, images)[0]
replicates = 200  # each resample costs two FIDs; 200 keep the three intervals within a minute on a 2-core CPU
pairs = [("x0", "eps"), ("v", "eps"), ("v + min-SNR-5", "v")]  # two targets against eps; min-SNR alone
intervals = {(a, b): fid_interval(evaluator.real, feats[a], feats[b], replicates=replicates) for a, b in pairs}

# %%
fig, (ax_loss, ax_x0) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
since = profile.compare_steps * 3 // 4
logged = [row["step"] for row in trainers["eps"].history if "loss" in row and row["step"] > since]
for name, trainer in trainers.items():
    ax_loss.plot(probe_t, trainer.log.bucket_losses(since=since), "o-", label=name)
    ax_x0.plot(probe_t, errors[name], "o-", label=name)
ax_loss.set(yscale="log", title="training loss by timestep, raw weights\n(each target's own units; min-SNR run weighted)",
            xlabel="timestep t (bucket centre, code index)", ylabel=f"loss, log rows of steps {logged[0]}..{logged[-1]}")
ax_x0.set(yscale="log", title="error of $\\hat x_0$ on held-out images, EMA weights\n(comparable across the four models)",
          xlabel="timestep t (code index)", ylabel=r"mean squared error of $\hat x_0$")
ax_loss.legend()
ax_x0.legend()
trainer = trainers["eps"]
fig.suptitle(f"four models, {trainer.step} training steps each, cosine schedule [{profile.name} profile]")

q = scores["eps"]
print(f"EMA weights (warm-up decay after {trainer.ema.num_updates} updates: {trainer.ema.current_decay():.4f}); "
      f"{q.n_fake} DDIM-{evaluator.steps} samples (eta = {evaluator.eta:g}) each from the same noise vs {q.n_real} real images, {q.features} features, KID subsets of {q.kid_subset_size}")
print(f"real-data floor at these counts: {q.floor}")
print(f"{'model':<14} {'FID':>8} {'KID':>8}   x0 error at t = {probe_t[0]}, {probe_t[4]}, {probe_t[-1]}")
for name in trainers:
    e = errors[name]
    print(f"{name:<14} {scores[name].fid:>8.3f} {scores[name].kid:>8.4f}   {e[0]:.4f}, {e[4]:.4f}, {e[-1]:.4f}")
for (a, b), interval in intervals.items():
    verdict = "no difference detected" if not interval.excludes_zero else f"{a if interval.estimate < 0 else b} is better"
    print(f"FID({a}) - FID({b}) = {interval}: {verdict}")
print("ranked by FID, lowest first (one training run each): " + ", ".join(sorted(scores, key=lambda name: scores[name].fid)))
for label, i in (("smallest", 0), ("largest", -1)):
    ranked = sorted(errors, key=lambda name: errors[name][i])
    best = errors[ranked[0]][i]
    print(f"x0 error at the {label} t probed ({probe_t[i]}): lowest {ranked[0]}, highest {ranked[-1]}; "
          f"v at {errors['v'][i] / best:.2f}x the lowest")
if profile.name != "smoke":  # the two predictions of the analysis above
    assert max(errors, key=lambda name: errors[name][-1]) == "eps" and max(errors, key=lambda name: errors[name][0]) == "x0"

# %% [markdown]
# Reading the two panels: the training losses live on different scales (the $\varepsilon$ loss
# is the $x_0$ error times SNR), which is why only the right panel compares the models. Where a
# curve sits lower there, that model recovers images better at that noise level. The analysis
# above predicts the $\varepsilon$-model's error to be the largest at the largest $t$, where it
# is multiplied by $1/\sqrt{\mathrm{SNR}}$, and the $x_0$-model's to be the largest at small $t$,
# where it must redraw an almost clean image instead of removing a little noise: the last two
# lines above say which models were highest at each end (both asserted under the laptop
# profile), and how close $v$ came to the best there.
#
# The FID lines give the verdict on the samples, each a paired difference with its 95%
# interval; "no difference detected" means this budget and sample count cannot order the two.
# The last pair changes only the weighting, so it isolates min-SNR-5 from the choice of target.
# These are models after a few hundred steps, one training run each: the intervals cover the
# noise of sampling 500 images, not the spread from one training run to the next, so the ranking
# printed above says which objective learned faster in these runs, not which ends better after a
# full run. The $\hat x_0$ errors are means over the same 256 held-out images, without an interval:
# read only their large ratios.

# %% [markdown]
# ## What this notebook leaves
#
# `artifacts/<profile>/checkpoints/07_v.pt`: the $v$-prediction model trained with min-SNR-5
# weighting on the cosine schedule, with its EMA weights (`load_model` uses them by default). Its checkpoint records the prediction type, so loading it as
# an $\varepsilon$-model is an error rather than noise. Next, **08 · classifier-free guidance**.

# %%
from helpers.checkpoints import CheckpointError, load_checkpoint

path = trainers["v + min-SNR-5"].save(profile.checkpoint("v"), profile=profile.name)
try:
    load_checkpoint(path, prediction="eps")
except CheckpointError as err:
    print("loading it as an eps model:", err)
print(f"saved {path}")
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function and prints ✓, what
# is wrong, or "not done yet". The solutions are in `notebooks/solutions/07_v_prediction.py`.
#
# **1. The $v$ loss.** Write the training loss of the min-SNR-$\gamma$ $v$-model, one number per
# image: noise the images to $x_t$, ask the model for $\hat v$, and weight the mean squared error
# against the true $v$ so that it equals $\min(\mathrm{SNR}, \gamma)\,\|\hat x_0 - x_0\|^2$ (mean over
# pixels). The check compares it with `Diffusion.loss` on two schedules and two values of $\gamma$.

# %%
def v_loss(model, alpha_bars, x0, t, eps, gamma):
    """Per-image min-SNR-gamma loss of a v-model: model(x_t, t) -> v_hat; alpha_bars[t] is alpha_bar at code index t."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(v_loss)

# %% [markdown]
# **2. A DDIM step in angles.** Deterministic DDIM ($\eta = 0$) from $x_t$ to $x_{t'}$ ($t' < t$) is
# $x_{t'} = \cos\phi_{t'}\,\hat x_0 + \sin\phi_{t'}\,\hat\varepsilon$. Put in $\hat x_0$ and $\hat\varepsilon$ from
# $(x_t, \hat v)$ and simplify until neither appears: the step becomes one short expression in
# $x_t$, $\hat v$ and the angles. Write the step that way (without clipping $\hat x_0$). The check
# compares it with `helpers.samplers.ddim_step` of a $v$-model, down to $\bar\alpha_{t'} = 1$.

# %%
def ddim_step_from_v(x_t, v_hat, alpha_bar_t, alpha_bar_prev):
    """x_{t'} of deterministic DDIM from x_t, given the model's v_hat, at alpha_bar_t and alpha_bar_{t'} = alpha_bar_prev (floats)."""
    raise NotImplementedError  # your code here


# %%
check(ddim_step_from_v)
