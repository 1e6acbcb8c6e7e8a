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
# guidance formula, shows by hand how the label enters the U-Net, fine-tunes a conditional model
# with label dropout beside an unconditional control, and measures the trade. Symbols as on the
# [notation](../docs/notation.md) page (here $s$ is always the guidance scale).
#
# It needs `03_ddpm_eps.pt` from notebook 03 (under `laptop`, the shipped model in `pretrained/`
# when 03 has not been run) and leaves `08_cfg.pt` and `08_uncond_control.pt`.

# %%
import copy
import time

import matplotlib.pyplot as plt
import torch

from helpers.checkpoints import load_model, read_checkpoint
from helpers.config import setup
from helpers.data import profile_dataset
from helpers.device import cpu_generator

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
data = profile_dataset(profile)
classes = data.classes
start_path = profile.require("eps")
unconditional, d, start_ckpt = load_model(start_path, device)  # notebook 03's model, EMA weights
print(f"{len(classes)} classes: {', '.join(classes)}")
print(f"starting point: {start_path.name}, {start_ckpt['step']} steps of notebook 03's training")

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
# model's noise prediction is, at its optimum, a scaled score, $\varepsilon_\theta(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p(x_t)$
# (notebook 09 returns to it), so the guided prediction is
#
# $$\tilde\varepsilon = \varepsilon_\theta(x_t, \varnothing) + s\,\big(\varepsilon_\theta(x_t, y) - \varepsilon_\theta(x_t, \varnothing)\big).$$
#
# $s = 1$ is the plain conditional model, $s = 0$ the unconditional one, $s > 1$ guidance
# (Ho & Salimans write $w = s - 1$). The same line applies to an $x_0$- or $v$-output, since both
# are affine in $\varepsilon$ at a given $x_t$ and the two weights sum to 1. One network gives
# both terms: the "no label" $\varnothing$ is just one more class id. One caveat: the guided
# prediction at each noise level is not the noised score of $p(x)\,p(y \mid x)^s$, so a sampler
# run with it does not draw exactly from that target (Chidambaram et al. 2024); exercise 2 lets
# you see what it does instead on a toy whose scores are exact.

# %% [markdown]
# ## Label dropout
#
# To learn $\varepsilon_\theta(x_t, \varnothing)$ alongside $\varepsilon_\theta(x_t, y)$, training
# replaces each label by the null id (the number of classes, here 10) with probability
# $p_\text{uncond}$ (0.1 in every profile of the course). By hand, on one batch:

# %%
# NBVAL_CHECK_OUTPUT
p_uncond, null_id = profile.train.p_uncond, len(classes)
g = torch.Generator().manual_seed(0)
y = torch.arange(20) % len(classes)
drop = torch.rand(20, generator=g) < p_uncond
print("labels:      ", y.tolist())
print("after drop:  ", torch.where(drop, torch.full_like(y, null_id), y).tolist())

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
Trainer(recorder, profile.diffusion(), data, TrainConfig.from_profile(profile, steps=epoch, ema_decay=None, sample_every=0, eval_every=0, compile=False),
        "cpu", progress=False).train()
seen = torch.cat(recorder.seen)
n = len(seen)
rate, sd = (seen == null_id).float().mean().item(), (p_uncond * (1 - p_uncond) / n) ** 0.5
print(f"one epoch, {n} labels: {rate:.2%} replaced by the null id; expected {p_uncond:.0%} ± {3 * sd:.2%} (3 binomial standard deviations)")
assert abs(rate - p_uncond) < 3 * sd

# %% [markdown]
# ## Fine-tuning, beside a control
#
# The conditional model does not start from scratch. It starts from the (EMA) weights of notebook
# 03's unconditional model, with the class embedding at zero: at step 0 it ignores its labels and
# *is* that model (the cell asserts it, for every label and the null id), which already draws
# every class. Training then only has to learn what each label adds. It runs twice the profile's
# `compare_steps` steps (printed) of notebook 03's recipe, but at its peak learning rate held
# constant after a 20-step warm-up: under the profile's own schedule (200 warm-up steps, then a
# decay to zero) a run of 300 steps spends too little of itself at a rate that moves the class
# embedding, and an earlier run of this notebook that way left the labels barely learned.
#
# Whether the model stays as good *without* a label is a question with a confound: fine-tuning
# restarts the optimiser, its warm-up and the weight average from a trained model, which may move
# it whatever the labels do. So the same number of steps of plain unconditional training, from
# the same weights, on the same batches of images, runs beside it as the **control**. The
# evaluation below compares the three: notebook 03's model, the control, and the conditional
# model asked for no label ($s = 0$).

# %% tags=["nbval-ignore-output"]
from helpers.unet import UNet

steps_each = 2 * profile.compare_steps
config = TrainConfig.from_profile(profile, steps=steps_each, lr_decay="none", warmup_steps=20, eval_every=0, sample_every=0)
print(f"{steps_each} steps each at learning rate {config.lr:g} after {config.warmup_steps} warm-up steps, t drawn {config.timesteps}")
conditional = UNet(**{**unconditional.config, "num_classes": len(classes)}).to(device)
missing, unexpected = conditional.load_state_dict(unconditional.state_dict(), strict=False)
assert missing == ["class_emb.weight"] and not unexpected
torch.nn.init.zeros_(conditional.class_emb.weight)  # labels add nothing yet

x = torch.randn(len(classes) + 1, profile.channels, profile.image_size, profile.image_size, generator=cpu_generator(0)).to(device)
t = torch.linspace(0, d.T - 1, len(x)).long().to(device)
every_label = torch.arange(len(classes) + 1, device=device)  # the classes, then the null id
with torch.no_grad():
    assert torch.allclose(conditional.eval()(x, t, every_label), unconditional.eval()(x, t), atol=1e-6), "at step 0 it is notebook 03's model"


def fine_tune(model, path):
    """`steps_each` steps of the profile's recipe from `model`'s weights, saved to `path` (a run of at
    most that length found there is continued); returns the EMA weights, the checkpoint and the minutes."""
    torch.manual_seed(0)
    trainer = Trainer(model, d, data, config, device, progress=False)
    if path.exists() and read_checkpoint(path)["step"] <= steps_each:
        trainer.load(path)
    start = time.perf_counter()
    trainer.train(save_to=path, save_every=1000, profile=profile.name)
    averaged, _, ckpt = load_model(path, device)
    return averaged, ckpt, (time.perf_counter() - start) / 60


ckpt_path = profile.checkpoint("cfg")
control_path = ckpt_path.with_name("08_uncond_control.pt")
model, ckpt, minutes = fine_tune(conditional, ckpt_path)
print(f"conditional: step {ckpt['step']} ({minutes:.1f} minutes in this run), p_uncond = {ckpt['train']['p_uncond']}; saved {ckpt_path.name}")
control, control_ckpt, minutes = fine_tune(copy.deepcopy(unconditional), control_path)
print(f"control, unconditional: step {control_ckpt['step']} ({minutes:.1f} minutes in this run); saved {control_path.name}")
assert ckpt["step"] == control_ckpt["step"] == steps_each

# %% [markdown]
# ## The class embedding's path into the U-Net
#
# Notebook 02 wrote the unconditional U-Net's forward pass by hand; a label changes one line of
# it. The timestep embedding $e_t = \mathrm{MLP}(\mathrm{sinusoid}(t))$ gets the label's row of a
# learned table $E$ with $K + 1$ rows ($K$ classes, and row $K$ for $\varnothing$) added:
#
# $$e = \mathrm{MLP}(\mathrm{sinusoid}(t)) + E_y .$$
#
# Nothing else sees $y$. Every residual block turns $e$ into one shift per channel,
# $W_b\,\mathrm{SiLU}(e)$ (notebook 02's block), so a label acts as a learned per-channel bias on
# the features of every residual block, jointly with the timestep. By hand on the fine-tuned
# model, against the embedding that the library's blocks receive (read with a hook), with labels
# and without (a conditional model called without labels uses the null id):

# %%
from helpers.unet import ResBlock, timestep_embedding


def embedding(model, t, y):
    """e = MLP(sinusoid(t)) + E[y]: the one vector through which the timestep and the label reach the blocks."""
    return model.time_mlp(timestep_embedding(t, model.ch)) + model.class_emb.weight[y]


received = []
blocks = [*model.down, model.mid, *model.up]
hooks = [b.register_forward_pre_hook(lambda block, args: received.append(args[1])) for b in blocks]
try:
    with torch.no_grad():
        model(x, t, every_label)
        assert len(received) == len(blocks) and all(torch.allclose(e, embedding(model, t, every_label), atol=1e-6) for e in received)
        received.clear()
        model(x, t)
        assert all(torch.allclose(e, embedding(model, t, torch.full_like(t, model.num_classes)), atol=1e-6) for e in received)
finally:
    for h in hooks:
        h.remove()

with torch.no_grad():
    rows = model.class_emb.weight.norm(dim=1)
    e_t = model.time_mlp(timestep_embedding(torch.tensor([d.T // 2], device=device), model.ch)).norm()
print(f"e has {model.class_emb.weight.shape[1]} entries; {sum(isinstance(m, ResBlock) for m in model.modules())} residual blocks each add W_b SiLU(e), one value per channel")
print(f"|E_y| of the {len(classes)} classes: {rows[:-1].min():.2f} to {rows[:-1].max():.2f}; of the null row: {rows[-1]:.2f} "
      f"(all 0 at step 0); |MLP(sinusoid(t))| at code t = {d.T // 2}: {e_t:.2f}")
assert rows[-1] > 0, "the null row is trained too, on the dropped labels"

# %% [markdown]
# ## One row per class
#
# `Guided(model, labels, s)` wraps the conditional model as a model $(x_t, t) \mapsto \tilde\varepsilon$,
# so any sampler can call it. For $s$ other than 0 and 1 it runs the conditional and
# unconditional passes as one batch of twice the size; $s = 1$ and $s = 0$ need one pass each.
# The formula by hand, against it:

# %%
from helpers.samplers import DDIM, Guided, sample
from helpers.viz import grid_image

x4, t4 = x[:4], torch.full((4,), d.T // 2, device=device)
y4 = torch.arange(4, device=device)
with torch.no_grad():
    eps_cond, eps_uncond = model(x4, t4, y4), model(x4, t4, torch.full_like(y4, model.num_classes))
    assert torch.allclose(Guided(model, y4, 3.0)(x4, t4), eps_uncond + 3.0 * (eps_cond - eps_uncond), atol=1e-4)

# %% [markdown]
# Each row asks for one class, from the same noises across rows (every sample in this notebook
# uses DDIM with the number of steps in the title, half the profile's, to fit its time budget: the
# grids and the slider at $\eta = 0$, so that the same noise gives the same image at every scale;
# the sweep below (accuracy, FID, diversity) at the profile's $\eta$, printed with it):

# %%
per_row = 8
steps = profile.sample.ddim_steps // 2
shape = (per_row, profile.channels, profile.image_size, profile.image_size)
x_T = torch.randn(shape, generator=cpu_generator(5)).repeat(len(classes), 1, 1, 1).to(device)
labels = torch.arange(len(classes)).repeat_interleave(per_row)


def class_grid(scale: float) -> torch.Tensor:
    return sample(Guided(model, labels, scale), d, x_T, DDIM(steps), progress=False).cpu()


grid3 = class_grid(3.0)
fig, ax = plt.subplots(figsize=(6.5, 8))
ax.imshow(grid_image(grid3, nrow=per_row), cmap="gray")
ax.set_yticks([(i + 0.5) * (profile.image_size + 1) for i in range(len(classes))], classes)
ax.set_xticks([])
ax.set(title=f"guidance scale 3, DDIM-{steps} [{profile.name} profile]", xlabel="the same 8 noises in every row", ylabel="class asked for");

# %% [markdown]
# ## The guidance-scale slider
#
# The slider under the figure runs $s$ from 0 (unconditional: the rows ignore their labels)
# through 1 (plain conditional) to 7.5 (strong guidance); each value is sampled once and then
# cached. A stored notebook keeps no slider, so the figure shows what it shows at every
# position, for the first noise of each row:

# %%
scales = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
first = torch.arange(len(classes)) * per_row  # the first noise of every row of the grid above
strip = {s: sample(Guided(model, labels[first], s), d, x_T[first], DDIM(steps), progress=False).cpu() for s in scales}
assert torch.allclose(strip[3.0], grid3[first], atol=1e-3), "the same images as the first column of the grid above"

fig, ax = plt.subplots(figsize=(10, 7))
ax.imshow(grid_image(torch.cat([strip[s] for s in scales]), nrow=len(classes)), cmap="gray")
ax.set_yticks([(i + 0.5) * (profile.image_size + 1) for i in range(len(scales))], [f"s = {s:g}" for s in scales])
ax.set_xticks([(i + 0.5) * (profile.image_size + 1) for i in range(len(classes))], classes, rotation=40, ha="right")
ax.set(title=f"every slider position, first noise of each class, DDIM-{steps} [{profile.name} profile]",
       xlabel="class asked for", ylabel="guidance scale");

# %% tags=["nbval-ignore-output"]
from ipywidgets import SelectionSlider

from helpers.viz import GridSweepView, slider_widget

view = GridSweepView(class_grid, nrow=per_row, title=lambda s: f"guidance scale s = {s} [{profile.name} profile]")
view.cache[3.0] = grid3  # sampled above
slider_widget(view.render, SelectionSlider(options=scales, value=3.0, description="s"))

# %% [markdown]
# ## Quality against diversity, and the control
#
# For four scales, $s \in \{0, 1, 3, 7.5\}$, and for the two unconditional models (notebook 03's
# and the control): the evaluator's images (the count is printed), labels cycling through the
# classes, the same noise for every row, so that every comparison below is paired. Three
# measurements:
#
# - **accuracy** of the dataset classifier on the samples, against the class asked for (does a
#   sample of class $k$ look like class $k$?). At $s = 0$ the label is ignored, so chance, $1/K$,
#   is what to expect; the unconditional models are asked for nothing and have no accuracy.
# - **FID** against real images (notebook 05 defines it), with the real-data floor. A difference
#   between two rows comes with its paired bootstrap interval (`fid_interval`, as in 05) and the
#   verdict that the interval supports.
# - **diversity within a class**: the pixel variance among the samples that the classifier puts
#   in the same class, averaged over classes, beside the same number of held-out real images.
#   Grouping by the *predicted* class keeps $s = 0$ and the unconditional models comparable: by the
#   label they ignore, their groups would mix all classes.

# %% tags=["nbval-ignore-output"]
from helpers.classifier import classifier_scores, load_or_train_classifier
from helpers.evaluation import Evaluator, pixel_diversity
from helpers.metrics import extract_both, fid_interval, get_features

classifier, info = load_or_train_classifier(profile, device)
classifier.eval()
features = get_features(profile, device)
# half the profile's sampling batch, so that a guided batch (doubled) is the profile's batch
evaluator = Evaluator.for_profile(profile, d, features, steps=steps, batch_size=profile.sample.batch_size // 2)
held_out = profile_dataset(profile, train=False).tensors()[0][: evaluator.n]
replicates = 100 if profile.name == "smoke" else 200  # bootstrap resamples per interval

# %%
@torch.no_grad()
def within_class_diversity(images):
    """Mean, over the classes the classifier assigns two or more of `images` to, of their pixel variance."""
    predicted = torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in images.split(500)])
    groups = [images[predicted == k] for k in range(len(classes))]
    return sum(pixel_diversity(g) for g in groups if len(g) > 1) / sum(len(g) > 1 for g in groups)


def measure(net, s=None):
    """FID, features and diversity of the evaluator's samples of `net` (at guidance scale s, if conditional)."""
    images, y = evaluator.images(net, guidance_scale=s)
    row = {"fid": evaluator.score(images).fid, "feats": extract_both(features, images)[0], "diversity": within_class_diversity(images)}
    if s is not None:
        row.update(classifier_scores(classifier, images, y))
    return row


sweep = [0.0, 1.0, 3.0, 7.5]  # each scale other than 0 and 1 costs two network calls per step
start, ctrl = measure(unconditional), measure(control)
guided = {s: measure(model, s) for s in sweep}
real_diversity = within_class_diversity(held_out)

names = {"notebook 03's model": start, f"control (+{steps_each} unconditional steps)": ctrl} | {f"conditional, s = {s:g}": r for s, r in guided.items()}
lines = [f"{evaluator.n} samples per row (DDIM-{evaluator.steps}, eta = {evaluator.eta:g}), {features.name} features against {len(evaluator.real)} real images; "
         f"classifier test accuracy on real images {info['test_accuracy']:.1%}",
         f"{'':<36} {'accuracy':>9} {'confidence':>11} {'FID':>8} {'diversity':>10}"]
for name, r in names.items():
    asked = f"{r['accuracy']:>9.1%} {r['confidence']:>11.3f}" if "accuracy" in r else f"{'-':>9} {'-':>11}"
    lines.append(f"{name:<36} {asked} {r['fid']:>8.2f} {r['diversity']:>10.4f}")
lines.append(f"held-out real images{'':<16} {'':>9} {'':>11} {'':>8} {real_diversity:>10.4f}")
lines.append(f"real-data floor at these counts: {evaluator.floor}")
print("\n".join(lines))

fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
panels = (("accuracy", "does a sample look like its class?", "classifier accuracy", 1 / len(classes), "chance"),
          ("fid", f"FID, {features.name} features", "FID (lower is better)", evaluator.floor.fid, "real-data floor"),
          ("diversity", "diversity within a (predicted) class", "mean within-class pixel variance", real_diversity, "held-out real images"))
for ax, (key, title, ylabel, reference, reference_name) in zip(axes, panels):
    ax.plot(sweep, [guided[s][key] for s in sweep], "o-", label="conditional model")
    if key != "accuracy":
        ax.axhline(start[key], color="C1", label="notebook 03's model")
        ax.axhline(ctrl[key], color="C2", ls=":", label="control")
    ax.axhline(reference, color="gray", ls="--", label=reference_name)
    ax.legend(fontsize=8)
    ax.set(title=title, xlabel="guidance scale s", ylabel=ylabel)
axes[0].set_ylim(0, 1.02)
fig.suptitle(f"classifier-free guidance: quality against diversity, DDIM-{evaluator.steps} at eta = {evaluator.eta:g} [{profile.name} profile]");

# %% [markdown]
# What guidance is for shows in the first and last panels: as $s$ grows past 1, samples should
# become more recognisable to the classifier and less varied within their class (the diversity
# values are point estimates; between $s = 0$ and $s = 1$, where the labels start to count, they
# need not fall). FID rewards both
# fidelity and coverage of the data; on ImageNet, Ho & Salimans (2022) found it best with a
# little guidance and worse again with a lot. The lines below read this run: the directions, and
# each FID comparison with its paired interval and verdict.
#
# The three comparisons under "the unconditional branch" and the verdict line under them answer
# the control's question. Fine-tuning can move the unconditional
# branch ($s = 0$) for two reasons that the control separates: more training of the same kind
# (control against notebook 03's model) and sharing the network with labels, where $\varnothing$
# is only a $p_\text{uncond}$ share of the examples ($s = 0$ against the control, after the same
# steps).

# %%
def paired(a, b, name_a, name_b):
    """Print FID(a) - FID(b) with its paired bootstrap interval and the verdict; return the interval."""
    interval = fid_interval(evaluator.real, a["feats"], b["feats"], replicates=replicates)
    verdict = f"{name_a if interval.estimate < 0 else name_b} is better" if interval.excludes_zero else "no difference detected"
    print(f"FID({name_a}) - FID({name_b}) = {interval}: {verdict}")
    return interval


def direction(interval, worse, better, same):
    return same if not interval.excludes_zero else worse if interval.estimate > 0 else better


chance = 1 / len(classes)
for s in sweep:  # a binomial 95% interval over the evaluator's samples
    p = guided[s]["accuracy"]
    half = 1.96 * (p * (1 - p) / evaluator.n) ** 0.5
    versus = "above chance" if p - half > chance else "below chance" if p + half < chance else "not distinguishable from chance"
    print(f"accuracy at s = {s:g}: {p:.1%} [{p - half:.1%}, {p + half:.1%}] (chance {chance:.0%}): {versus}")
if profile.name != "smoke":
    p = guided[3.0]["accuracy"]
    assert p - 1.96 * (p * (1 - p) / evaluator.n) ** 0.5 > chance, "the labels have not taken: revise the text"
print(f"within-class diversity at s = 1: {guided[1.0]['diversity']:.4f}; at s = 7.5: {guided[7.5]['diversity']:.4f} "
      f"({'lower' if guided[7.5]['diversity'] < guided[1.0]['diversity'] else 'not lower'}; point estimates, no interval); "
      f"held-out real images {real_diversity:.4f}")
paired(guided[3.0], guided[1.0], "s = 3", "s = 1")
paired(guided[7.5], guided[3.0], "s = 7.5", "s = 3")
print(f"lowest FID point estimate of the sweep at s = {min(sweep, key=lambda s: guided[s]['fid']):g} "
      "(the two intervals above say whether its neighbours differ from it)")
print("the unconditional branch:")
paired(guided[0.0], start, "s = 0", "notebook 03's model")
same_kind = paired(ctrl, start, "control", "notebook 03's model")
sharing = paired(guided[0.0], ctrl, "s = 0", "control")
print(f"verdict: {steps_each} more steps of unconditional training "
      f"{direction(same_kind, 'made the model worse', 'made the model better', 'changed its FID by nothing detectable')}; "
      f"at the same steps, sharing the network with labels "
      f"{direction(sharing, 'made the unconditional branch worse than the control', 'left the unconditional branch better than the control', 'cost the unconditional branch nothing detectable')}")

# %% [markdown]
# ## What this notebook leaves
#
# `artifacts/<profile>/checkpoints/08_cfg.pt`: the class-conditional model (its checkpoint
# records `num_classes` and `p_uncond`), and `08_uncond_control.pt`, the control. From the
# command line:
#
# ```
# python -m helpers sample --checkpoint artifacts/<profile>/checkpoints/08_cfg.pt --class-id 4 --guidance-scale 3 --out coats.png
# ```
#
# Class ids are the positions in the list printed at the top (4 is "Coat" in Fashion-MNIST, "deer"
# in CIFAR-10).
#
# Notebook 09 turns to the continuous-time view of the same models: scores, SDEs and fast ODE
# solvers.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/08_classifier_free_guidance.py`. Both checks run on a toy whose $\varepsilon$
# is exact for every class and for $\varnothing$: the 2-D ring of `helpers.toy` (six Gaussian
# components of standard deviation $\kappa = 0.25$ on a circle of radius 2, the toy of notebooks 09
# and 11), with class $k$ the $k$-th component and $\varnothing$ the whole mixture.
#
# **1. Guided sampling, from a blank cell.** Write classifier-free guided DDIM ($\eta = 0$) from
# `x_T`: at each timestep of the descending list `timesteps` (code indices; after the last one
# comes $\bar\alpha = 1$, that is $x_0$), the guided prediction $\tilde\varepsilon$ from the label
# and from $\varnothing$, then $\hat x_0$ from it and notebook 05's update (its eq. 12 with
# $\sigma_t = 0$), without clipping $\hat x_0$. `model(x_t, t, y)` predicts $\varepsilon$, takes `t`
# as a tensor of one timestep per sample, and has `model.num_classes` (the null id); `d.alpha_bars`
# holds $\bar\alpha$. The check compares your samples with
# `sample(Guided(model, y, s), d, x_T, DDIM(len(timesteps), clip_x0=False), clamp=False)` at several $s$.

# %%
def guided_ddim_sample(model, d, x_T, y, s, timesteps):
    """x_T [B, ...] noise, y [B] class ids, s the guidance scale, timesteps descending code indices
    -> x_0: guided DDIM at eta = 0, x0_hat unclipped."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(guided_ddim_sample)

# %% [markdown]
# **2. Predict, then run: guidance on the ring.** The check draws 400 samples of class 0 (the
# component centred at $(2, 0)$) with guided DDIM from the same noise at $s = 1$ and at $s = 3$. At
# $s = 1$ they are, up to DDIM's error, samples of the component itself. From $s = 1$ to $s = 3$,
# what happens to (a) the spread of the samples around their own mean, and (b) the distance of
# their mean from the ring's centre? Return two numbers, each $+1$ (grows by more than 5%), $-1$
# (shrinks by more than 5%) or $0$ (changes less). Think about the class term
# $\nabla_x \log p(y \mid x)$ at high noise, where the whole ring looks like one blob around the
# origin, and at low noise, near the component. The solutions explain the answer.

# %%
def guidance_on_the_ring():
    """-> (change of the spread, change of the mean's distance from the centre), each -1, 0 or +1, from s = 1 to s = 3."""
    raise NotImplementedError  # your code here


# %%
check(guidance_on_the_ring)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
