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
# objective from the variational bound, shows on a 2-D toy what a network trained on it learns
# (the conditional mean of the noise), checks a ten-line training step against
# `helpers.training`, trains under the current profile, looks at the loss by timestep and at
# samples during training, shows that a stopped run resumes exactly, and saves the checkpoint that
# notebooks 04–06 load. Symbols as on the [notation](../docs/notation.md) page: formulas use the
# maths index $t = 1..T$, code the index `t = 0..T-1` (code `t` is maths $t+1$).
#
# It needs `02_unet_config.json` from notebook 02.

# %%
import json
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from helpers.config import setup
from helpers.data import profile_dataset
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.unet import UNet

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
model_config = json.loads(profile.require("unet_config").read_text())
data = profile_dataset(profile)
d = profile.diffusion()
print(f"{len(data)} training images; {d}")

# %% [markdown]
# ## From the bound to "predict the noise"
#
# The reverse model $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$,
# with a fixed variance $\sigma_t^2$ ($\beta_t$ or $\tilde\beta_t$, notebook 04), is trained by
# the variational bound (the ELBO) on the negative log-likelihood, DDPM's eq. 5:
#
# $$-\log p_\theta(x_0) \le \mathbb E_q\Big[\underbrace{D_\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t=2}^{T} \underbrace{D_\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# \ \underbrace{-\,\log p_\theta(x_0 \mid x_1)}_{L_0}\Big].$$
#
# $L_T$ compares the end of the forward chain with the prior $\mathcal N(0, I)$: it has no
# parameters, and with $\bar\alpha_T \approx 0$ it is nearly zero (printed below). $L_0$ is the
# decoder's term for the last step. The terms between compare each reverse step with the
# **posterior of the forward process**, a Gaussian with a closed form (notebook 04 derives it as a
# product of two Gaussians; `Diffusion.q_posterior` computes it):
#
# $$\boxed{\;q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big),\qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,\qquad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t\;}$$
#
# Between two Gaussians with fixed variances the KL depends on the means only through their
# squared distance (DDPM eq. 8; $C$ does not depend on $\theta$):
#
# $$L_{t-1} = \frac{1}{2\sigma_t^2}\,\big\|\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\big\|^2 + C.$$
#
# **The $\varepsilon$-parameterisation.** Write $x_0$ through the noise that made $x_t$,
# $x_0 = \big(x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon\big)/\sqrt{\bar\alpha_t}$, and substitute it
# into $\tilde\mu_t$; the coefficients of $x_t$ combine into $1/\sqrt{\alpha_t}$ (DDPM eq. 10):
#
# $$\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon\Big).$$
#
# The network sees $x_t$; the only thing it does not know is $\varepsilon$. So DDPM lets the
# network output a guess $\varepsilon_\theta(x_t, t)$ and computes the mean **with the same
# formula**, the guess in place of $\varepsilon$ (eq. 11):
# $\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\big)$.
# In the difference of the two means $x_t$ cancels,
# $\tilde\mu_t - \mu_\theta = \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}\big(\varepsilon_\theta - \varepsilon\big)$,
# and each term of the bound becomes a weighted squared error on the noise (eq. 12):
#
# $$L_{t-1} - C = \lambda_t\,\big\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\big\|^2,
# \qquad \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t(1-\bar\alpha_t)}.$$
#
# The cell below checks each step on random numbers: the two forms of $\tilde\mu_t$, the KL as a
# distance of means plus a constant, and the weight $\lambda_t$.

# %%
from torch.distributions import Normal, kl_divergence

plain = Diffusion.from_schedule(profile.schedule, profile.T)  # the process with w(t) = 1
g = cpu_generator(0)
x0 = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
eps_theta = eps + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)  # some network's guess
for t in (1, plain.T // 2, plain.T - 1):  # code indices: maths t = 2, T/2 + 1, T
    alpha, alpha_bar, beta = plain.alphas[t], plain.alpha_bars[t], plain.betas[t]
    sigma2 = beta  # sigma_t^2 = beta_t; any fixed variance gives the same lambda_t / sigma_t^2 form
    x_t = plain.q_sample(x0, t, eps)
    mu_tilde, beta_tilde = plain.q_posterior(x0, x_t, t)  # the boxed posterior
    mu_from_eps = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()  # eq. 10
    mu_theta = (x_t - beta / (1 - alpha_bar).sqrt() * eps_theta) / alpha.sqrt()  # eq. 11
    kl = lambda mu: kl_divergence(Normal(mu_tilde, beta_tilde**0.5), Normal(mu, sigma2**0.5)).flatten(1).sum(1)  # noqa: E731
    lam = beta**2 / (2 * sigma2 * alpha * (1 - alpha_bar))
    assert torch.allclose(mu_tilde, mu_from_eps)
    assert torch.allclose(kl(mu_theta) - kl(mu_tilde), ((mu_tilde - mu_theta) ** 2).flatten(1).sum(1) / (2 * sigma2))  # C = kl(mu_tilde)
    assert torch.allclose(kl(mu_theta) - kl(mu_tilde), lam * ((eps - eps_theta) ** 2).flatten(1).sum(1))  # eq. 12
alpha_bar_T = plain.alpha_bars[-1]
prior_kl = kl_divergence(Normal(alpha_bar_T.sqrt() * torch.tensor([0.0, 1.0]), (1 - alpha_bar_T).sqrt()), Normal(0.0, 1.0))
print("mu_tilde from x0 == from eps; KL = ||mu_tilde - mu_theta||^2 / (2 sigma_t^2) + C == lambda_t ||eps - eps_theta||^2 + C")
print(f"L_T per pixel: {prior_kl[0]:.1e} for a pixel at 0, {prior_kl[1]:.1e} at -1 or 1 (alpha_bar_T = {alpha_bar_T:.1e})")

# %% [markdown]
# DDPM drops the weight $\lambda_t$ and draws $t$ uniformly: the **simple loss** (eq. 14),
#
# $$L_\text{simple} = \mathbb E_{x_0,\ t \sim U\{1, \dots, T\},\ \varepsilon \sim \mathcal N(0, I)}\ \big\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\big\|^2,$$
#
# (in code `t` is drawn from `0..T-1`, and the squared norm is averaged over pixels), whose term
# at $t = 1$ stands in for $L_0$ (DDPM sec. 3.4). It is no longer the bound, but it sampled
# better in DDPM's experiments (their Table 2). A profile may weight the timesteps differently.
# The laptop recipe multiplies each image's loss by $w(t) = \min(\mathrm{SNR}(t), 5)/\mathrm{SNR}(t)$
# (min-SNR-5, Hang et al. 2023), which gives the nearly clean timesteps less say; of three recipes
# trained for the same five minutes on an earlier, wider model it reached the lowest FID, one run
# each (`docs/laptop-recipe.md` §2; §8 chose the learning rate and the sampling of $t$ that run
# here); notebook 07 shows where the weight comes from. The figure puts the
# three weightings of $\|\varepsilon - \varepsilon_\theta\|^2$ side by side.

# %%
t_all = torch.arange(1, plain.T)  # code t = 1..T-1, maths t = 2..T: the terms L_{t-1}
elbo_weight = plain.betas[t_all] / (2 * plain.alphas[t_all] * (1 - plain.alpha_bars[t_all]))  # lambda_t with sigma_t^2 = beta_t
min_snr = Diffusion.from_schedule(profile.schedule, profile.T, loss_weighting="min_snr")
fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(t_all, elbo_weight / elbo_weight.mean(), label=r"the bound: $\lambda_t$ ($\sigma_t^2 = \beta_t$), scaled to mean 1")
ax.plot(t_all, torch.ones(len(t_all)), label=r"$L_\mathrm{simple}$: 1")
ax.plot(t_all, min_snr.loss_weight(t_all), label=f"min-SNR-{min_snr.min_snr_gamma:g}: " + r"$\min(\mathrm{SNR}, \gamma)/\mathrm{SNR}$")
ax.set(yscale="log", xlabel="code timestep t", ylabel=r"weight on $\|\varepsilon - \varepsilon_\theta\|^2$",
       title=f"three weightings of the noise loss ({profile.schedule} schedule, T = {profile.T})")
ax.legend(fontsize=8);
low = int(elbo_weight.argmin())
print(f"lambda_t is largest at maths t = 2: {elbo_weight[0] / elbo_weight[low]:.0f}x its smallest (at maths t = {low + 2}) "
      f"and {elbo_weight[0] / elbo_weight[-1]:.0f}x its value at t = T; against the bound, L_simple gives the smallest t "
      "less weight, and min-SNR less still")
assert elbo_weight.argmax() == 0 and (min_snr.loss_weight(t_all) <= 1).all()

# %% [markdown]
# The unweighted loss in ten lines, checked against `Diffusion.loss` on the same images, $t$ and
# noise:

# %%
def simple_loss(model, x0, t, eps):
    ab = d.alpha_bars[t].float().view(-1, 1, 1, 1).to(x0.device)  # tables stay float64 on the CPU
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((model(x_t, t.to(x0.device)) - eps) ** 2).mean()


torch.manual_seed(0)
probe = UNet(**model_config).to(device)
torch.nn.init.normal_(probe.out[-1].weight, std=0.1)  # an untrained model outputs zeros; make it say something
x0 = data.tensors()[0][:16].to(device)
t = torch.randint(0, d.T, (16,))
eps = torch.randn_like(x0)
assert torch.allclose(simple_loss(probe, x0, t, eps), plain.loss(probe, x0, t=t, noise=eps), rtol=1e-5)

# %% [markdown]
# ## What the network learns: $\mathbb E[\varepsilon \mid x_t]$
#
# Many pairs $(x_0, \varepsilon)$ lead to the same $x_t$, so no network can return the one
# $\varepsilon$ that was drawn. What does the squared error reward instead? For any function $f$,
#
# $$\mathbb E\,\|\varepsilon - f(x_t)\|^2 = \mathbb E\,\big\|\varepsilon - \mathbb E[\varepsilon \mid x_t]\big\|^2 + \mathbb E\,\big\|\mathbb E[\varepsilon \mid x_t] - f(x_t)\big\|^2,$$
#
# because the cross term has mean zero (average it over $\varepsilon$ given $x_t$ first). The
# first term does not depend on $f$: it is a **floor** that no network goes below. The second is
# zero only for $f(x_t) = \mathbb E[\varepsilon \mid x_t]$. So the best $\varepsilon_\theta(\cdot, t)$
# is the conditional mean, the average of all the noises that could have produced $x_t$.
# It is also the score, up to a factor: the Gaussian $q(x_t \mid x_0)$ has
# $\nabla_{x_t} \log q(x_t \mid x_0) = -\varepsilon / \sqrt{1-\bar\alpha_t}$, and the marginal's
# score is the average of these over $x_0$ given $x_t$, so
#
# $$\mathbb E[\varepsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\;\nabla_{x_t} \log p_t(x_t),$$
#
# the fact notebook 09 builds its samplers on. A 2-D mixture makes it concrete: six Gaussians of
# standard deviation $\kappa = 0.25$ on a ring (`helpers.toy.GaussianMixture`, notebook 09's toy),
# whose score is known in closed form in the units $x = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma\varepsilon$,
# $\sigma = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$: there $\nabla_{x_t}\log p_t = \nabla_x \log p_\sigma / \sqrt{\bar\alpha_t}$,
# so $\mathbb E[\varepsilon \mid x_t] = -\sigma\,\nabla_x \log p_\sigma(x_t/\sqrt{\bar\alpha_t})$.
# At three timesteps a small MLP is trained on nothing but the squared error on pairs
# $(x_t, \varepsilon)$, with no score anywhere, and compared with that closed form.

# %%
from helpers.toy import GaussianMixture

toy = GaussianMixture.ring(k=6, radius=2.0, std=0.25)
toy_d = Diffusion.from_schedule("linear", 1000)  # the toy's own process, the same under every profile
toy_ts = (50, 250, 500)  # code timesteps: little, some and much noise


def toy_pairs(t, n, gen):
    """n draws of (x_t, eps) on the toy at code timestep t (float64)."""
    x0 = toy.sample(n, gen)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return toy_d.q_sample(x0, t, eps), eps


def eps_mean(x_t, t):
    """The exact E[eps | x_t] = -sigma grad log p_sigma(x_t / sqrt(alpha_bar)), sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    sigma = float(toy_d.sigmas[t])
    return -sigma * toy.score(x_t / float(toy_d.sqrt_alpha_bars[t]), sigma)


start, gen, fits = time.perf_counter(), cpu_generator(0), {}
for t in toy_ts:
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))
    opt = torch.optim.Adam(f.parameters(), lr=5e-3)
    for k in range(600):
        x_t, eps = toy_pairs(t, 512, gen)
        opt.param_groups[0]["lr"] = 5e-3 * (1 - k / 600)  # decay to 0, so the fit settles
        loss = ((f(x_t.float()) - eps.float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fits[t] = f
print(f"three MLPs trained on the squared error in {time.perf_counter() - start:.0f} s")

held_out = {t: toy_pairs(t, 20_000, cpu_generator(1)) for t in toy_ts}
line = torch.stack([torch.linspace(-3, 3, 200), torch.zeros(200)], dim=1).double()  # x_t on the line (u, 0)
fig, axes = plt.subplots(1, len(toy_ts), figsize=(12, 3.4), sharey=True)
for ax, t in zip(axes, toy_ts):
    x_t, eps = held_out[t]
    near = x_t[:, 1].abs() < 0.1  # samples whose x_t lies near the line
    ax.scatter(x_t[near, 0], eps[near, 0], s=2, alpha=0.25, color="0.5", label=r"drawn $\varepsilon$ ($|x_{t,2}| < 0.1$)")
    ax.plot(line[:, 0], eps_mean(line, t)[:, 0], color="k", label=r"exact $\mathbb{E}[\varepsilon \mid x_t]$")
    with torch.no_grad():
        ax.plot(line[:, 0], fits[t](line.float())[:, 0], "--", color="tab:orange", label="MLP trained on the squared error")
    ax.set(title=f"code t = {t}: $\\sigma$ = {float(toy_d.sigmas[t]):.2f}", xlabel=r"$x_t$, first coordinate (second = 0)")
axes[0].set_ylabel(r"$\varepsilon$, first coordinate")
axes[0].legend(fontsize=7, loc="lower left", markerscale=4)
fig.suptitle("the squared-error fit lands on the conditional mean of the noise (2-D ring toy)", y=1.03);

# %% [markdown]
# Where $x_t$ never falls (at small $t$, the empty middle of the ring) the loss says nothing, and
# the fit is free to differ from the exact curve; the loss, and so the check, weighs each $x_t$ by
# how often it occurs. The check, on 20,000 held-out pairs per timestep: the fit's squared
# distance from the exact $\mathbb E[\varepsilon \mid x_t]$ must be under 15% of how much
# $\mathbb E[\varepsilon \mid x_t]$ itself varies (its variance over $x_t$), and the
# decomposition above must hold: the fit's loss minus the floor equals that distance, up to the
# sampling error of the cross term.

# %%
floors = {}
print("code t   floor   fit's loss   distance to E[eps|x_t]   variance of E[eps|x_t]   (per coordinate)")
for t in toy_ts:
    x_t, eps = held_out[t]
    m = eps_mean(x_t, t)
    with torch.no_grad():
        fx = fits[t](x_t.float()).double()
    floors[t], fit_loss = ((eps - m) ** 2).mean().item(), ((eps - fx) ** 2).mean().item()
    floor = floors[t]
    distance, spread = ((fx - m) ** 2).mean().item(), m.var(0).mean().item()
    print(f"{t:6d}   {floor:5.3f}   {fit_loss:10.3f}   {distance:22.4f}   {spread:22.3f}")
    assert distance < 0.15 * spread, f"t = {t}: the fit is far from the conditional mean"
    assert abs(fit_loss - floor - distance) < 0.01, f"t = {t}: the decomposition does not hold"
assert max(floors, key=floors.get) == toy_ts[0], "the floor is not highest at the smallest t"

# %% [markdown]
# The fit's loss never reaches zero: it sits on the floor, and the floor differs from one $t$ to
# the next (here it is highest at the smallest $t$). The decomposition holds for the U-Net on
# images too, so a loss by timestep (below) measures how much of the noise $x_t$ leaves
# undetermined as much as how well the network learned.
#
# ## One training step, by hand
#
# A step of training is: draw $t$ and $\varepsilon$ (uniform $t$ here; the laptop and smoke
# profiles draw $t$ by importance sampling, which keeps the same objective with less variance and
# which notebook 07 explains, so the check below sets `timesteps="uniform"`), the weighted loss, backward, clip the
# gradient's norm to 1, an Adam step at the learning rate `lr * lr_factor(k)` at step $k$
# (`TrainConfig.lr_factor`: a linear warm-up $\min(1, (k+1)/\text{warm-up})$, then the
# profile's decay, if it has one), then the EMA of the weights with its own warm-up,
# decay $\min(\text{decay}, (1+k)/(10+k))$ (notebook 06). Five steps written out and five
# steps of `Trainer.train_step`, from the same weights, batch and random draws (both in float32:
# the check turns off the mixed precision that the Trainer would use on a GPU):

# %%
import copy

from helpers.training import TrainConfig, Trainer

step_config = TrainConfig.from_profile(profile, timesteps="uniform", eval_every=0, sample_every=0, amp=False, compile=False)  # fp32 on any device
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
    (d.loss_weight(t) * per_image).mean().backward()  # w(t): this profile's weighting (1 for the plain loss)
    torch.nn.utils.clip_grad_norm_(net.parameters(), step_config.grad_clip)
    adam.param_groups[0]["lr"] = step_config.lr * step_config.lr_factor(k)
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
# `Trainer` runs exactly that step: the profile's loss, $t$ as the profile draws it
# (`config.timesteps`, printed below), Adam with the learning rate above,
# gradient clipping at norm 1 (as DDPM's code does), mixed precision on GPUs that have it (bf16,
# or fp16 with a gradient scaler on older ones), a metrics log (`metrics.jsonl`), the loss by
# timestep bucket, and a sample grid every `sample_every` steps. It also keeps the exponential
# moving average (EMA) of the weights; notebook 06 explains it and measures whether it samples
# better than the last weights. It writes its checkpoint as it goes: if one from an earlier run
# exists, training continues from it (delete the file to start over). While it runs, the plot
# under the cell redraws the loss (a saved notebook keeps that plot empty; the next section
# draws the curve again), and a line at the end says how long it took. The command line
# `python -m helpers train --profile <name>` runs the same recipe outside Jupyter;
# `docs/laptop-recipe.md` shows how the laptop one was chosen.

# %% tags=["nbval-ignore-output"]
from helpers.training import TrainConfig, Trainer
from helpers.viz import LiveLossPlot

ckpt_path = profile.checkpoint("eps")
log_dir = profile.artifacts / "logs" / "03_ddpm_eps"
config = TrainConfig.from_profile(profile, eval_every=0)  # FID during training is notebook 06's
print(f"{config.steps} steps of batch {config.batch_size}, t drawn {config.timesteps}, Adam at {config.lr:g} "
      f"(learning-rate decay: {config.lr_decay}), loss weighting {d.loss_weighting}")
torch.manual_seed(0)
trainer = Trainer(UNet(**model_config), d, data, config, device, out_dir=log_dir, progress=False)
if ckpt_path.exists():
    trainer.load(ckpt_path)
    print(f"continuing {ckpt_path} from step {trainer.step}")
first_step, train_start = trainer.step, time.perf_counter()
trainer.train(callback=LiveLossPlot(f"training loss [{profile.name}]"), save_to=ckpt_path, save_every=1000, profile=profile.name)
print(f"step {trainer.step}: {trainer.step - first_step} steps trained in {(time.perf_counter() - train_start) / 60:.1f} minutes; saved {ckpt_path}")

# %% [markdown]
# ## The loss curve
#
# Each point is the mean loss over one logging window (`log_every` steps); the smoothed line is
# the geometric mean (the mean of the log-loss, the scale it is drawn on) of up to nine windows
# centred on each point, the window shrinking near the ends to stay centred. A centred window
# does not trail behind a falling curve the way a running average does, but where the curve
# bends sharply (early in training) it averages the steep part with the flat one and
# sits above the raw points; the first printed line says by how much, and how closely it follows
# the curve after the first quarter of training. At initialisation the model outputs zero, so
# the loss starts at $\mathbb E_t[w(t)]\;\mathbb E\|\varepsilon\|^2 / \dim = \mathbb E_t[w(t)]$:
# 1 for the plain loss, less with min-SNR weighting (printed). The first point averages the
# first `log_every` steps, over which the loss has already fallen below that.

# %%
from helpers.viz import centred_mean, plot_bucket_losses, plot_loss_curve

rows = [r for r in trainer.history if "loss" in r]
raw = [r["loss"] for r in rows]
smooth = [math.exp(v) for v in centred_mean([math.log(v) for v in raw], 4)]  # what plot_loss_curve draws
ratio = [s / r for s, r in zip(smooth, raw)]
worst, quarter = max(range(len(ratio)), key=ratio.__getitem__), len(ratio) // 4
print(f"smoothed / raw: at most {ratio[worst]:.2f} (step {rows[worst]['step']}); from step {rows[quarter]['step']} on "
      f"within {max(abs(q - 1) for q in ratio[quarter:]):.0%} of 1")
loss_at_init = d.loss_weight(torch.arange(d.T)).mean().item()
print(f"E_t[w(t)] = {loss_at_init:.3f} ({d.loss_weighting} weighting); "
      f"loss {rows[0]['loss']:.3f} at step {rows[0]['step']} -> {rows[-1]['loss']:.3f} at step {rows[-1]['step']}; "
      f"{rows[-1]['img_per_s']:.0f} images/s at the end on {device.type}")
if profile.name != "smoke":
    assert rows[0]["loss"] < loss_at_init, "the first window's loss is not below the loss at initialisation"
plot_loss_curve(trainer.history, title=f"training loss, {profile.name} profile");

# %% [markdown]
# ## Loss by timestep
#
# The average hides a strong dependence on $t$. The trainer logs each image's loss in ten
# buckets of $T/10$ timesteps (below: the mean over the last quarter of training). That is the
# **weighted** loss, the one being minimised. To see what the weight does, the next cell also
# evaluates the final weights on 64 training images at a grid of timesteps, one noise for all,
# and plots the squared error on $\varepsilon$ both without and with the weight $w(t)$.

# %%
buckets = trainer.log.bucket_losses(since=trainer.step * 3 // 4)
print("bucket:  " + "  ".join(f"{i * d.T // 10:>4}+" for i in range(10)))
print("loss:    " + "  ".join(f"{v:5.3f}" for v in buckets))

probe_ts = (torch.tensor([0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1])
            * (d.T - 1)).round().long().unique()
images = data.tensors()[0][:64].to(device)
noise = torch.randn(images.shape, generator=cpu_generator(0)).to(device)
trainer.model.eval()
with torch.no_grad():
    unweighted = torch.stack([((trainer.model(d.q_sample(images, tt, noise), tt) - noise) ** 2).mean()
                              for tt in probe_ts.repeat_interleave(len(images)).view(-1, len(images)).to(device)]).cpu()
trainer.model.train()
weights = d.loss_weight(probe_ts)
weighted = weights * unweighted

fig, (ax, ax_w) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
ax.plot(probe_ts, unweighted, "o-", ms=3, label=r"unweighted: $\|\varepsilon - \varepsilon_\theta\|^2$ per pixel")
ax.plot(probe_ts, weighted, "o-", ms=3, label=r"weighted: $w(t)\,\|\varepsilon - \varepsilon_\theta\|^2$ (what is trained)")
plot_bucket_losses(buckets, d.T, ax=ax, label="weighted, training log (last quarter, by bucket)",
                   title=f"noise-prediction error by timestep, final weights [{profile.name}]")
ax.set(xlabel="code timestep t", ylabel="mean squared error per pixel")
ax.legend(fontsize=7)
ax_w.plot(torch.arange(d.T), d.loss_weight(torch.arange(d.T)), color="tab:green")
ax_w.set(yscale="log", xlabel="code timestep t", ylabel="w(t)", title=f"the weight w(t) ({d.loss_weighting})")
fig.tight_layout()

peak_w, peak_u = int(probe_ts[weighted.argmax()]), int(probe_ts[unweighted.argmax()])
if d.loss_weighting == "min_snr":
    t_full = int(torch.nonzero(d.snr <= d.min_snr_gamma)[0])  # from here on w(t) = 1
    print(f"w(t) < 1 below code t = {t_full} (SNR > {d.min_snr_gamma:g}), down to w = {weights[0]:.1e} at t = 0; "
          f"the weighted error peaks at t = {peak_w}, the unweighted one at t = {peak_u}")
    if profile.name != "smoke":
        assert peak_u < t_full and abs(peak_w - t_full) <= 0.05 * d.T, "the peaks moved: reread the text below"
        assert unweighted[-1] < 0.1 * unweighted.max(), "the error at the last t is not near zero"
else:
    print(f"this profile trains the plain loss: w(t) = 1, the two curves coincide; the error peaks at t = {peak_u}")

# %% [markdown]
# The unweighted error is largest at small $t$, where $x_t$ is nearly the image: there the noise
# is small next to the image's own fine texture, and part of it cannot be told apart from that
# texture at all (the toy's floor, too, was highest at the smallest of its three $t$; exercise 3
# asks why). At large $t$, $x_t$ is nearly $\varepsilon$ itself and the error goes to zero. Under min-SNR weighting the trained loss multiplies this by $w(t)$, which is
# tiny where the SNR is large, so the weighted curve, and the training log's buckets, peak where
# $w$ reaches 1 (printed above): **that peak is the weight's, not the hardest timestep**. With the
# plain loss (the smoke profile) the two curves are the same.
#
# ## Samples during training
#
# Every `sample_every` steps the trainer draws the same noises (`grid_size` of them) through a
# short DDIM run (notebook 05) with the EMA weights, so the grids differ only by training. Three
# are shown, the first, a middle one and the last, 16 samples of each. The printed line gives,
# for every grid, its mean absolute pixel difference from the last one (pixels in $[0, 1]$): how
# much the samples still changed after that step.

# %%
grids = sorted((log_dir / "grids").glob("step_*.png"))
pictures = {int(p.stem.split("_")[1]): plt.imread(p) for p in grids}
final = pictures[max(pictures)]
print("mean |grid - last grid|: " + ", ".join(f"step {s} {abs(img - final).mean():.3f}" for s, img in pictures.items()))
nrow = round(config.grid_size**0.5)  # save_grid lays the samples out nrow x nrow, 1-pixel borders
cell = (final.shape[0] - 1) // nrow
shown = [grids[round(i)] for i in torch.linspace(0, len(grids) - 1, min(3, len(grids))).tolist()]
fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.9), squeeze=False)
for ax, path in zip(axes[0], shown):
    ax.imshow(pictures[int(path.stem.split("_")[1])][: 1 + 4 * cell, : 1 + 4 * cell], cmap="gray", interpolation="nearest")
    ax.set_title(f"step {int(path.stem.split('_')[1])}")
    ax.set_axis_off()
fig.suptitle(f"16 samples from fixed noise during training (DDIM, EMA weights) [{profile.name} profile]");

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
# Each exercise is a function to write. The cell after it checks your function and prints ✓,
# what is wrong, or "not done yet". The solutions are in `notebooks/solutions/03_training.py`.
#
# **1. The min-SNR loss, written on $\hat x_0$.** Hang et al. state min-SNR-$\gamma$ as a loss on
# the clean image, $\min(\mathrm{SNR}(t), \gamma)\,\|\hat x_0 - x_0\|^2$, where $\hat x_0$ is the
# image that $x_t$ and the network's $\hat\varepsilon$ imply. Write the training loss that way,
# from the network's $\hat\varepsilon$, without forming $\|\hat\varepsilon - \varepsilon\|^2$. The
# check compares it with `Diffusion.loss` under min-SNR-$\gamma$ on the same $t$ and noise; it
# agrees only if the two forms are the same loss.

# %%
def min_snr_loss_x0(model, alpha_bars, x0, t, noise, gamma):
    """The batch mean of min(SNR_t, gamma) * (per-pixel mean of (x0_hat - x0)^2), where x_t is x0
    noised with `noise` at code timesteps t and x0_hat is the x_0 implied by x_t and model(x_t, t),
    an eps prediction. alpha_bars: float64 [T]; x0, noise: [B, C, H, W]; t: integer tensor [B]."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(min_snr_loss_x0)

# %% [markdown]
# **2. $\mathbb E[\varepsilon \mid x_t]$ from a denoiser.** Above, the toy's
# $\mathbb E[\varepsilon \mid x_t]$ came from its score. Compute it instead from a **denoiser**,
# a function `denoiser(x, sigma)` that returns $\mathbb E[x_0 \mid x_0 + \sigma\varepsilon = x]$ in
# the units $x = x_t/\sqrt{\bar\alpha_t}$ (hint: take $\mathbb E[\,\cdot \mid x_t]$ of both sides of
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$). The check hands you a
# mixture's denoiser and compares with its exact score.

# %%
def eps_from_denoiser(denoiser, x_t, alpha_bar):
    """E[eps | x_t] [N, D] for x_t [N, D] at alpha_bar (a float), using only denoiser(x, sigma)."""
    raise NotImplementedError  # your code here


# %%
check(eps_from_denoiser)

# %% [markdown]
# **3. Predict the floor.** The toy's fits stopped at a floor,
# $\mathbb E\,\|\varepsilon - \mathbb E[\varepsilon \mid x_t]\|^2$. Predict it, per coordinate,
# for data made of Gaussian components of standard deviation $\kappa$ so far apart that $x_t$
# always tells which component it came from: a formula in $\kappa$ and $\bar\alpha_t$. The check
# measures the floor by Monte Carlo on such a mixture (10,000 draws, the exact conditional
# mean) for three $\kappa$ and three $\bar\alpha$, and accepts a prediction within 5%. What does
# your formula say about images, whose fine texture is small next to the noise at small $t$?

# %%
def eps_loss_floor(kappa, alpha_bar):
    """The lowest mean squared error per coordinate any eps-predictor can reach at alpha_bar, on
    well-separated isotropic Gaussian components of standard deviation kappa (floats)."""
    raise NotImplementedError  # your code here


# %%
check(eps_loss_floor)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
