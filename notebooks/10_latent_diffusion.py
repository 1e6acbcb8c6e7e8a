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
# # 10 · Latent diffusion
#
# Diffusion does not have to run on pixels. Stable Diffusion's central idea (Rombach et al. 2022)
# is to compress images with an autoencoder into a small **latent** and run the same U-Net, the
# same process and the same samplers there; the decoder maps samples back to pixels. This
# notebook builds and trains a small autoencoder (its blocks and one training step by hand), shows
# why its latents must be rescaled before they are noised, trains notebook 03's recipe on the
# latents for as many steps as the pixel model took, and compares the two: equal steps and equal
# images seen, in a fraction of the pixel model's minutes. Symbols are those of the
# [notation](../docs/notation.md) page.
#
# It needs `03_ddpm_eps.pt` from notebook 03 (under `laptop`, the shipped model in `pretrained/`
# when 03 has not been run) and leaves `10_autoencoder.pt` and `10_latent.pt`.

# %%
import copy
import json
import math
import time

import matplotlib.pyplot as plt
import torch

from helpers.device import sync
from helpers.checkpoints import load_model
from helpers.config import TrainConfig, setup
from helpers.data import profile_dataset
from helpers.device import cpu_generator
from helpers.viz import show_grid

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
pixel_path = profile.require("eps")
pixel_model, d, pixel_ckpt = load_model(pixel_path, device)
data, test = profile_dataset(profile), profile_dataset(profile, train=False)
print(f"pixel model: {pixel_path.name} after {pixel_ckpt['step']} steps; {len(data)} training images; {d}")

# %% [markdown]
# ## The autoencoder
#
# The encoder $\mathcal E$ maps an image $x$ to a diagonal Gaussian $q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma^2(x))$
# over a latent of shape $4 \times h \times h$ (the image padded to a multiple of 8, then halved twice:
# 28 → 32 → 8); the decoder $\mathcal D$ maps a latent back. Training minimises, per image,
#
# $$\mathcal L = \lVert x - \mathcal D(z)\rVert_1 + \beta_{\mathrm{KL}}\,\mathrm{KL}\big(q(z \mid x)\,\Vert\,\mathcal N(0, I)\big),\qquad
# z = \mu + \sigma\odot\varepsilon,\qquad \mathrm{KL} = \tfrac12\textstyle\sum_j\big(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\big),$$
#
# with the sample written through $\varepsilon$ (the reparameterisation trick), so the gradient
# reaches the encoder. Rombach et al. keep $\beta_{\mathrm{KL}}$ tiny ($10^{-6}$) and add perceptual and adversarial
# terms; here the reconstruction term is plain L1. The KL and the sample by hand, against
# `helpers.autoencoder.DiagonalGaussian`:

# %%
from helpers.autoencoder import Autoencoder, DiagonalGaussian

g = cpu_generator(0)
mu, logvar = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
kl_by_hand = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
z_by_hand = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=cpu_generator(1))
q = DiagonalGaussian(mu, logvar)
assert torch.allclose(kl_by_hand, q.kl()) and torch.allclose(z_by_hand, q.sample(cpu_generator(1)))
print("KL and reparameterised sample by hand == helpers.autoencoder.DiagonalGaussian")

ae_config = profile.autoencoder  # an AutoencoderConfig: the network's width and latent channels, and its training
ae = Autoencoder(**ae_config.model_config(profile.image_size, profile.channels)).to(device)
print(f"autoencoder: {sum(p.numel() for p in ae.parameters()):,} parameters; {profile.image_size}x{profile.image_size} images -> latents {ae.latent_shape} "
      f"({profile.channels * profile.image_size**2} numbers -> {math.prod(ae.latent_shape)})")

# %% [markdown]
# ### Its blocks, and one training step, by hand
#
# The encoder pads the image with black to a multiple of 8 and applies a 3×3 conv; then, twice, a
# **residual block** followed by a stride-2 3×3 conv that halves the side; then one more block,
# GroupNorm, SiLU and a 3×3 conv to $2\times$ the latent channels: the mean and the log-variance.
# A block is GroupNorm → SiLU → 3×3 conv, twice, added to its input (through a 1×1 conv when the
# width changes). The decoder mirrors it, with nearest-neighbour upsampling and a 3×3 conv in place
# of each stride-2 conv, and crops the padding away. One block written as functions of its weights,
# and an image walked through the encoder with it, against `Autoencoder.encode`:

# %%
import torch.nn.functional as F


def block_by_hand(block, x):
    """skip(x) + conv(SiLU(GN(conv(SiLU(GN(x)))))); skip is the identity or, when the width changes, a 1x1 conv."""
    norm1, _, conv1, norm2, _, conv2 = block.body
    h = F.conv2d(F.silu(F.group_norm(x, norm1.num_groups, norm1.weight, norm1.bias)), conv1.weight, conv1.bias, padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, norm2.num_groups, norm2.weight, norm2.bias)), conv2.weight, conv2.bias, padding=1)
    skip = x if isinstance(block.skip, torch.nn.Identity) else F.conv2d(x, block.skip.weight, block.skip.bias)
    return skip + h


x_walk = data.tensors()[0][:4].to(device)
pad = ae.padded - profile.image_size
h = F.pad(x_walk, (pad // 2, pad - pad // 2) * 2, value=-1.0)  # black border up to a multiple of 8
shapes = [tuple(h.shape[1:])]
with torch.no_grad():
    for layer in ae.encoder:
        h = block_by_hand(layer, h) if hasattr(layer, "body") else layer(h)  # a residual block, or a conv / norm / SiLU
        shapes.append(tuple(h.shape[1:]))
    mean_by_hand, logvar_by_hand = h.chunk(2, dim=1)
    posterior = ae.encode(x_walk)
assert torch.allclose(mean_by_hand, posterior.mean, atol=1e-5) and torch.allclose(logvar_by_hand.clamp(-30, 20), posterior.logvar, atol=1e-5)
print("encoder by hand == Autoencoder.encode; shapes (channels, side, side): " + " -> ".join(str(s) for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]))

# %% [markdown]
# One training step: encode, draw $z = \mu + \sigma\odot\varepsilon$ with the trainer's generator, decode,
# $\lVert x - \mathcal D(z)\rVert_1 + \beta_{\mathrm{KL}}\,\mathrm{KL}$ averaged over the batch, one Adam step. On the
# trainer's first batch, from the same weights, it lands where `AutoencoderTrainer`'s first step does:

# %%
from helpers.autoencoder_training import AutoencoderTrainer

probe = AutoencoderTrainer(copy.deepcopy(ae), data, ae_config, device, progress=False)
x_batch = next(probe.loader(data, ae_config.batch_size, ae_config.seed))[0].to(device)  # the trainer's first batch
ae_by_hand = copy.deepcopy(ae).train()
adam = torch.optim.Adam(ae_by_hand.parameters(), lr=ae_config.lr)
mean, logvar = ae_by_hand.encoder(F.pad(x_batch, (pad // 2, pad - pad // 2) * 2, value=-1.0)).chunk(2, dim=1)
logvar = logvar.clamp(-30, 20)  # as the library does, so that exp cannot overflow
eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(ae_config.seed)).to(device)  # the trainer's posterior noise
z = mean + (0.5 * logvar).exp() * eps  # the reparameterised sample
recon_error = (ae_by_hand.decode(z) - x_batch).abs().flatten(1).sum(1)  # L1 per image
kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
loss = (recon_error + ae_config.kl_weight * kl).mean()
adam.zero_grad()
loss.backward()
adam.step()
probe.train(1)
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ae_by_hand.parameters(), probe.ae.parameters()))
print(f"one training step by hand == AutoencoderTrainer's first step (loss {loss.item():.1f} per image: L1 {recon_error.mean().item():.1f}, KL {kl.mean().item():.1f} x beta {ae_config.kl_weight:g})")

# %%

ae_run = AutoencoderTrainer(ae, data, ae_config, device, progress=False)  # Ctrl-C saves the run: python -m helpers autoencoder --resume continues it
start = time.perf_counter()
ae_history = ae_run.train(save_to=profile.checkpoint("autoencoder"), profile=profile.name).history
ae_minutes = (time.perf_counter() - start) / 60
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot([r["step"] for r in ae_history], [r["l1"] for r in ae_history], "o-", ms=3)
ax.set(yscale="log", xlabel="step", ylabel="L1 reconstruction error per pixel (log scale)", title=f"autoencoder training, {ae_minutes:.1f} minutes [{profile.name} profile]")
print(f"{ae_config.steps} steps in {ae_minutes:.1f} minutes; final L1 per pixel {ae_history[-1]['l1']:.4f}, KL per image {ae_history[-1]['kl']:.0f}")

# %% [markdown]
# Test images next to their reconstructions $\mathcal D(\mu(x))$, and the reconstruction FID: held-out
# images passed through the autoencoder, scored against the training images. A latent model's
# samples pass the same decoder, so this is in practice the **ceiling** of latent diffusion here
# (the comparison below checks it); the real-data floor (held-out images themselves) is the
# ceiling of any model.

# %%
from helpers.evaluation import Evaluator
from helpers.metrics import get_features

features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, d, features)
held_out = test.tensors()[0][: evaluator.n].to(device)
with torch.no_grad():
    recon = torch.cat([ae.decode(ae.encode(xb).mean).clamp(-1, 1) for xb in held_out.split(250)])
q_recon = evaluator.score(recon.cpu())
floor = evaluator.floor
fig, axes = plt.subplots(2, 1, figsize=(9, 2.6), constrained_layout=True)
show_grid(held_out[:12].cpu(), "test images", nrow=12, ax=axes[0])
show_grid(recon[:12].cpu(), f"reconstructions D(mu(x)), L1 per pixel {(recon - held_out).abs().mean():.3f}", nrow=12, ax=axes[1])
fig.suptitle(f"the autoencoder on held-out images [{profile.name} profile]")
print(f"reconstruction FID of {q_recon.n_fake} held-out images: {q_recon.fid:.1f}; real-data floor {floor.fid:.1f} ± {floor.fid_std:.1f}")

# %% [markdown]
# ## The scale factor
#
# The noise schedule was designed for data of about unit variance: $q(z_t \mid z_0) = \mathcal N(\sqrt{\bar\alpha_t}\,z_0, (1-\bar\alpha_t) I)$
# has signal-to-noise ratio $\mathrm{Var}(z_0)\,\bar\alpha_t/(1-\bar\alpha_t)$. The KL term barely constrains the latents'
# scale, so Rombach et al. multiply them by $1/\mathrm{std}(z)$, measured on data (Stable Diffusion's
# 0.18215 is this number for its autoencoder, measured on sampled latents). Our latent model trains
# on the posterior means, so we measure on those, by hand and against `Autoencoder.measure_scale`,
# and print the sampled latents' spread beside it:

# %%
x_sample = data.tensors()[0][:2000].to(device)
with torch.no_grad():
    posteriors = [ae.encode(xb) for xb in x_sample.split(500)]
    z_unscaled = torch.cat([q.mean for q in posteriors])
    z_sampled = torch.cat([q.sample(cpu_generator(2)) for q in posteriors])
scale_by_hand = 1 / float(z_unscaled.std())
scale = ae.measure_scale(x_sample)
assert math.isclose(scale_by_hand, scale, rel_tol=1e-5)
ae_path = ae_run.save(profile.checkpoint("autoencoder"), profile=profile.name, extra={"minutes": ae_minutes})  # now with its scale factor
print(f"posterior means: std {z_unscaled.std():.3f} -> scale factor {scale:.4f} (sampled latents: std {z_sampled.std():.3f}); saved {ae_path}")
print(f"this autoencoder's latents have a spread {'near 1: the factor changes little here' if 0.8 < scale < 1.25 else 'far from 1: the factor matters here'}")

# %% [markdown]
# Whether this autoencoder's latents need the factor is printed above; the KL term pulls them
# towards unit variance, so a spread near 1 is no accident, but nothing enforces it. Stable Diffusion's did not come out near 1: its factor 0.18215 means unscaled latents of std $1/0.18215 \approx 5.5$.
# The curves show the signal-to-noise ratio of $z_t$ for latents of std 5.5, 1 and 0.2, beside the
# pixels'; the images take our scaled latents multiplied by that std, noise them to the same $t$
# with the same noise, and decode $z_t/\sqrt{\bar\alpha_t}$ divided back by it. With std 5.5 the noise
# at the middle of the chain hardly touches the image, so the model would spend many of its steps
# where nothing happens; with std 0.2 the image is gone early.

# %%
from helpers.latent import decode

x_show = test.tensors()[0][:6].to(device)
with torch.no_grad():
    z0_scaled = ae.encode(x_show).mean * ae.scale_factor
snr = d.alpha_bars / (1 - d.alpha_bars)
var_pixels = float(data.tensors()[0][:2000].var())
ts = [int(f * (d.T - 1)) for f in (0.1, 0.3, 0.5, 0.7)]
stds = {"std 5.5 (Stable Diffusion's, unscaled)": 1 / 0.18215, "std 1 (scaled)": 1.0, "std 0.2": 0.2}
fig = plt.figure(figsize=(14, 10), constrained_layout=True)
grid_spec = fig.add_gridspec(2, len(stds), height_ratios=[1, 1.15])
ax = fig.add_subplot(grid_spec[0, :])
for label, std in stds.items():
    ax.plot(range(d.T), (std**2 * snr).numpy(), label=f"latents of {label}")
ax.plot(range(d.T), (var_pixels * snr).numpy(), "k--", label=f"pixels (var {var_pixels:.2f})")
ax.set(yscale="log", xlabel="timestep t", ylabel="SNR of z_t (log scale)", title="signal-to-noise ratio along the chain")
ax.legend(fontsize=9)
noise = torch.randn(z0_scaled.shape, generator=cpu_generator(3)).to(device)
for row, (label, std) in enumerate(stds.items()):
    frames = []
    for t in ts:
        ab = float(d.alpha_bars[t])
        z_t = ab**0.5 * std * z0_scaled + (1 - ab) ** 0.5 * noise
        frames.append(decode(ae, z_t / ab**0.5 / std))
    show_grid(torch.cat(frames).cpu(), f"latents of {label}:\nrows t = {', '.join(map(str, ts))}", nrow=len(x_show), ax=fig.add_subplot(grid_spec[1, row]))
fig.suptitle(f"q(z_t | z_0) for latents of three spreads, decoded (our scale factor: {scale:.3f}) [{profile.name} profile]");

# %% [markdown]
# ## The same U-Net, process and samplers on latents
#
# The latent model is notebook 03's U-Net with only its input/output channels and side changed (and
# attention at the same depth of the network); `helpers.diffusion` and the samplers are used as
# they are. The training set is encoded once: each image becomes its scaled posterior mean.

# %%
from helpers.latent import encode_dataset, latent_unet_config
from helpers.unet import UNet

latent_config = latent_unet_config(pixel_model.config, ae)
print("changed from the pixel U-Net:", {k: (pixel_model.config[k], v) for k, v in latent_config.items() if pixel_model.config[k] != v})
start = time.perf_counter()
latents = encode_dataset(ae, data, progress=False)
print(f"{len(latents)} latents, std {latents.latents.std():.3f}, encoded in {time.perf_counter() - start:.0f} s")

z0 = latents.latents[:8].to(device)
t = torch.randint(0, d.T, (8,), generator=cpu_generator(4)).to(device)
eps = torch.randn(z0.shape, generator=cpu_generator(5)).to(device)
latent_model = UNet(**latent_config).to(device)
ab = d.alpha_bars.to(device)[t].float().view(-1, 1, 1, 1)
loss_by_hand = ((latent_model(ab.sqrt() * z0 + (1 - ab).sqrt() * eps, t) - eps) ** 2).mean(dim=(1, 2, 3))
loss_by_hand = loss_by_hand * d.loss_weight(t)  # min-SNR weighting, as in notebook 03
assert torch.allclose(loss_by_hand, d.loss(latent_model, z0, t=t, noise=eps, reduction="none"), atol=1e-6)
print("the eps loss on latents by hand == Diffusion.loss, unchanged")

# %% [markdown]
# **What is matched.** The latent model trains with notebook 03's recipe (the profile's
# `TrainConfig`: batch size, learning rate and its schedule, warm-up, EMA; the training cell prints
# whether the pixel model's checkpoint records the same) for as many steps as the pixel model took,
# so the two have taken the same number of optimiser steps on the same number of training images. Time is not
# matched: a latent step is cheaper, so the latent run takes a fraction of the pixel model's
# minutes even with its autoencoder's training added. The pixel model's minutes are estimated
# here from 30 steps of the same `Trainer` at its size (a checkpoint's own minutes may come from
# another machine, or from a CPU shared with other work); the cell prints both budgets, and how many steps equal minutes would have given the
# latent model (more than this notebook's time allows).

# %%
from helpers.latent import autoencoder_record
from helpers.training import Trainer


def seconds_per_step(model, dataset, n=30):
    trainer = Trainer(model, d, dataset, TrainConfig.from_profile(profile, steps=n + 10, log_every=n + 10, sample_every=0, eval_every=0), device, progress=False)
    trainer.train(10)  # warm up
    sync(device)
    start = time.perf_counter()
    trainer.train(10 + n)  # to step 10 + n in total
    sync(device)
    return (time.perf_counter() - start) / n


pixel_step = seconds_per_step(UNet(**pixel_model.config), data)
latent_step = seconds_per_step(UNet(**latent_config), latents)
pixel_minutes = pixel_ckpt["step"] * pixel_step / 60
latent_steps = pixel_ckpt["step"]  # equal steps, equal images seen
print(f"a step of batch {profile.train.batch_size}: pixel model {1000 * pixel_step:.0f} ms, latent model {1000 * latent_step:.0f} ms ({pixel_step / latent_step:.1f}x faster)")
print(f"{latent_steps} steps: the pixel model's take about {pixel_minutes:.1f} minutes here, the latent model's about {latent_steps * latent_step / 60:.1f} "
      f"(+ {ae_minutes:.1f} for the autoencoder); equal minutes would have given the latent model {max(0, int((pixel_minutes - ae_minutes) * 60 / latent_step))} steps")

# %%
latent_model = UNet(**latent_config)
config = TrainConfig.from_profile(profile, steps=latent_steps, sample_every=0, eval_every=0)
recipe = ("batch_size", "optimizer", "lr", "lr_decay", "warmup_steps", "timesteps", "grad_clip", "ema_decay")
recorded = pixel_ckpt["train"]  # an older checkpoint may not record every setting: those are not compared
differ = {k: (recorded[k], getattr(config, k)) for k in recipe if k in recorded and recorded[k] != getattr(config, k)}
print(f"the pixel model's recipe ({', '.join(k for k in recipe if k in recorded)}): " + ("the same as this run's" if not differ else f"differs (pixel, latent): {differ}"))
trainer = Trainer(latent_model, d, latents, config, device, extra={"autoencoder": autoencoder_record(ae, ae_path)}, progress=False)  # the checkpoint names its autoencoder
start = time.perf_counter()
trainer.train(save_to=profile.checkpoint("latent"), profile=profile.name)
latent_minutes = (time.perf_counter() - start) / 60
rows = [r for r in trainer.history if "loss" in r]
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
ax.set(yscale="log", xlabel="step", ylabel="training loss (log scale)", title=f"latent U-Net, {latent_steps} steps in {latent_minutes:.1f} minutes [{profile.name} profile]")
print(f"trained {trainer.step} steps in {latent_minutes:.1f} minutes; saved {profile.checkpoint('latent')}")

# %% [markdown]
# ## Sampling in latent space
#
# DDIM runs on latents as on pixels, with one change: no clipping of $\hat z_0$ to $[-1, 1]$, a bound
# that belongs to pixels. Then decode. By hand, against `helpers.latent.draw_images`:

# %%
from helpers.latent import draw_images
from helpers.samplers import DDIM, ddim_timesteps

ema_model = load_model(profile.checkpoint("latent"), device)[0]
steps = min(50, d.T)
grid = ddim_timesteps(d.T, steps)
z = torch.randn(8, *ae.latent_shape, generator=cpu_generator(6)).to(device)
with torch.no_grad():
    for t_now, t_prev in zip(grid, grid[1:] + [-1]):
        ab_t = float(d.alpha_bars[t_now])
        ab_prev = float(d.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
        eps_hat = ema_model(z, torch.full((8,), t_now, device=device))
        z0_hat = (z - (1 - ab_t) ** 0.5 * eps_hat) / ab_t**0.5  # no clipping
        z = ab_prev**0.5 * z0_hat + (1 - ab_prev) ** 0.5 * eps_hat
    by_hand = decode(ae, z)
assert torch.allclose(by_hand, draw_images(ema_model, d, ae, 8, DDIM(steps), cpu_generator(6)), atol=1e-4)
print(f"DDIM-{steps} in latent space by hand, decoded == helpers.latent.draw_images")

# %% [markdown]
# ## Pixel against latent diffusion at equal steps
#
# Both models sample the evaluator's images (the count is printed) with DDIM-50 and with
# DPM-Solver++(2M) at 10 evaluations from the evaluator's fixed seed, the latent model from noise of
# its own shape, and are scored against the same real-data floor.

# %%
from helpers.latent import unclipped
from helpers.metrics import extract_both, fid_interval
from helpers.solvers import Solver
from helpers.stats import bootstrap

contenders = [("pixel", pixel_model, {}, (DDIM(steps), Solver("dpmpp-2m", 10))), ("latent", ema_model, {"autoencoder": ae}, (DDIM(steps), Solver("dpmpp-2m", 10)))]
results, drawn = [], {}
for name, net, kw, samplers in contenders:
    for sampler in samplers:
        sync(device)
        t0 = time.perf_counter()
        images, _ = evaluator.images(net, sampler=sampler, **kw)
        sync(device)
        seconds = time.perf_counter() - t0
        q = evaluator.score(images)
        label = str(unclipped(sampler)) if kw else str(sampler)  # the latent model samples without clipping
        results.append({"model": name, "sampler": label, "fid": q.fid, "images_per_s": q.n_fake / seconds, "first": images[:10]})
        drawn[(name, "DDIM" if isinstance(sampler, DDIM) else "dpmpp-2m")] = images
params = {"pixel": sum(p.numel() for p in pixel_model.parameters()), "latent": sum(p.numel() for p in ema_model.parameters())}
decoder = sum(p.numel() for p in ae.decoder.parameters())
minutes = {"pixel": pixel_minutes, "latent": ae_minutes + latent_minutes}
trained = {"pixel": pixel_ckpt["step"], "latent": trainer.step}
step_ms = {"pixel": 1000 * pixel_step, "latent": 1000 * latent_step}
print(f"{q.n_fake} samples each, {q.features} features; real-data floor {floor}; reconstruction FID (the latent ceiling) {q_recon.fid:.1f}")
print(f"{'model':<8} {'sampler':<44} {'FID':>7} {'img/s':>7} {'U-Net params':>13} {'step ms':>8} {'steps':>7} {'train min':>10}")
for r in results:
    m = r["model"]
    print(f"{m:<8} {r['sampler']:<44} {r['fid']:>7.1f} {r['images_per_s']:>7.1f} {params[m]:>13,} {step_ms[m]:>8.0f} {trained[m]:>7} {minutes[m]:>10.1f}")
print(f"(the latent model's samples also pass the decoder, {decoder:,} parameters; its minutes include the autoencoder's {ae_minutes:.1f}; "
      f"the pixel model's minutes are the estimate above)")

# %%
fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.25 * len(results) + 0.5), constrained_layout=True)
for ax, r in zip(axes, results):
    show_grid(r["first"], f"{r['model']}, {r['sampler']}: FID {r['fid']:.1f}", nrow=10, ax=ax)
fig.suptitle(f"pixel and latent diffusion after the same number of training steps, the same seed [{profile.name} profile]");

# %%
best = {m: min(r["fid"] for r in results if r["model"] == m) for m in ("pixel", "latent")}
speed = {m: max(r["images_per_s"] for r in results if r["model"] == m and r["sampler"].startswith("DDIM")) for m in ("pixel", "latent")}
print(f"best FID: pixel {best['pixel']:.1f}, latent {best['latent']:.1f} (ceiling {q_recon.fid:.1f}, floor {floor.fid:.1f} ± {floor.fid_std:.1f}); "
      f"DDIM-{steps} sampling: latent {speed['latent'] / speed['pixel']:.1f}x the pixel model's images per second")
print(f"matched: {trained['latent']} steps of batch {profile.train.batch_size} each ({trained['latent'] * profile.train.batch_size:,} training images seen); "
      f"not matched: minutes, latent {minutes['latent']:.1f} (autoencoder included) against the pixel model's estimated {minutes['pixel']:.1f} "
      f"({minutes['latent'] / minutes['pixel']:.0%} of it)")
replicates = 100 if profile.name == "smoke" else 200  # smoke: CI's minutes
feats = {key: extract_both(features, images)[0] for key, images in drawn.items()}
for sampler_key in ("DDIM", "dpmpp-2m"):
    # the two models start from noise of different shapes, so their i-th samples share nothing: the
    # paired bootstrap (the same resampled indices for both) is then simply that of two independent sets
    iv = fid_interval(evaluator.real, feats[("latent", sampler_key)], feats[("pixel", sampler_key)], replicates=replicates)
    verdict = "no difference detected" if not iv.excludes_zero else "latent is better" if iv.estimate < 0 else "pixel is better"
    print(f"latent minus pixel FID at equal steps, {sampler_key}: {iv} -> {verdict}")
print(f"the decoder's ceiling: best latent FID {best['latent']:.1f} is {'above' if best['latent'] > q_recon.fid else 'below'} the reconstruction FID {q_recon.fid:.1f}")

# blur against FID: the mean absolute Laplacian per pixel (4 neighbours), high for sharp edges, low for blur


def sharpness(x):
    """Each image's mean |Laplacian| per pixel: [N]."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return torch.nn.functional.conv2d(x.float().cpu(), kernel, groups=x.shape[1]).abs().flatten(1).mean(1)


box = torch.tensor([1.0, 2.0, 1.0])
blur_kernel = (box[:, None] * box[None, :] / 16).view(1, 1, 3, 3).repeat(profile.channels, 1, 1, 1)
edges_repeated = torch.nn.functional.pad(held_out.cpu(), (1, 1, 1, 1), mode="replicate")  # no frame of another colour
blurred = torch.nn.functional.conv2d(edges_repeated, blur_kernel, groups=profile.channels)  # real images, one 3x3 binomial blur
q_blurred = evaluator.score(blurred)
sharp = {"held-out images": sharpness(held_out), "their reconstructions": sharpness(recon), "held-out images, blurred": sharpness(blurred)}
sharp |= {f"{m} samples, DDIM-{steps}": sharpness(drawn[(m, "DDIM")]) for m in ("pixel", "latent")}
print("sharpness (mean |Laplacian| per pixel): " + ", ".join(f"{k} {v.mean():.3f}" for k, v in sharp.items()))
for first, second in (("their reconstructions", "held-out images"), (f"latent samples, DDIM-{steps}", f"pixel samples, DDIM-{steps}")):
    # reconstructions pair with their originals; the two models' samples share no noise, so resampling the same indices of both is resampling two independent sets
    iv = bootstrap(lambda idx: float(sharp[first][idx].mean() - sharp[second][idx].mean()), len(sharp[first]), replicates=replicates)
    verdict = "no difference detected" if not iv.excludes_zero else f"{first} {'blurrier' if iv.estimate < 0 else 'sharper'}"
    print(f"sharpness, {first} minus {second}: {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] (95% bootstrap, {iv.replicates} resamples) -> {verdict}")
print(f"FID of the held-out images {floor.fid:.1f} (floor); blurred once {q_blurred.fid:.1f}; reconstructed {q_recon.fid:.1f}")
path = profile.artifacts / "figures" / "10_latent_vs_pixel.json"
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({"device": str(device), "floor": floor.fid, "floor_std": floor.fid_std, "reconstruction_fid": q_recon.fid, "minutes": minutes,
                            "step_ms": step_ms, "params": params, "rows": [{k: v for k, v in r.items() if k != "first"} for r in results]}, indent=2))  # fmt: skip
print(f"saved {path}")

# %% [markdown]
# ## Scrubbing the chain: pixels and latents
#
# The same fraction of the chain on both sides: $x_t$ of the pixel model's process on test images,
# and the decoded $z_t/\sqrt{\bar\alpha_t}$ of their latents, with fresh noise of each shape fixed once.
# Pixel noise is visible as noise; latent noise, decoded, becomes blobs and strokes of the decoder's
# vocabulary. The figure is a static copy of four positions; the slider below it needs a live kernel.

# %%
from ipywidgets import SelectionSlider

from helpers.viz import GridSweepView, slider_widget

x_noise = torch.randn(x_show.shape, generator=cpu_generator(7)).to(device)
z_noise = torch.randn(z0_scaled.shape, generator=cpu_generator(8)).to(device)


def both_at(t):
    ab = float(d.alpha_bars[t])
    x_t = (ab**0.5 * x_show + (1 - ab) ** 0.5 * x_noise).clamp(-1, 1)
    z_t = ab**0.5 * z0_scaled + (1 - ab) ** 0.5 * z_noise
    return torch.cat([x_t, decode(ae, z_t / ab**0.5)])


t_values = [int(round(f * (d.T - 1))) for f in torch.linspace(0, 1, 21).tolist()]
strip_ts = [t_values[k] for k in (2, 5, 8, 11)]
fig, axes = plt.subplots(1, len(strip_ts), figsize=(14, 3.6), constrained_layout=True)
for ax, t in zip(axes, strip_ts):
    show_grid(both_at(t).cpu(), f"t = {t}", nrow=len(x_show) // 2, ax=ax)
fig.suptitle(f"a static copy of four slider positions: pixel x_t (top two rows), decoded latent z_t / sqrt(alpha_bar) (bottom two rows) [{profile.name} profile]")
plt.show()
view = GridSweepView(both_at, nrow=len(x_show), title=lambda t: f"t = {t}: pixel x_t (top), decoded latent z_t / sqrt(alpha_bar) (bottom) [{profile.name} profile]")
slider_widget(view.render, SelectionSlider(options=t_values, value=t_values[5], description="t"))

# %% [markdown]
# What to take from the table. The latent model's step is cheaper because its U-Net works on
# the latent grid instead of the image's (the shapes printed at the top: 64 positions per channel
# against 784 under `laptop`); it therefore trains its steps in a fraction of the minutes, and it
# samples faster (the printed ratios). Whether it is better after the same number of steps is the
# bootstrap interval's verdict; given the pixel model's minutes it could have taken more steps (how
# many is printed above), which this notebook does not run. Its quality is
# capped by the decoder (the reconstruction FID above): a small autoencoder trained for a few
# minutes with an L1 loss blurs, and the sharpness lines say by how much, for reconstructions against
# their originals and for latent against pixel samples, each with its interval and verdict. Blur
# and FID are different measurements here. The printed FID of the blurred real images says how far
# these features move under a small change of that kind (the blur pads each image by repeating its
# edge pixels, so it adds no frame). Whether the latent samples also score worse is the FID lines'
# verdict, not something the sharpness lines decide;
# the figure of samples is the place to look at how well their items are formed. Stable Diffusion adds
# perceptual and adversarial losses for the blur and trains its autoencoder far longer. The savings
# grow with the image: at 256×256 and beyond a pixel-space U-Net is what is expensive, and an 8×
# smaller latent side gives every step 64× fewer positions.
#
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function and prints ✓, what
# is wrong, or "not done yet". The solutions, with their reasoning, are in
# `notebooks/solutions/10_latent_diffusion.py`.
#
# **1. The KL against a prior of another width.** The KL above is against $\mathcal N(0, I)$. Derive the KL of
# $q = \mathcal N(\mu, \operatorname{diag} e^{\ell})$ from $\mathcal N(0, b^2 I)$ and return it per image, for tensors
# `mean` ($\mu$) and `logvar` ($\ell$) of shape [B, C, H, W] and a float `prior_std` ($b$). Then: if the
# latents are multiplied by the scale factor $c$, the KL of the scaled posterior from $\mathcal N(0, I)$
# equals the KL of the unscaled one from which prior?

# %%
def kl_to_prior(mean, logvar, prior_std):
    """Per-image KL [B] of N(mean, diag exp(logvar)) from N(0, prior_std^2 I)."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(kl_to_prior)

# %% [markdown]
# **2. Predict, then run: the latents' spread and a five-step sampler.** Latents of std $b$ have
# $b^2$ times the schedule's SNR at every $t$ (the figure of the three spreads). Take a perfect
# model: the exact denoiser of notebook 09's 2-D ring of Gaussians, rescaled to a per-coordinate
# std of 0.2, 1 or 5.5, sampled with DDIM in 5 steps (trailing grid, this notebook's linear schedule,
# $T = 1000$), and measure how far the samples land from the nearest ring component, in units of
# each spread. Before running anything: compared with std 1, do latents of std 0.2 land further
# (+1) or closer (−1)? And latents of std 5.5? The check runs the experiment and tells you.

# %%
def predict_spread_effect():
    """(your prediction for std 0.2, for std 5.5): +1 further from the data than std 1, -1 closer."""
    raise NotImplementedError  # your prediction here


# %%
check(predict_spread_effect)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
