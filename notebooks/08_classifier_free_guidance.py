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
# # 08 · Class conditioning and classifier-free guidance
#
# So far the model draws whatever it likes. Here it learns $p(x \mid y)$ for a class label $y$,
# and, with **classifier-free guidance** (Ho & Salimans 2022), trades diversity for samples that
# look more like their class, with one knob: the guidance scale $s$. This notebook derives the
# guidance formula, trains a conditional model with label dropout, and measures the trade.
#
# It needs `02_unet_config.json` from notebook 02 and `03_ddpm_eps.pt` from notebook 03.

# %%
import json

import matplotlib.pyplot as plt
import torch

from helpers.checkpoints import load_model
from helpers.config import setup
from helpers.data import profile_dataset
from helpers.unet import UNet

device, profile = setup(seed=0)
data = profile_dataset(profile)
classes = data.classes
model_config = json.loads(profile.require("unet_config").read_text())
print(f"{len(classes)} classes: {', '.join(classes)}")

# %% [markdown]
# ## From Bayes' rule to the guidance formula
#
# Bayes' rule, $p(x \mid y) \propto p(y \mid x)\,p(x)$, in scores (gradients of log-densities) reads
#
# $$\nabla_x \log p(x \mid y) = \nabla_x \log p(x) + \nabla_x \log p(y \mid x).$$
#
# Sharpening the class term by a factor $s$ targets $p(x)\,p(y \mid x)^s$, images that are more
# unmistakably of class $y$. The class term need not come from a separate classifier: it is the
# difference of a conditional and an unconditional score,
# $\nabla_x \log p(y \mid x) = \nabla_x \log p(x \mid y) - \nabla_x \log p(x)$. A diffusion
# model's noise prediction is a scaled score, $\varepsilon_\theta(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p(x_t)$,
# so the guided prediction is
#
# $$\tilde\varepsilon = \varepsilon_\theta(x_t, \varnothing) + s\,\big(\varepsilon_\theta(x_t, y) - \varepsilon_\theta(x_t, \varnothing)\big).$$
#
# $s = 1$ is the plain conditional model, $s = 0$ the unconditional one, $s > 1$ guidance. The
# same line applies to an $x_0$- or $v$-output, since both are affine in $\varepsilon$ at a given
# $x_t$. One network gives both terms: the "no label" $\varnothing$ is just one more class id.

# %% [markdown]
# ## Label dropout
#
# To learn $\varepsilon_\theta(x_t, \varnothing)$ alongside $\varepsilon_\theta(x_t, y)$, training
# replaces each label by the null id (here 10) with probability $p_\text{uncond} = 0.1$. The class
# embedding is added to the timestep embedding inside the U-Net. By hand, on one batch:

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
y = torch.arange(20) % 10
drop = torch.rand(20, generator=g) < 0.1
print("labels:      ", y.tolist())
print("after drop:  ", torch.where(drop, torch.full_like(y, 10), y).tolist())

# %% [markdown]
# `Trainer` does this to every batch of a model built with `num_classes`. To see the rate it
# really applies, give it a stand-in model that only records the labels it is called with, and
# run one epoch of this profile's batches through `train_step`:

# %%
from torch import nn

from helpers.training import TrainConfig, Trainer


class LabelRecorder(nn.Module):
    """Outputs x_t times a weight (so there is something to train) and keeps every label it sees."""

    num_classes = len(classes)

    def __init__(self):
        super().__init__()
        self.weight, self.seen = nn.Parameter(torch.zeros(())), []

    def forward(self, x, t, y):
        self.seen.append(y.cpu())
        return x * self.weight


recorder = LabelRecorder()
epoch = len(data) // profile.train.batch_size
torch.manual_seed(0)
Trainer(recorder, profile.diffusion(), data, TrainConfig.from_profile(profile, steps=epoch, ema_decay=None, sample_every=0, eval_every=0),
        "cpu", progress=False).train()
seen = torch.cat(recorder.seen)
p, n = profile.train.p_uncond, len(seen)
rate, sd = (seen == len(classes)).float().mean().item(), (p * (1 - p) / n) ** 0.5
print(f"one epoch, {n} labels: {rate:.2%} replaced by the null id; expected {p:.0%} ± {3 * sd:.2%} (3 binomial standard deviations)")
assert abs(rate - p) < 3 * sd

# %% [markdown]
# The conditional model does not start from scratch. It starts from the (EMA) weights of notebook
# 03's unconditional model, with the class embedding at zero: at step 0 it ignores its labels
# and *is* that model, which already draws every class. Training then only has to learn what
# each label adds, so half of notebook 03's steps suffice.

# %% tags=["nbval-ignore-output"]
from helpers.viz import LiveLossPlot

ckpt_path = profile.checkpoint("cfg")
unconditional, d, _ = load_model(profile.require("eps"), "cpu")  # EMA weights
conditional = UNet(**{**model_config, "num_classes": len(classes)})
missing, unexpected = conditional.load_state_dict(unconditional.state_dict(), strict=False)
assert missing == ["class_emb.weight"] and not unexpected
torch.nn.init.zeros_(conditional.class_emb.weight)  # labels add nothing yet: the unconditional model

torch.manual_seed(0)
config = TrainConfig.from_profile(profile, steps=profile.train.steps // 2, p_uncond=0.1, eval_every=0)
trainer = Trainer(conditional, d, data, config, device, out_dir=profile.artifacts / "logs" / "08_cfg")
if ckpt_path.exists():
    trainer.load(ckpt_path)
    print(f"continuing {ckpt_path} from step {trainer.step}")
trainer.train(callback=LiveLossPlot(f"conditional training loss [{profile.name}]"), save_to=ckpt_path, save_every=1000, profile=profile.name)
model, d, ckpt = load_model(ckpt_path, device)  # with the averaged (EMA) weights, as notebook 06 advises
print(f"step {ckpt['step']}: saved {ckpt_path}; num_classes = {model.num_classes}, p_uncond = {ckpt['train']['p_uncond']}")

# %% [markdown]
# ## One row per class
#
# `Guided(model, labels, s)` wraps the conditional model as a model $(x_t, t) \mapsto \tilde\varepsilon$,
# so any sampler can call it; it runs the conditional and unconditional passes as one batch of
# twice the size. The formula by hand, against it:

# %%
from helpers.device import cpu_generator
from helpers.samplers import DDIM, Guided, sample
from helpers.viz import grid_image

x, t = torch.randn(4, profile.channels, profile.image_size, profile.image_size, device=device), torch.full((4,), d.T // 2, device=device)
y = torch.arange(4, device=device)
with torch.no_grad():
    eps_cond, eps_uncond = model(x, t, y), model(x, t, torch.full_like(y, model.num_classes))
    assert torch.allclose(Guided(model, y, 3.0)(x, t), eps_uncond + 3.0 * (eps_cond - eps_uncond), atol=1e-4)

# %% [markdown]
# Each row asks for one class, from the same noises across rows:

# %%

per_row = 8
steps = profile.sample.ddim_steps
shape = (per_row, profile.channels, profile.image_size, profile.image_size)
x_T = torch.randn(shape, generator=cpu_generator(5)).repeat(len(classes), 1, 1, 1).to(device)
labels = torch.arange(len(classes)).repeat_interleave(per_row)


def class_grid(scale: float) -> torch.Tensor:
    return sample(Guided(model, labels, scale), d, x_T, DDIM(steps), progress=False).cpu()


fig, ax = plt.subplots(figsize=(6.5, 8))
ax.imshow(grid_image(class_grid(3.0), nrow=per_row), cmap="gray")
ax.set_yticks([(i + 0.5) * (profile.image_size + 1) for i in range(len(classes))], classes)
ax.set_xticks([])
ax.set(title=f"guidance scale 3, DDIM-{steps} [{profile.name} profile]", xlabel="the same 8 noises in every row", ylabel="class asked for");

# %% [markdown]
# ## The guidance-scale slider
#
# Drag $s$ from 0 (unconditional: the rows ignore their labels) through 1 (plain conditional)
# to 7.5 (strong guidance). Each value is sampled once and then cached.

# %% tags=["nbval-ignore-output"]
from ipywidgets import SelectionSlider

from helpers.viz import GridSweepView, slider_widget

scales = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
view = GridSweepView(class_grid, nrow=per_row, title=lambda s: f"guidance scale s = {s} [{profile.name} profile]")
slider_widget(view.render, SelectionSlider(options=scales, value=1.0, description="s"))

# %% [markdown]
# ## Quality against diversity
#
# For four scales, $s \in \{0, 1, 3, 7.5\}$: `fid_samples` images each, labels cycling through
# the classes, the same noise for every $s$. Three numbers: the accuracy of the dataset classifier on the samples (does a sample
# of class $k$ look like class $k$?), FID/KID against real images, and the diversity within a
# class (pixel variance across the samples of one class, averaged over classes).

# %% tags=["nbval-ignore-output"]
from helpers.classifier import classifier_scores, load_or_train_classifier
from helpers.evaluation import Evaluator, pixel_diversity
from helpers.metrics import get_features

classifier, info = load_or_train_classifier(profile, device)
features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, d, features)

# %%
rows = []
sweep = [0.0, 1.0, 3.0, 7.5]  # each scale other than 0 and 1 costs two network calls per step
for s in sweep:
    images, y = evaluator.images(model, guidance_scale=s)
    q = evaluator.score(images)
    acc = classifier_scores(classifier, images, y)
    diversity = sum(pixel_diversity(images[y == k]) for k in range(len(classes))) / len(classes)
    rows.append({"s": s, "accuracy": acc["accuracy"], "confidence": acc["confidence"], "fid": q.fid, "kid": q.kid, "diversity": diversity})
lines = [f"{q.n_fake} samples per scale (DDIM-{evaluator.steps}), {q.features} features vs {q.n_real} real images, KID subsets of "
         f"{q.kid_subset_size}; classifier test accuracy on real images {info['test_accuracy']:.1%}",
         f"{'s':>4} {'accuracy':>9} {'confidence':>11} {'FID':>8} {'KID':>8} {'diversity':>10}"]
lines += [f"{r['s']:>4} {r['accuracy']:>9.1%} {r['confidence']:>11.3f} {r['fid']:>8.3f} {r['kid']:>8.4f} {r['diversity']:>10.4f}" for r in rows]
lines.append(f"real-data floor at these counts: {evaluator.floor}")
print("\n".join(lines))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
panels = (("accuracy", "does a sample look like its class?", "classifier accuracy"),
          ("fid", f"FID, {q.features} features", "FID (lower is better)"),
          ("diversity", "diversity within a class", "mean within-class pixel variance"))
for ax, (key, title, ylabel) in zip(axes, panels):
    ax.plot(sweep, [r[key] for r in rows], "o-")
    if key == "fid":
        ax.axhline(evaluator.floor.fid, color="gray", ls="--", label="real-data floor")
        ax.legend()
    ax.set(title=title, xlabel="guidance scale s", ylabel=ylabel)
fig.suptitle(f"classifier-free guidance: quality against diversity [{profile.name} profile]");

# %% [markdown]
# What guidance is for shows in the first and last panels: as $s$ grows, samples should become
# more recognisable to the classifier and less varied within their class. FID rewards both
# fidelity and coverage of the data; on ImageNet, Ho & Salimans (2022) found it best with a
# little guidance and worse again with a lot, while a weak model (like the smoke profile's) can
# gain from guidance all the way. The table is this run's measurement; the lines below read it.

# %%
best_fid = min(rows, key=lambda r: r["fid"])
print(f"accuracy at s = 0: {rows[0]['accuracy']:.1%}; at s = {rows[-1]['s']}: {rows[-1]['accuracy']:.1%}")
print(f"within-class diversity at s = 1: {rows[1]['diversity']:.4f}; at s = {rows[-1]['s']}: {rows[-1]['diversity']:.4f}")
print(f"lowest FID at s = {best_fid['s']}")

# %% [markdown]
# ## What this notebook leaves
#
# `artifacts/<profile>/checkpoints/08_cfg.pt`: the class-conditional model (its checkpoint
# records `num_classes` and `p_uncond`). From the command line:
#
# ```
# python -m helpers sample --checkpoint artifacts/<profile>/checkpoints/08_cfg.pt --class-id 4 --guidance-scale 3 --out coats.png
# ```
#
# Class ids are the positions in the list printed at the top (4 is "Coat" in Fashion-MNIST, "deer"
# in CIFAR-10).
#
# That completes the course: from noising images (01) to steering a generator by class (08).

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/08_classifier_free_guidance.py`.
#
# **1. Label dropout.** Replace each label by `null_id` with probability `p_uncond`, drawing
# from `generator`; keep the others as they are.

# %%
def drop_labels(y, p_uncond, null_id, generator):
    """y [B] integer class ids -> the same with about a p_uncond share replaced by null_id."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(drop_labels)

# %% [markdown]
# **2. The other convention.** Ho & Salimans (2022, eq. 6) write guidance as
# $(1+w)\,\varepsilon_\theta(x_t, y) - w\,\varepsilon_\theta(x_t, \varnothing)$. Write it; the check
# compares it with `Guided` at $s = 1 + w$. (So their $w = 0$ is our $s = 1$, no guidance.)

# %%
def guidance_w_form(eps_cond, eps_uncond, w):
    """The guided prediction in Ho & Salimans' convention, guidance weight w."""
    raise NotImplementedError  # your code here


# %%
check(guidance_w_form)
