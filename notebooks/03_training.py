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
# # 03 · Training
#
# We train the U-Net of notebook 02 to predict the noise in $x_t$. This notebook derives the
# objective, checks a ten-line version against `helpers.training`, trains under the current
# profile with a live loss plot, looks at the loss by timestep and at samples during training,
# shows that a stopped run resumes exactly, and saves the checkpoint that notebooks 04–06 load.
#
# It needs `02_unet_config.json` from notebook 02.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from helpers.config import setup
from helpers.data import profile_dataset
from helpers.unet import UNet

device, profile = setup(seed=0)
model_config = json.loads(profile.require("unet_config").read_text())
data = profile_dataset(profile)
d = profile.diffusion()
print(f"{len(data)} training images; {d}")

# %% [markdown]
# ## From the ELBO to "predict the noise"
#
# The reverse model $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$ is
# trained by the variational bound on $-\log p_\theta(x_0)$. Its terms at $t > 1$ are KL
# divergences to the posterior of the forward process, $q(x_{t-1} \mid x_t, x_0) =
# \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ (notebook 04 derives it). Between Gaussians with the
# same variance the KL is a squared distance of means (DDPM eq. 8):
#
# $$L_{t-1} = \frac{1}{2\sigma_t^2}\,\big\|\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\big\|^2 + C.$$
#
# Writing $x_0$ through the noise, $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon\big)$,
# and giving $\mu_\theta$ the same form with a predicted $\varepsilon_\theta$ turns the distance
# into one between noises (eq. 12):
#
# $$L_{t-1} = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t(1-\bar\alpha_t)}\,\big\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\big\|^2.$$
#
# DDPM drops the weight and draws $t$ uniformly: the **simple loss** (eq. 14), which samples better,
#
# $$L_\text{simple} = \mathbb E_{x_0,\ t \sim U\{0..T-1\},\ \varepsilon \sim \mathcal N(0, I)}\ \big\|\varepsilon - \varepsilon_\theta(x_t, t)\big\|^2.$$
#
# A profile may weight the timesteps differently. The laptop recipe multiplies each image's loss
# by $w(t) = \min(\mathrm{SNR}(t), 5)/\mathrm{SNR}(t)$ (min-SNR-5, Hang et al. 2023), which
# gives the nearly clean timesteps less say and trained a better model in the same minutes
# (`docs/laptop-recipe.md`); notebook 07 derives it. `profile.diffusion()` builds the process
# with the profile's weighting; the check below is the unweighted loss.

# %%
def simple_loss(model, x0, t, eps):
    ab = d.alpha_bars[t].float().view(-1, 1, 1, 1).to(x0.device)  # tables stay float64 on the CPU
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((model(x_t, t.to(x0.device)) - eps) ** 2).mean()


from helpers.diffusion import Diffusion

plain = Diffusion.from_schedule(profile.schedule, profile.T)  # w(t) = 1
torch.manual_seed(0)
probe = UNet(**model_config).to(device)
torch.nn.init.normal_(probe.out[-1].weight, std=0.1)  # an untrained model outputs zeros; make it say something
x0 = data.tensors()[0][:16].to(device)
t = torch.randint(0, d.T, (16,))
eps = torch.randn_like(x0)
assert torch.allclose(simple_loss(probe, x0, t, eps), plain.loss(probe, x0, t=t, noise=eps), rtol=1e-5)

# %% [markdown]
# ## One training step, by hand
#
# A step of training is: draw $t$ and $\varepsilon$, the weighted loss, backward, clip the
# gradient's norm to 1, an Adam step at the warmed-up learning rate
# $\text{lr}\cdot\min(1, (k+1)/\text{warm-up})$ at step $k$, then the EMA of the weights with its
# own warm-up, decay $\min(\text{decay}, (1+k)/(10+k))$ (notebook 06). Five steps written out and five
# steps of `Trainer.train_step`, from the same weights, batch and random draws (both in float32:
# the check turns off the mixed precision that the Trainer would use on a GPU):

# %%
import copy

from helpers.training import TrainConfig, Trainer

step_config = TrainConfig.from_profile(profile, eval_every=0, sample_every=0, amp=False, compile=False)  # fp32 on any device
batch = data.tensors()[0][: step_config.batch_size].to(device)
torch.manual_seed(0)
net = UNet(**model_config).to(device)
reference = Trainer(copy.deepcopy(net), d, data, step_config, device, progress=False)
start = [p.detach().clone() for p in net.parameters()]
averaged = copy.deepcopy(net)
adam = torch.optim.Adam(net.parameters(), lr=step_config.lr)

torch.manual_seed(1)
for k in range(5):
    t = torch.randint(0, d.T, (len(batch),), device=device)
    eps = torch.randn_like(batch)
    per_image = ((net(d.q_sample(batch, t, eps), t) - eps) ** 2).flatten(1).mean(1)
    adam.zero_grad()
    (d.loss_weight(t) * per_image).mean().backward()  # w(t) = 1 for the plain loss
    torch.nn.utils.clip_grad_norm_(net.parameters(), step_config.grad_clip)
    adam.param_groups[0]["lr"] = step_config.lr * min(1.0, (k + 1) / step_config.warmup_steps)
    adam.step()
    with torch.no_grad():
        for a, p in zip(averaged.parameters(), net.parameters()):
            a.lerp_(p, 1 - min(step_config.ema_decay, (1 + k) / (10 + k)))

torch.manual_seed(1)
for _ in range(5):
    reference.train_step(batch, None)


def largest_gap(mine, theirs, start):
    """max |mine - theirs| relative to how far the weights moved from start."""
    gap = max((a - b).abs().max().item() for a, b in zip(mine, theirs))
    moved = max((b - s).abs().max().item() for b, s in zip(theirs, start))
    return gap / moved


weights_gap = largest_gap(list(net.parameters()), list(reference.model.parameters()), start)
ema_gap = largest_gap(list(averaged.parameters()), [reference.ema.shadow[n] for n, _ in net.named_parameters()], start)
print(f"after 5 steps, by hand vs Trainer: weights differ by {weights_gap:.1e}, EMA weights by {ema_gap:.1e} "
      "of how far the weights moved")
assert weights_gap < 1e-3 and ema_gap < 1e-3

# %% [markdown]
# ## Train
#
# `Trainer` runs exactly that loss with Adam, a linear learning-rate warm-up, gradient clipping
# at norm 1 (DDPM's settings), mixed precision on GPUs that have it (bf16, or fp16 with a gradient
# scaler on older ones), a tqdm bar with loss and images per second,
# a metrics log (`metrics.jsonl`), the loss by timestep bucket, and a sample grid every
# `sample_every` steps. It also keeps an exponential moving average (EMA) of the weights, which
# samples better than the last weights; notebook 06 explains it. It writes its checkpoint as it
# goes: if one from an earlier run exists, training continues from it (delete the file to start
# over). The command line `python -m helpers train --profile <name>` runs the same recipe
# outside Jupyter; `docs/laptop-recipe.md` shows how the laptop one was chosen.

# %% tags=["nbval-ignore-output"]
from helpers.training import TrainConfig, Trainer
from helpers.viz import LiveLossPlot

ckpt_path = profile.checkpoint("eps")
log_dir = profile.artifacts / "logs" / "03_ddpm_eps"
config = TrainConfig.from_profile(profile, eval_every=0)  # FID during training is notebook 06's
torch.manual_seed(0)
trainer = Trainer(UNet(**model_config), d, data, config, device, out_dir=log_dir)
if ckpt_path.exists():
    trainer.load(ckpt_path)
    print(f"continuing {ckpt_path} from step {trainer.step}")
trainer.train(callback=LiveLossPlot(f"training loss [{profile.name}]"), save_to=ckpt_path, save_every=1000, profile=profile.name)
print(f"step {trainer.step}: saved {ckpt_path}")

# %% [markdown]
# ## The loss curve
#
# Each point is the mean loss over one logging window (`log_every` steps); the smoothed line is
# the geometric mean (the mean of the log-loss, the scale it is drawn on) of the nine windows
# centred on each point, which follows the curve without lagging behind it (near the ends the
# window shrinks, keeping it centred). At initialisation the model outputs zero, so the loss starts
# at $\mathbb E_t[w(t)]\;\mathbb E\|\varepsilon\|^2 / \dim = \mathbb E_t[w(t)]$: 1 for the plain loss, less
# with min-SNR weighting (printed). The first point averages the first `log_every` steps, by
# the end of which the loss has already fallen.

# %%
from helpers.viz import plot_bucket_losses, plot_loss_curve

first, last = trainer.history[0], trainer.history[-1]
print(f"E_t[w(t)] = {d.loss_weight(torch.arange(d.T)).mean():.3f} ({d.loss_weighting} weighting)")
print(f"loss {first['loss']:.3f} at step {first['step']} -> {last['loss']:.3f} at step {last['step']}; "
      f"{last['img_per_s']:.0f} images/s at the end on {device.type}")
plot_loss_curve(trainer.history, title=f"training loss, {profile.name} profile");

# %% [markdown]
# ## Loss by timestep
#
# The average hides a strong dependence on $t$. Bucketing each image's loss by its timestep
# (ten buckets of $T/10$ steps, averaged over the last quarter of training) shows where the noise
# is hard to see: at small $t$ the image is barely noised and the little noise there is must be
# told apart from texture; at large $t$, $x_t$ is nearly $\varepsilon$ itself.

# %%
buckets = trainer.log.bucket_losses(since=trainer.step * 3 // 4)
print("bucket:  " + "  ".join(f"{i * d.T // 10:>4}+" for i in range(10)))
print("loss:    " + "  ".join(f"{v:5.3f}" for v in buckets))
plot_bucket_losses(buckets, d.T, title=f"training loss by timestep bucket, {profile.name} profile");

# %% [markdown]
# ## Samples during training
#
# Every `sample_every` steps the trainer draws the same noises (`grid_size` of them)
# through a short DDIM run (notebook 05), so the grids differ only by training. At most six are
# shown, spread over the run. Under the smoke profile they stay blurry
# blobs: a few hundred steps of a tiny model is a test run, not a generator. Under the laptop
# profile the first grid, after 400 steps, already shows shoes, trousers, tops and bags with
# ragged textures, and the later ones sharpen them.

# %%
grids = sorted((log_dir / "grids").glob("step_*.png"))
grids = [grids[round(i)] for i in torch.linspace(0, len(grids) - 1, min(6, len(grids))).tolist()]
fig, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 2.6), squeeze=False)
for ax, path in zip(axes[0], grids):
    ax.imshow(plt.imread(path), cmap="gray")
    ax.set_title(f"step {int(path.stem.split('_')[1])}")
    ax.set_axis_off()
fig.suptitle(f"samples from fixed noise during training [{profile.name} profile]", y=1.05);

# %% [markdown]
# ## Resuming is exact
#
# A checkpoint holds the weights, the optimiser's moments, the learning-rate schedule, the step,
# the log and every random generator's state, and the data order is a function of the step. So
# $2k$ steps straight and $k$ steps, save, load into fresh objects, $k$ steps give the same
# model. On the CPU the weights are bit-identical; on a GPU, non-deterministic kernels (cuDNN's
# convolution backward) make them agree to float precision only.

# %%
def fresh(seed):
    torch.manual_seed(seed)
    cfg = TrainConfig.from_profile(profile, ema_decay=None, eval_every=0, sample_every=0, log_every=1)
    return Trainer(UNet(**model_config), d, data, cfg, device, progress=False)


k = 5
straight = fresh(1).train(2 * k)
with tempfile.TemporaryDirectory() as tmp:
    fresh(1).train(k).save(Path(tmp) / "half.pt")
    resumed = fresh(2)  # different initial weights: everything must come from the file
    resumed.load(Path(tmp) / "half.pt")
    resumed.train(2 * k)  # steps is the total: k more
diff = max((a - b).abs().max().item() for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()))
print(f"largest weight difference after {2 * k} steps straight vs {k} + resume + {k}: {diff:.3g}")
print("same losses at every step:", [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history])
if device.type == "cpu":
    assert diff == 0

# %% [markdown]
# ## What this notebook leaves
#
# `artifacts/<profile>/checkpoints/03_ddpm_eps.pt`: the eps-prediction model with its optimiser,
# log and RNG states. Next, **04 · DDPM sampling** turns it into images.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/03_training.py`.
#
# **1. The min-SNR weight.** Write $w(t) = \min(\mathrm{SNR}(t), \gamma)\,/\,\mathrm{SNR}(t)$, the
# weight min-SNR-$\gamma$ puts on the ε loss, from the table $\bar\alpha$ and a tensor of timesteps.

# %%
def min_snr_weight(alpha_bars, t, gamma):
    """w(t) for the eps loss; alpha_bars: float64 [T], t: integer tensor [B]. Returns float32 [B]."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(min_snr_weight)

# %% [markdown]
# **2. The loss before training.** The untrained model outputs zeros. What training loss does
# it have under min-SNR-$\gamma$ weighting, averaged over $t$ and $\varepsilon$? Return one number;
# the check measures it with `Diffusion.loss`.

# %%
def initial_loss(alpha_bars, gamma):
    """E_{t, eps} of the min-SNR-weighted eps loss of a model that always outputs 0."""
    raise NotImplementedError  # your code here


# %%
check(initial_loss)
