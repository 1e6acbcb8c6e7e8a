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
# notebook trains a small autoencoder, shows why its latents must be rescaled before they are
# noised, trains notebook 03's recipe on the latents for the wall-clock minutes that the pixel
# model's steps take on this machine, and compares the two, at equal minutes and at equal steps.
#
# It needs `03_ddpm_eps.pt` from notebook 03 (under `laptop`, the shipped model in `pretrained/`
# when 03 has not been run) and leaves `10_autoencoder.pt` and `10_latent.pt`.

# %%
import contextlib
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
# over a latent of shape $4 \times s \times s$ (the image padded to a multiple of 8, then halved twice:
# 28 → 32 → 8); the decoder $\mathcal D$ maps a latent back. Training minimises, per image,
#
# $$\mathcal L = \lVert x - \mathcal D(z)\rVert_1 + \beta\,\mathrm{KL}\big(q(z \mid x)\,\Vert\,\mathcal N(0, I)\big),\qquad
# z = \mu + \sigma\odot\varepsilon,\qquad \mathrm{KL} = \tfrac12\textstyle\sum_j\big(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\big),$$
#
# with the sample written through $\varepsilon$ (the reparameterisation trick), so the gradient
# reaches the encoder. Rombach et al. keep $\beta$ tiny ($10^{-6}$) and add perceptual and adversarial
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

# %%
from helpers.autoencoder_training import AutoencoderTrainer

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
# **Equal minutes, and equal steps.** The pixel model's training time is estimated here from 50
# steps of the same `Trainer` and recipe at its size (the shipped model was trained on another
# machine, so its own minutes do not compare); the latent model's steps are set from that estimate
# and its own measured step time so that the two budgets match, its autoencoder's training
# included. Short measurements are only estimates: the table prints the minutes each actually took,
# and how far apart they came out. Equal minutes give the latent model more steps, so its EMA
# weights are also kept at the pixel model's step count: the equal-steps control, which separates
# "more steps" from "a better place to take them".

# %%
from helpers.latent import autoencoder_record
from helpers.training import Trainer


def seconds_per_step(model, dataset, n=50):
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
latent_steps = max(1, int((pixel_minutes - ae_minutes) * 60 / latent_step))
print(f"a step of batch {profile.train.batch_size}: pixel model {1000 * pixel_step:.0f} ms, latent model {1000 * latent_step:.0f} ms ({pixel_step / latent_step:.1f}x faster)")
print(f"the pixel model's {pixel_ckpt['step']} steps take {pixel_minutes:.1f} minutes here; the latent model gets "
      f"{pixel_minutes:.1f} - {ae_minutes:.1f} (autoencoder) minutes = {latent_steps} steps")

# %%
latent_model = UNet(**latent_config)
config = TrainConfig.from_profile(profile, steps=latent_steps, sample_every=0, eval_every=0)
trainer = Trainer(latent_model, d, latents, config, device, extra={"autoencoder": autoencoder_record(ae, ae_path)}, progress=False)  # the checkpoint names its autoencoder
equal_steps = pixel_ckpt["step"] if pixel_ckpt["step"] < latent_steps else None  # the equal-steps control, when equal minutes give more steps
start = time.perf_counter()
if equal_steps is not None:
    trainer.train(equal_steps)  # resuming from here continues the same run exactly (the batches depend on the step alone)
    with trainer.ema.averaged(trainer.model) if trainer.ema is not None else contextlib.nullcontext():
        at_equal_steps = copy.deepcopy(trainer.model).eval()  # the EMA weights after the pixel model's number of steps
    equal_steps_minutes = (time.perf_counter() - start) / 60
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
# ## Pixel against latent diffusion on the same training budget
#
# Both models sample the evaluator's images (the count is printed) with DDIM-50 and with
# DPM-Solver++(2M) at 10 evaluations from the evaluator's fixed seed, the latent model from noise of
# its own shape, and are scored against the same real-data floor; the latent model's EMA weights at
# the pixel model's step count (the equal-steps control) with DDIM-50 beside them.

# %%
from helpers.latent import unclipped
from helpers.metrics import extract_both, fid_interval
from helpers.solvers import Solver

contenders = [("pixel", pixel_model, {}, (DDIM(steps), Solver("dpmpp-2m", 10))), ("latent", ema_model, {"autoencoder": ae}, (DDIM(steps), Solver("dpmpp-2m", 10)))]
if equal_steps is not None:
    contenders.append((f"latent at {equal_steps} steps", at_equal_steps, {"autoencoder": ae}, (DDIM(steps),)))
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
if equal_steps is not None:
    name = f"latent at {equal_steps} steps"
    params[name], minutes[name], trained[name], step_ms[name] = params["latent"], ae_minutes + equal_steps_minutes, equal_steps, step_ms["latent"]
print(f"{q.n_fake} samples each, {q.features} features; real-data floor {floor}; reconstruction FID (the latent ceiling) {q_recon.fid:.1f}")
print(f"{'model':<22} {'sampler':<44} {'FID':>7} {'img/s':>7} {'U-Net params':>13} {'step ms':>8} {'steps':>7} {'train min':>10}")
for r in results:
    m = r["model"]
    print(f"{m:<22} {r['sampler']:<44} {r['fid']:>7.1f} {r['images_per_s']:>7.1f} {params[m]:>13,} {step_ms[m]:>8.0f} {trained[m]:>7} {minutes[m]:>10.1f}")
print(f"(the latent model's samples also pass the decoder, {decoder:,} parameters; its minutes include the autoencoder's {ae_minutes:.1f}; "
      f"the pixel model's minutes are the estimate above)")

# %%
fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.25 * len(results) + 0.5), constrained_layout=True)
for ax, r in zip(axes, results):
    show_grid(r["first"], f"{r['model']}, {r['sampler']}: FID {r['fid']:.1f}", nrow=10, ax=ax)
fig.suptitle(f"pixel and latent diffusion on the same training budget, the same seed [{profile.name} profile]");

# %%
best = {m: min(r["fid"] for r in results if r["model"] == m) for m in ("pixel", "latent")}
speed = {m: max(r["images_per_s"] for r in results if r["model"] == m and r["sampler"].startswith("DDIM")) for m in ("pixel", "latent")}
print(f"best FID: pixel {best['pixel']:.1f}, latent {best['latent']:.1f} (ceiling {q_recon.fid:.1f}, floor {floor.fid:.1f} ± {floor.fid_std:.1f}); "
      f"DDIM-{steps} sampling: latent {speed['latent'] / speed['pixel']:.1f}x the pixel model's images per second")
print(f"training budgets: latent {minutes['latent']:.1f} minutes ({trained['latent']} steps) against the pixel model's estimated {minutes['pixel']:.1f} "
      f"({trained['pixel']} steps): {minutes['latent'] - minutes['pixel']:+.1f} minutes ({minutes['latent'] / minutes['pixel'] - 1:+.0%})")
replicates = 100 if profile.name == "smoke" else 500  # smoke: CI's minutes
feats = {key: extract_both(features, images)[0] for key, images in drawn.items()}


def latent_minus_pixel(latent_key, pixel_key):
    # the two models start from noise of different shapes, so their i-th samples share nothing: the
    # paired bootstrap (the same resampled indices for both) is then simply that of two independent sets
    iv = fid_interval(evaluator.real, feats[latent_key], feats[pixel_key], replicates=replicates)
    return iv, ("no difference resolved" if not iv.excludes_zero else "latent lower" if iv.estimate < 0 else "pixel lower")


for sampler_key in ("DDIM", "dpmpp-2m"):
    iv, verdict = latent_minus_pixel(("latent", sampler_key), ("pixel", sampler_key))
    print(f"latent minus pixel FID, equal minutes, {sampler_key}: {iv} -> {verdict}")
if equal_steps is not None:
    iv, verdict = latent_minus_pixel((f"latent at {equal_steps} steps", "DDIM"), ("pixel", "DDIM"))
    print(f"latent minus pixel FID, equal steps ({equal_steps}), DDIM-{steps}: {iv} -> {verdict}")
print(f"the decoder's ceiling: best latent FID {best['latent']:.1f} is {'above' if best['latent'] > q_recon.fid else 'below'} the reconstruction FID {q_recon.fid:.1f}")

# blur against FID: the mean absolute Laplacian per pixel (4 neighbours), high for sharp edges, low for blur


def sharpness(x):
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return float(torch.nn.functional.conv2d(x.float().cpu(), kernel, groups=x.shape[1]).abs().mean())


box = torch.tensor([1.0, 2.0, 1.0])
blur_kernel = (box[:, None] * box[None, :] / 16).view(1, 1, 3, 3).repeat(profile.channels, 1, 1, 1)
blurred = torch.nn.functional.conv2d(held_out.cpu(), blur_kernel, padding=1, groups=profile.channels)  # real images, one 3x3 binomial blur
q_blurred = evaluator.score(blurred)
sharp = {"held-out images": sharpness(held_out), "their reconstructions": sharpness(recon), "held-out images, blurred": sharpness(blurred)}
sharp |= {f"{m} samples, DDIM-{steps}": sharpness(drawn[(m, "DDIM")]) for m in ("pixel", "latent")}
print("sharpness (mean |Laplacian| per pixel): " + ", ".join(f"{k} {v:.3f}" for k, v in sharp.items()))
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
# against 784 under `laptop`); in the same minutes it therefore takes more steps, and it samples
# faster (the printed ratios). Whether it is better is the paired interval's verdict, at equal
# minutes and, to separate the extra steps from the smaller space, at equal steps. Its quality is
# capped by the decoder (the reconstruction FID above): a small autoencoder trained for a few
# minutes with an L1 loss blurs, and the sharpness line says by how much, for reconstructions and
# samples against the real images. Blur and FID are different measurements here: the FID features
# are those of a Fashion-MNIST classifier, which rewards a recognisable item of the right shape
# more than its edges, and the printed FID of the blurred real images says what one 3×3 blur alone
# costs. So a latent model can have the blurrier samples and the better FID at once, when its items
# are better formed; the figure of samples is the place to look for that. Stable Diffusion adds
# perceptual and adversarial losses for the blur and trains its autoencoder far longer. The savings
# grow with the image: at 256×256 and beyond a pixel-space U-Net is what is expensive, and an 8×
# smaller latent side gives every step 64× fewer positions.
#
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/10_latent_diffusion.py`.
#
# **1. The KL term.** Return $\mathrm{KL}(\mathcal N(\mu, \operatorname{diag} e^{\ell})\,\Vert\,\mathcal N(0, I))$ per image for
# tensors `mean` and `logvar` of shape [B, C, H, W]. Which latents make it zero?

# %%
def kl_to_standard_normal(mean, logvar):
    """Per-image KL divergence [B] of a diagonal Gaussian from N(0, I)."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(kl_to_standard_normal)

# %% [markdown]
# **2. The scale factor.** Given a batch of unscaled latents, return the factor that gives them unit
# variance (all elements together, as Stable Diffusion measured its 0.18215). What happens to
# $q(z_t \mid z_0)$'s signal-to-noise ratio at every $t$ if you forget it and the latents have std 5?

# %%
def latent_scale_factor(latents):
    """The float c with std(c * latents) = 1."""
    raise NotImplementedError  # your code here


# %%
check(latent_scale_factor)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
