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
# # 06 · EMA of the weights, and FID
#
# Two tools that every diffusion paper uses. An **exponential moving average** of the weights
# smooths out the noise of stochastic gradient steps; DDPM samples from it (decay 0.9999).
# **FID** and **KID** turn "the samples look better" into a number. This notebook builds both,
# continues training the model of notebook 03 with EMA switched on, and scores raw against
# averaged weights as training goes.
#
# It needs `03_ddpm_eps.pt` from notebook 03.

# %%
import matplotlib.pyplot as plt
import torch

from helpers.config import setup

device, profile = setup(seed=0)
source = profile.require("eps")

# %% [markdown]
# ## EMA on a toy
#
# After every optimiser step the shadow copy $\bar\theta$ moves a fraction $1-d$ towards the
# current weights:
#
# $$\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta,$$
#
# an average over roughly the last $1/(1-d)$ steps. Started at the initial weights, it needs
# many of those steps to forget them, so common practice grows the decay with the update count
# $n$: $d_n = \min\big(d, \frac{1+n}{10+n}\big)$ (warm-up). Below, a noisy parameter that drifts
# towards 1, and three averages of it.

# %%
from torch import nn

from helpers.ema import EMA

gen = torch.Generator().manual_seed(0)
steps = torch.arange(1500)
theta = 1 - torch.exp(-steps / 150) + 0.25 * torch.randn(1500, generator=gen)


def ema_by_hand(values, decay, warmup):
    shadow, out = values[0].item(), []
    for n, v in enumerate(values):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        shadow = d * shadow + (1 - d) * v.item()
        out.append(shadow)
    return out


def ema_tested(values, decay, warmup):
    param = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        param.weight.fill_(values[0].item())
    ema, out = EMA(param, decay, warmup), []
    for v in values:
        with torch.no_grad():
            param.weight.fill_(v.item())
        ema.update(param)
        out.append(ema.shadow["weight"].item())
    return out


assert torch.allclose(torch.tensor(ema_by_hand(theta, 0.99, True)), torch.tensor(ema_tested(theta, 0.99, True)), atol=1e-5)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(steps, theta, lw=0.6, alpha=0.5, label=r"raw $\theta$")
ax.plot(steps, ema_by_hand(theta, 0.9, False), label="EMA d = 0.9")
ax.plot(steps, ema_by_hand(theta, 0.99, False), label="EMA d = 0.99, no warm-up")
ax.plot(steps, ema_by_hand(theta, 0.99, True), label="EMA d = 0.99, warm-up")
ax.set(title="an exponential moving average of a noisy parameter", xlabel="optimiser step", ylabel="parameter value")
ax.legend()
gap = (torch.tensor(ema_by_hand(theta, 0.99, True)) - torch.tensor(ema_by_hand(theta, 0.99, False))).abs()
print(f"the two d = 0.99 averages stay within 0.01 of each other from step {int((gap >= 0.01).nonzero().max()) + 1} on")

# %% [markdown]
# The larger decay is smoother but lags; without warm-up it also starts pinned to the first
# value and takes hundreds of steps to catch up. Warm-up follows the early drift; its decay
# $(1+n)/(10+n)$ reaches 0.99 only after 890 updates, but the two 0.99 averages meet earlier,
# once the pinned start has decayed away (printed above).

# %% [markdown]
# ## FID: a distance between two Gaussians
#
# FID (Heusel et al. 2017) embeds real and generated images with a fixed network, fits a Gaussian
# to each cloud of features, and reports the squared Fréchet (2-Wasserstein) distance between them:
#
# $$\mathrm{FID} = \|\mu_r - \mu_g\|^2 + \mathrm{Tr}\big(\Sigma_r + \Sigma_g - 2\,(\Sigma_r\Sigma_g)^{1/2}\big).$$
#
# The first term sees shifted features, the second a wrong spread. KID (Bińkowski et al. 2018)
# is a kernel two-sample statistic on the same features, the unbiased MMD² with kernel
# $k(a, b) = (a^\top b / \dim + 1)^3$, averaged over random subsets; unlike FID it has no bias at
# small sample sizes, so it is 0 in expectation for two samples of the same distribution.
# A 2-D toy, by hand and through `helpers.metrics.fid_kid` (which calls torchmetrics):

# %%
from helpers.metrics import fid_kid

g = torch.Generator().manual_seed(1)
real2d = torch.randn(2000, 2, generator=g, dtype=torch.float64) @ torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
fake2d = 0.7 * torch.randn(2000, 2, generator=g, dtype=torch.float64) + torch.tensor([0.8, -0.3], dtype=torch.float64)


def fid_by_hand(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    sqrt_trace = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()  # Tr (S_a S_b)^(1/2)
    return ((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * sqrt_trace


def kid_by_hand(a, b):
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / dim + 1)^3, on all of a and b."""
    k = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    k_aa, k_bb = k(a, a), k(b, b)
    within = (k_aa.sum() - k_aa.trace()) / (m * (m - 1)) + (k_bb.sum() - k_bb.trace()) / (n * (n - 1))  # no i = j pairs
    return within - 2 * k(a, b).mean()


# KID subsets as large as the sets: every subset is the whole set, shuffled, so torchmetrics'
# average over subsets is the statistic on all points
q = fid_kid(real2d, fake2d, "2-D toy", kid_subset_size=len(real2d))
assert abs(fid_by_hand(real2d, fake2d).item() - q.fid) < 1e-6
assert abs(kid_by_hand(real2d, fake2d).item() - q.kid) < 1e-9
print(q)
print("against itself:", fid_kid(real2d, real2d, "2-D toy", kid_subset_size=len(real2d)))

fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(*real2d[:500].T, s=4, alpha=0.5, label="real")
ax.scatter(*fake2d[:500].T, s=4, alpha=0.5, label="generated")
ax.set(title=f"two feature clouds: FID {q.fid:.3f}", xlabel="feature 1", ylabel="feature 2", aspect="equal")
ax.legend();

# %% [markdown]
# ## Which features
#
# The published numbers use Inception-v3's 2048 pool features. `helpers.metrics.get_features`
# uses them whenever their weights can be had (downloaded, in the torch hub cache, or a file
# named by `DIFFUSION_FID_WEIGHTS`), and otherwise the penultimate layer of a small classifier
# trained on the same dataset (cached in `artifacts/<profile>/classifier/`). The smoke and laptop
# profiles always use the classifier. The two scales are not comparable, so every number printed
# below carries its feature type and sample counts.

# %% tags=["nbval-ignore-output"]
from helpers.evaluation import Evaluator
from helpers.metrics import get_features

features = get_features(profile, device)

# %% [markdown]
# ## The floor: real images against real images
#
# FID is biased upwards at small sample counts: even two sets of real images score above zero,
# by an amount that depends on the counts and the features. So every score in this course is
# read against a **floor**: held-out test images (never trained on, never in the reference set)
# scored exactly as a model's samples are, with the same counts, against the same reference
# images of the training split. Several disjoint held-out sets give its spread, the smallest
# difference between two models worth reading.

# %% tags=["nbval-ignore-output"]
from helpers.metrics import heldout_features, real_features

settings = profile.sample
reference = real_features(features, profile)
held_out, _ = heldout_features(features, profile)
sets = min(5, len(held_out) // settings.fid_samples)
floor_scores = [fid_kid(reference, held_out[i * settings.fid_samples : (i + 1) * settings.fid_samples], features.name, settings.kid_subset_size) for i in range(sets)]

# %%
for i, fq in enumerate(floor_scores):
    print(f"held-out set {i + 1}: FID {fq.fid:.3f}, KID {fq.kid:.4f}")
fids = torch.tensor([fq.fid for fq in floor_scores], dtype=torch.float64)
spread = f"± {fids.std():.3f}" if sets > 1 else "(one held-out set: no spread)"
print(f"floor: FID {fids.mean():.3f} {spread}, KID {sum(fq.kid for fq in floor_scores) / sets:.4f} "
      f"({settings.fid_samples} held-out vs {len(reference)} training images, {features.name} features, KID subsets of {settings.kid_subset_size})")

# %% [markdown]
# `helpers.metrics.real_floor` computes the same; the evaluator below carries it, and every FID in
# notebooks 05–08 is printed beside it.
#
# ## Continue training, with EMA on
#
# Load the run of notebook 03 and train on with an EMA of the weights (the profile's decay, with
# warm-up), scoring raw and averaged weights every `eval_every` steps on the same noise. Each
# score samples `fid_samples` images with DDIM.

# %% tags=["nbval-ignore-output"]
from helpers.data import profile_dataset
from helpers.training import TrainConfig, Trainer
from helpers.unet import UNet

ckpt_path = profile.checkpoint("ema")
base = torch.load(source, map_location="cpu", weights_only=True)
from helpers.diffusion import Diffusion

d = Diffusion.from_config(base["diffusion"])
evaluator = Evaluator.for_profile(profile, d, features)
assert abs(evaluator.floor.fid - fids.mean().item()) < 1e-6  # the same floor as computed above
config = TrainConfig.from_profile(profile, steps=base["step"] + profile.compare_steps, eval_every=max(1, profile.compare_steps // 3))
trainer = Trainer(UNet(**base["model_config"]), d, profile_dataset(profile), config, device, out_dir=profile.artifacts / "logs" / "06_ddpm_ema", evaluator=evaluator)
trainer.load(ckpt_path if ckpt_path.exists() else source)
print(f"starting at step {trainer.step} with EMA decay {trainer.ema.decay} (warm-up: {trainer.ema.warmup})")
if not any("fid_raw" in r for r in trainer.history):
    trainer.evaluate()  # the starting point: raw and EMA weights are still the same here
trainer.train(save_to=ckpt_path, save_every=1000, profile=profile.name);

# %%
evals = [r for r in trainer.history if "fid_raw" in r]
fig, (ax_fid, ax_kid) = plt.subplots(1, 2, figsize=(11, 3.6))
for key, ax, label in (("fid", ax_fid, "FID"), ("kid", ax_kid, "KID")):
    for kind in ("raw", "ema"):
        ax.plot([r["step"] for r in evals], [r[f"{key}_{kind}"] for r in evals], "o-", label=f"{kind} weights")
    ax.axhline(evals[-1][f"{key}_floor_raw"], color="gray", ls="--", label="real-data floor")
    ax.set(title=f"{label}: raw against EMA weights [{profile.name} profile]", xlabel="optimiser step", ylabel=f"{label} ({evals[-1]['features_raw']})")
    ax.legend()
last = evals[-1]
print(f"{last['n_fake_raw']} generated vs {last['n_real_raw']} real images each, {last['features_raw']} features, KID subsets of {last['kid_subset_size_raw']}")
print(f"real-data floor at these counts: FID {last['fid_floor_raw']:.3f} ± {last['fid_floor_std_raw']:.3f}, KID {last['kid_floor_raw']:.4f}")
print(f"{'step':>6} {'FID raw':>9} {'FID EMA':>9} {'KID raw':>9} {'KID EMA':>9}")
for r in evals:
    print(f"{r['step']:>6} {r['fid_raw']:>9.3f} {r['fid_ema']:>9.3f} {r['kid_raw']:>9.4f} {r['kid_ema']:>9.4f}")
better = "EMA" if last["fid_ema"] < last["fid_raw"] else "raw"
print(f"at step {last['step']}, the {better} weights have the lower FID")
for kind in ("raw", "ema"):
    jumps = [abs(a[f"fid_{kind}"] - b[f"fid_{kind}"]) for a, b in zip(evals[1:], evals[2:])]
    print(f"mean change of FID between evaluations after the first, {kind} weights: {sum(jumps) / max(len(jumps), 1):.3f}")

# %% [markdown]
# ## The pitfall: EMA samples that look like noise
#
# The U-Net's last layer starts at zero, so a fresh model predicts $\hat\varepsilon = 0$ and its
# samples are the starting noise, rescaled and clipped to $\pm 1$. An average that is still mostly the initial weights
# inherits that. Train a fresh model for a short while, keeping two averages with the same large
# decay: one with warm-up, one without.

# %% tags=["nbval-ignore-output"]
from helpers.device import cpu_generator
from helpers.samplers import DDIM, sample
from helpers.viz import show_grid

short = 50  # the same short run under every profile
torch.manual_seed(0)
fresh = Trainer(UNet(**base["model_config"]), d, profile_dataset(profile),
                TrainConfig.from_profile(profile, ema_decay=0.999, steps=short, log_every=1, sample_every=0, eval_every=0), device)
no_warmup = EMA(fresh.model, decay=0.999, warmup=False)
fresh.train(callback=lambda trainer, row: no_warmup.update(trainer.model))

shape = (profile.train.grid_size, profile.channels, profile.image_size, profile.image_size)
grids = {"raw weights": sample(fresh.model, d, shape, DDIM(profile.sample.ddim_steps), cpu_generator(0), progress=False)}
with fresh.ema.averaged(fresh.model):
    grids["EMA 0.999 with warm-up"] = sample(fresh.model, d, shape, DDIM(profile.sample.ddim_steps), cpu_generator(0), progress=False)
with no_warmup.averaged(fresh.model):
    grids["EMA 0.999, no warm-up"] = sample(fresh.model, d, shape, DDIM(profile.sample.ddim_steps), cpu_generator(0), progress=False)

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
for ax, (name, x) in zip(axes, grids.items()):
    show_grid(x.cpu(), f"{name}\npixel std {x.std():.2f}", ax=ax)
fig.suptitle(f"after {short} steps from scratch [{profile.name} profile]", y=1.06)
print(f"decay reached by warm-up after {fresh.ema.num_updates} updates: {fresh.ema.current_decay():.4f}; without warm-up: 0.999")
print(f"share of the initial weights left in the average without warm-up: 0.999^{short} = {0.999 ** short:.2f}")

# %% [markdown]
# Without warm-up, most of the average is still the zero-output initial model, and its samples
# are close to rescaled noise. With warm-up the average has followed the weights. Over a long run
# both converge; warm-up matters for the early evaluations, and for short runs like these.

# %% [markdown]
# ## What this notebook leaves
#
# `artifacts/<profile>/checkpoints/06_ddpm_ema.pt`: the continued model with its EMA weights
# (`load_model` uses them by default) and the FID/KID log. Next, **07 · v-prediction** changes
# what the network is asked to predict.

# %%
print(f"saved {ckpt_path} at step {trainer.step}")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/06_ema_fid.py`.
#
# **1. One EMA update.** Given the shadow tensors, the current parameters (two lists in the same
# order) and the decay, return the new shadow tensors, $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$.

# %%
def ema_update(shadow, params, decay):
    """The new shadow tensors (a list), without changing the inputs."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(ema_update)

# %% [markdown]
# **2. The half-life of an average.** After how many updates (a real number) does a value the
# average held before have only half its weight left? The check lets an `EMA` track a
# parameter that jumps from 0 to 1 and counts the updates until the average passes 0.5.

# %%
def ema_half_life(decay):
    """Updates until the weight of the old value falls to one half, at this decay (no warm-up)."""
    raise NotImplementedError  # your code here


# %%
check(ema_half_life)
