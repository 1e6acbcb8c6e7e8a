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
# # 12 · Flow matching and rectified flow: a straight path from data to noise
#
# Stable Diffusion 3 and Flux are not trained with DDPM's loss. They are trained with **flow
# matching** on a straight line between an image and its noise (rectified flow, Liu et al. 2023; flow
# matching, Lipman et al. 2023; stochastic interpolants, Albergo & Vanden-Eijnden 2023), and sampled
# by integrating an ODE, the kind of ODE notebook 09 solved. This notebook builds that objective from
# its equation on the 2-D ring of notebooks 09 and 11, whose exact velocity field is known. It shows on
# the same noise that 03's ε-model and the flow model, the latter also read as a $v$-model (07's
# parameterisation), are sampled by one and the same step, written in different coordinates. It then compares two laws for the training time t, puts the flow model beside 03's model and
# 11's consistency model in one FID table against the number of network evaluations (NFE), and
# straightens the flow by **reflow**. Symbols are those of the [notation](../docs/notation.md) page,
# with one change: here $t \in [0, 1]$ is continuous flow time, 0 is data and 1 is noise, and DDPM's
# timesteps appear only as code indices.
#
# It needs `03_ddpm_eps.pt` (notebook 03) and `11_cd.pt` (notebook 11), and the flow model
# `12_flow.pt`, which it trains with the profile's recipe when the file is missing (under `laptop` the
# shipped one in `pretrained/` is used; the same recipe on the command line is
# `python -m helpers train --prediction velocity --time-sampling logit_normal`).

# %%
import json
import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from helpers.checkpoints import load_model
from helpers.config import TrainConfig, setup
from helpers.data import profile_dataset
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.flow import FlowEuler, FlowHeun, FlowMatching, flow_times, reflow_pairs, straightness
from helpers.paths import card, shipped_for
from helpers.samplers import DDIM, Trajectory, ddim_timesteps, sample
from helpers.toy import GaussianMixture
from helpers.training import Trainer
from helpers.unet import UNet
from helpers.viz import show_grid

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
eps_path = profile.require("eps")
eps_model, d, eps_ckpt = load_model(eps_path, device)
print(f"03's eps-model: {eps_ckpt['step']} training steps; {d}")

# %% [markdown]
# ## The straight path and its velocity
#
# Join each data point $x_0$ to its own noise $\varepsilon \sim \mathcal N(0, I)$ by a straight line,
#
# $$x_t = (1 - t)\,x_0 + t\,\varepsilon, \qquad t \in [0, 1], \qquad \frac{\mathrm d x_t}{\mathrm d t} = \varepsilon - x_0 .$$
#
# Along one line the velocity is constant. But a point $x$ at time $t$ lies on many lines, one for
# every pair $(x_0, \varepsilon)$ that passes through it, and an ODE needs one velocity per point. The
# **marginal velocity** is the average over those lines,
#
# $$u(x, t) = \mathbb E[\varepsilon - x_0 \mid x_t = x],$$
#
# and the ODE $\mathrm dx/\mathrm dt = u(x, t)$, run backwards from $t = 1$, carries $\mathcal N(0, I)$ onto the
# data. At every $t$ it moves probability as the bundle of lines does (Liu et al. 2023, Theorem 3.3;
# Lipman et al. 2023, Theorem 1). The regression target needs no average: for any function $u_\theta$,
#
# $$\underbrace{\mathbb E\,\|u_\theta(x_t, t) - (\varepsilon - x_0)\|^2}_{\text{the flow-matching loss}} = \mathbb E\,\|u_\theta(x_t, t) - u(x_t, t)\|^2 + \underbrace{\mathbb E\,\|(\varepsilon - x_0) - u(x_t, t)\|^2}_{\text{no }\theta} ,$$
#
# because, given $(x_t, t)$, the error $(\varepsilon - x_0) - u(x_t, t)$ has mean zero and so is uncorrelated
# with anything that depends on $(x_t, t)$ alone. Regressing on the line's own velocity is regressing on the
# marginal one, with a floor: the loss cannot go below the second term. This is the argument by which
# DDPM's ε-loss learns $\mathbb E[\varepsilon \mid x_t]$ (notebook 03).
#
# On the ring of notebooks 09 and 11 the marginal velocity has a closed form
# (`GaussianMixture.velocity`). A small network, trained on the loss written out in the cell (the
# time is uniform on [0, 1]):

# %%
toy = GaussianMixture.ring(k=6, radius=2.0, std=0.25)


class ToyVelocity(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def fit_toy(draw, steps=2000, batch=256, seed=0):
    """A ToyVelocity regressed on eps - x_0 at uniform t; draw(n, generator) gives n pairs (x_0, eps)."""
    torch.manual_seed(seed)
    net = ToyVelocity().double()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = cpu_generator(seed)
    for _ in range(steps):
        x0, eps = draw(batch, gen)
        t = torch.rand(batch, generator=gen, dtype=torch.float64)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * eps  # the straight path
        loss = (net(x_t, t) - (eps - x0)).pow(2).sum(1).mean()  # regress on the line's own velocity
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.requires_grad_(False)


toy_start = time.perf_counter()
toy_net = fit_toy(lambda n, gen: (toy.sample(n, gen), torch.randn(n, 2, generator=gen, dtype=torch.float64)))  # x_0 and eps independent
print(f"2,000 steps of batch 256 in {time.perf_counter() - toy_start:.0f} s")

# %% [markdown]
# Three checks on 20,000 fresh draws of $(x_0, \varepsilon, t)$ ($t$ at the midpoints of 50 bins, since the closed
# form takes one $t$ at a time): the learned field against the exact one;
# the decomposition above, term by term; and the loss by hand against `FlowMatching.loss`, which
# calls a network at `time_scale` × t (1000 × t for the U-Net, the range of DDPM's timesteps that its
# embedding saw; 1 × t for this toy network, which takes $t$ itself).

# %%
gen = cpu_generator(1)
n_check = 20_000
x0 = toy.sample(n_check, gen)
eps = torch.randn(n_check, 2, generator=gen, dtype=torch.float64)
t = (torch.randint(0, 50, (n_check,), generator=gen) + 0.5).double() / 50  # the midpoints of 50 equal bins of [0, 1]
x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
exact_all = torch.empty_like(x_t)
for s in t.unique():  # the closed form takes one t per call
    exact_all[t == s] = toy.velocity(x_t[t == s], float(s))
learned = toy_net(x_t, t)
target = eps - x0
loss_learned = (learned - target).pow(2).sum(1).mean()
floor = (exact_all - target).pow(2).sum(1).mean()
gap = (learned - exact_all).pow(2).sum(1).mean()
print(f"flow-matching loss of the learned field {loss_learned:.4f}; of the exact field (the floor) {floor:.4f}; "
      f"E||u_theta - u||^2 = {gap:.4f}; floor + gap = {floor + gap:.4f}")
cross = 2 * ((learned - exact_all) * (exact_all - target)).sum(1)
se = cross.std() / math.sqrt(n_check)
print(f"the cross term 2 E[(u_theta - u) . ((eps - x0) - u)] = {cross.mean():+.4f} (standard error {se:.4f}): "
      + ("zero within 3 standard errors, as the argument says" if abs(cross.mean()) < 3 * se else "NOT zero: the decomposition fails here"))
assert abs(cross.mean()) < 3 * se
rel = (learned - exact_all).norm(dim=1) / exact_all.norm(dim=1)
print(f"|u_theta - u| / |u|, median over the draws: {rel.median():.3f}; for t < 0.1: {rel[t < 0.1].median():.3f}; for t > 0.9: {rel[t > 0.9].median():.3f}")

fm_toy = FlowMatching(time_scale=1.0)
by_helper = fm_toy.loss(lambda x, s: toy_net(x, s.double()), x0[:512], t=t[:512], noise=eps[:512])
by_hand = (toy_net(x_t[:512], t[:512]) - target[:512]).pow(2).mean()  # FlowMatching.loss averages over coordinates
assert torch.allclose(by_helper.double(), by_hand, atol=1e-6)
print(f"the loss by hand == helpers.flow.FlowMatching.loss on the first 512 draws ({by_hand:.5f}); "
      "both average over the two coordinates, where the lines above sum them")

# %% [markdown]
# The figure puts the exact field and the learned one side by side at three times, over the density
# of $x_t$ (blue), with Euler paths of the ODE (40 steps) from 12 noise draws. The paths bend because the
# average over lines changes direction as $t$ falls: near $t = 1$ the field points every $x$ towards the
# data's mean, the origin (at $t = 1$ exactly, $x_t$ is the noise and says nothing about $x_0$, so
# $u(x, 1) = x - \mathbb E[x_0]$), and only later towards one component. How many paths end in a component is printed under the figure.

# %%
lim = 3.2
ticks = torch.linspace(-lim, lim, 17, dtype=torch.float64)
grid = torch.cartesian_prod(ticks, ticks).flip(1)
fine = torch.linspace(-lim, lim, 121, dtype=torch.float64)
dense = torch.cartesian_prod(fine, fine).flip(1)
path_times = flow_times(40)
starts = torch.randn(12, 2, generator=cpu_generator(2), dtype=torch.float64)


def euler_path(field, x, times):
    """The states of Euler on dx/dt = field(x, t) at ``times`` (from 1 down to 0)."""
    states = [x]
    for t_now, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x = x + (t_next - t_now) * field(x, t_now)
        states.append(x)
    return torch.stack(states)


fields = {"exact u(x, t)": lambda x, s: toy.velocity(x, s), "learned u_theta(x, t)": lambda x, s: toy_net(x, torch.full((len(x),), s, dtype=torch.float64))}
fig, axes = plt.subplots(2, 4, figsize=(12.5, 6.4), layout="constrained")
for row, (name, field) in enumerate(fields.items()):
    for col, s in enumerate((0.9, 0.5, 0.2)):
        ax = axes[row, col]
        density = toy._log_components(dense, s, scale=1 - s)[0].logsumexp(1).exp().reshape(121, 121)  # p of x_t: components scaled by 1 - t, noise t
        ax.contourf(fine, fine, density, levels=8, cmap="Blues")
        arrows = -field(grid, s)  # the direction of travel as t falls: -u
        ax.quiver(grid[:, 0], grid[:, 1], arrows[:, 0], arrows[:, 1], color="tab:red", scale=40, width=0.004)
        ax.set(title=f"{name}, t = {s}", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="first coordinate", ylabel="second coordinate")
    ax = axes[row, 3]
    ax.contourf(fine, fine, toy.log_prob(dense, 0.0).exp().reshape(121, 121), levels=8, cmap="Blues")
    paths = euler_path(field, starts, path_times)
    for k in range(len(starts)):
        ax.plot(paths[:, k, 0], paths[:, k, 1], "-", color=f"C{k % 10}", lw=1)
        ax.plot(*paths[0, k], "o", color=f"C{k % 10}", ms=3)
    ax.set(title=f"paths of the {name.split()[0]} field, t = 1 (dots) to 0", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="first coordinate", ylabel="second coordinate")
fig.suptitle("the marginal velocity of the ring mixture, drawn as -u (the way x moves as t goes from 1 to 0), exact (top) and learned (bottom)")
paths_exact, paths_learned = (euler_path(f, starts, path_times) for f in fields.values())
end_gap = (paths_exact[-1] - paths_learned[-1]).norm(dim=1)
print(f"ends of the 12 paths, learned field against exact: median distance {end_gap.median():.3f}, largest {end_gap.max():.3f} "
      f"(a component's std is {float(toy.stds[0]):g})")
landed = ((paths_exact[-1][:, None, :] - toy.means[None]).norm(dim=-1).min(1).values < 3 * toy.stds[0]).sum()
print(f"{landed} of the 12 exact paths end within 3 component stds of a component's mean")
print(f"straightness (Liu et al. 2023, eq. 5; 0 for a straight path) of the exact paths: median {straightness(paths_exact, path_times).median():.3f}")

# %% [markdown]
# ## Three parameterisations, one sampler step
#
# Notebook 09 wrote DDPM's noisy image $x^{\text{DDPM}} = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon$ in
# VE units, $x^{\text{DDPM}}/\sqrt{\bar\alpha} = x_0 + \sigma\varepsilon$ with $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$.
# Divide by $1 + \sigma$:
#
# $$\frac{x_0 + \sigma\varepsilon}{1 + \sigma} = (1 - t)\,x_0 + t\,\varepsilon, \qquad t = \frac{\sigma}{1 + \sigma} .$$
#
# So every noisy image of the DDPM process, rescaled, lies on the flow's straight path, at flow time
# $t = \sigma/(1+\sigma)$ (from $x^{\text{DDPM}}$ directly: divide it by $\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha}$). What
# each model predicts converts exactly on the same point. From 03's $\hat\varepsilon$,
# $\hat x_0 = (x^{\text{DDPM}} - \sqrt{1-\bar\alpha}\,\hat\varepsilon)/\sqrt{\bar\alpha}$ and the flow's velocity is
# $\hat u = \hat\varepsilon - \hat x_0$. From a $v$-model (07), $v = \sqrt{\bar\alpha}\,\varepsilon - \sqrt{1-\bar\alpha}\,x_0$,
# $\hat u = (\sqrt{1-\bar\alpha} - \sqrt{\bar\alpha})\,x^{\text{DDPM}} + (\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})\,\hat v$
# (`FlowMatching.velocity_from_v`). Notebook 09 showed that DDIM is Euler's method on the
# probability-flow ODE in the coordinates $x^{\text{DDPM}}/\sqrt{\bar\alpha}$ and $\sigma$. It is also **Euler's
# method on the flow**, in the coordinates $x^{\text{DDPM}}/(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})$ and $t$: a DDIM
# step keeps the step's $\hat x_0$ and $\hat\varepsilon$ and mixes them again at the next noise level, and an
# Euler step of the flow, $x + (t' - t)(\hat\varepsilon - \hat x_0)$ from $x = (1-t)\hat x_0 + t\hat\varepsilon$, lands on
# $(1-t')\hat x_0 + t'\hat\varepsilon$, the same mix. So an ε-model, a $v$-model and a flow model are sampled by
# the same step; each network defines its own ODE, through what it learned. Checked below on real
# networks and the same noise.
#
# Euler on the flow, by hand, over any list of times:

# %%
def flow_euler(velocity, x, times):
    """Euler on dx/dt = velocity(x, t) over ``times`` (decreasing, from about 1 to 0): x <- x + (t' - t) u."""
    for t_now, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t_now) * velocity(x, t_now)
    return x


ab = d.alpha_bars  # float64
steps = 10
grid_t = ddim_timesteps(d.T, steps)  # DDIM's 10 timesteps, trailing: 999, 899, ..., 99
sigma_ve = ((1 - ab[grid_t]) / ab[grid_t]).sqrt()  # sigma of each timestep (VE units, notebook 09)
flow_t = (sigma_ve / (1 + sigma_ve)).tolist() + [0.0]  # the same grid in flow time; DDIM's last step lands on x_0, t = 0
timestep_at = dict(zip(flow_t, grid_t))


@torch.no_grad()
def eps_model_as_velocity(y, t_flow):
    """03's eps-model on the flow's state y at flow time t_flow (one of flow_t): back to DDPM's
    x = (sqrt(ab) + sqrt(1 - ab)) y at that timestep, then u = eps_hat - x0_hat."""
    tau = timestep_at[t_flow]
    a, b = float(ab[tau].sqrt()), float((1 - ab[tau]).sqrt())  # sqrt(alpha_bar), sqrt(1 - alpha_bar)
    x = (a + b) * y
    eps_hat = eps_model(x, torch.full((len(y),), tau, device=y.device))
    return eps_hat - (x - b * eps_hat) / a


shape = (8, eps_model.in_channels, eps_model.image_size, eps_model.image_size)
z = torch.randn(shape, generator=cpu_generator(3)).to(device)
by_ddim = sample(eps_model, d, z, DDIM(steps, clip_x0=False), progress=False, clamp=False)
y_start = z / float(ab[grid_t[0]].sqrt() + (1 - ab[grid_t[0]]).sqrt())  # DDIM's x_T as a flow state
by_flow = flow_euler(eps_model_as_velocity, y_start, flow_t)
gap_eps = (by_ddim - by_flow).abs().max().item()
print(f"03's eps-model, {steps} steps from the same noise: DDIM (unclipped) against Euler on the flow: max |difference| {gap_eps:.1e} "
      f"(pixels in [-1, 1]; float32 arithmetic)")
assert gap_eps < 1e-3

# %% [markdown]
# The other direction: the flow model (the next cell loads it) can be sampled by 05's
# DDIM as if it were a $v$-model (07's parameterisation). Wrap it so that it answers with $\hat v$ on DDIM's
# $x^{\text{DDPM}}$; DDIM then draws the same images as Euler on the flow from the same noise. The next
# cell loads the flow model, or trains it when the file is missing:

# %%
flow_path = profile.checkpoint("velocity")
data = profile_dataset(profile)
if not flow_path.exists() and shipped_for(flow_path) is None:  # train it here (smoke; laptop without the shipped file)
    config = TrainConfig.from_profile(profile, timesteps="uniform", eval_every=0, sample_every=0)
    torch.manual_seed(0)
    train_start = time.perf_counter()
    Trainer(UNet(**profile.model), FlowMatching("logit_normal"), data, config, device, progress=False).train(save_to=flow_path, profile=profile.name)
    print(f"trained {flow_path.name}: {config.steps} steps in {(time.perf_counter() - train_start) / 60:.1f} minutes")
flow_path = profile.require("velocity")
flow, fm, flow_ckpt = load_model(flow_path, device)
assert (flow_ckpt["step"], flow_ckpt["train"]["batch_size"]) == (eps_ckpt["step"], eps_ckpt["train"]["batch_size"]), "the comparisons below assume equal training"
print(f"flow model: {flow_path.name}, {flow_ckpt['step']} training steps of batch {flow_ckpt['train']['batch_size']}, {fm}; "
      f"03's eps-model: {eps_ckpt['step']} steps of batch {eps_ckpt['train']['batch_size']}, the same U-Net ({sum(p.numel() for p in flow.parameters()):,} parameters)")
for key, path in (("velocity", flow_path), ("eps", eps_path)):
    if path == shipped_for(profile.checkpoint(key)):  # a shipped model's card says how long it trained
        print(f"{path.name}: {card(path)['minutes']} minutes on {card(path)['machine']} ({card(path).get('minutes_note', 'its training run')})")

# %%
d_v = Diffusion.from_config({**d.config(), "prediction": "v", "loss_weighting": "none"})  # the same schedule, read as a v-model


@torch.no_grad()
def flow_as_v_model(x, timesteps):
    """The flow model answering as a v-model on DDIM's x at code timesteps: y = x / (a + b) at flow
    time b / (a + b) (a = sqrt(ab), b = sqrt(1 - ab)), then v from u."""
    abar = ab.to(x.device)[timesteps].float()
    a, b = abar.sqrt(), (1 - abar).sqrt()
    u = fm.velocity(flow, x / (a + b).view(-1, 1, 1, 1), b / (a + b))
    return fm.v_from_velocity(x, u, a, b)  # the helper's (alpha, sigma) are DDPM's a and b


@torch.no_grad()
def flow_velocity(y, t_flow):
    return fm.velocity(flow, y, t_flow)


by_ddim_v = sample(flow_as_v_model, d_v, z, DDIM(steps, clip_x0=False), progress=False, clamp=False)
by_flow_v = flow_euler(flow_velocity, y_start, flow_t)
gap_v = (by_ddim_v - by_flow_v).abs().max().item()
print(f"the flow model, {steps} steps from the same noise: DDIM on it as a v-model against Euler on the flow: max |difference| {gap_v:.1e}")
assert gap_v < 1e-3
uniform_t = flow_times(steps).tolist()
assert torch.allclose(flow_euler(flow_velocity, z, uniform_t), sample(flow, fm, z, FlowEuler(steps), progress=False, clamp=False), atol=1e-5)
print("Euler by hand on uniform times == helpers.flow.FlowEuler on the same noise")
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), layout="constrained")
for ax, images, title in zip(axes, (by_ddim, by_flow, by_ddim_v, by_flow_v), ("03's eps-model: DDIM", "03's eps-model: Euler on the flow", "flow model: DDIM as a v-model", "flow model: Euler on the flow")):
    show_grid(images.clamp(-1, 1).cpu(), title, nrow=4, ax=ax)
fig.suptitle(f"one sampler step in two coordinates, two networks: {steps} steps from the same 8 noise images [{profile.name} profile]")

# %% [markdown]
# The two left grids match, and so do the two right grids (the printed differences are float
# rounding). The two networks were trained on different targets with different recipes, so they
# define different ODEs; which one gives better images is a question for FID, below.
#
# ## When to look: the law of the training time t
#
# Every training step draws a $t$ for each image. Uniform $t$ spends as many steps near the ends
# (almost clean, almost pure noise) as in the middle. Esser et al. (2024, §3.1) draw
# $t = \operatorname{sigmoid}(m + s\,n)$, $n \sim \mathcal N(0, 1)$ (**logit-normal**, $m = 0$, $s = 1$, their
# symbols; this $s$ is not 08's guidance scale). This
# law puts more of the steps in the middle. Their argument: at the two ends the best prediction is
# nearly a mean (near $t = 0$ the mean of the noise, near $t = 1$ the mean of the data), so there is
# little for the network to learn there. That is a statement about what can be learned, not about the
# size of the loss (printed below at three times): the loss includes the floor of the decomposition
# above, which no network can remove. They compared such laws on ImageNet and CC12M and trained SD3 with this one; so was the shipped
# flow model. Here is
# the comparison at this course's scale: two models, identical but for the law, each trained for
# `compare_steps` steps from the same start. Their minutes are printed and should be about equal (the
# law costs nothing).

# %%
time_laws = {"uniform": FlowMatching("uniform"), "logit-normal": FlowMatching("logit_normal")}
short = {}
for name, process in time_laws.items():
    torch.manual_seed(0)
    config = TrainConfig.from_profile(profile, steps=profile.compare_steps, timesteps="uniform", eval_every=0, sample_every=0)
    run_start = time.perf_counter()
    short[name] = Trainer(UNet(**profile.model), process, data, config, device, progress=False).train()
    print(f"{name}: {config.steps} steps of batch {config.batch_size} in {(time.perf_counter() - run_start) / 60:.1f} minutes")

# %%
from helpers.evaluation import Evaluator
from helpers.metrics import extract_both, fid_interval, get_features

features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, fm, features)
test_images = profile_dataset(profile, train=False).tensors()[0][:256].to(device)
probe = torch.linspace(0.05, 0.95, 10).tolist()
replicates = 200  # each resample costs two FIDs; 200 keep an interval within seconds on a 2-core CPU


@torch.no_grad()
def held_out_loss(model, process, times, seed=5):
    """The flow-matching loss on 256 held-out images at each time, the same noise for every model."""
    gen = cpu_generator(seed)
    noise = torch.randn(test_images.shape, generator=gen).to(device)
    return [process.loss(model, test_images, t=torch.full((len(test_images),), s), noise=noise).item() for s in times]


law_scores, law_feats, law_losses = {}, {}, {}
for name, trainer in short.items():
    with trainer.ema.averaged(trainer.model):
        images = evaluator.images(trainer.model, sampler=FlowEuler(20))[0]  # the same noise for both models
        law_losses[name] = held_out_loss(trainer.model, trainer.diffusion, probe)
    law_scores[name], law_feats[name] = evaluator.score(images), extract_both(features, images)[0]
law_gap = fid_interval(evaluator.real, law_feats["logit-normal"], law_feats["uniform"], replicates=replicates)

# %%
fig, (ax_p, ax_l) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
tt = torch.linspace(0.001, 0.999, 400)
ax_p.plot(tt, torch.ones_like(tt), label="uniform")
ax_p.plot(tt, torch.exp(-torch.logit(tt) ** 2 / 2) / math.sqrt(2 * math.pi) / (tt * (1 - tt)), label="logit-normal (m = 0, s = 1)")
ax_p.set(title="the law of the training time t", xlabel="t (0 data, 1 noise)", ylabel="density")
logit_density = lambda s: math.exp(-math.log(s / (1 - s)) ** 2 / 2) / math.sqrt(2 * math.pi) / (s * (1 - s))
print(f"logit-normal density at t = 0.05 and 0.95: {logit_density(0.05):.3f}, {1 / logit_density(0.5) * logit_density(0.05):.0%} of its value at t = 0.5 ({logit_density(0.5):.2f})")
ax_p.legend()
for name in short:
    ax_l.plot(probe, law_losses[name], "o-", label=name)
ax_l.set(yscale="log", title=f"held-out flow-matching loss by t, EMA weights after {profile.compare_steps} steps",
         xlabel="t", ylabel="mean squared error of the velocity")
ax_l.legend()
fig.suptitle(f"uniform against logit-normal t [{profile.name} profile]")
q = law_scores["uniform"]
print(f"{q.n_fake} flow-Euler-20 samples each from the same noise vs {q.n_real} real images, {q.features} features; real-data floor: {q.floor}")
for name in short:
    print(f"{name:<13} FID {law_scores[name].fid:7.1f}   held-out loss at t = {probe[0]:.2f}: {law_losses[name][0]:.4f}, "
          f"t = {probe[4]:.2f}: {law_losses[name][4]:.4f}, t = {probe[-1]:.2f}: {law_losses[name][-1]:.4f}")
verdict = "no difference detected at this budget" if not law_gap.excludes_zero else f"{'logit-normal' if law_gap.estimate < 0 else 'uniform'} is better"
print(f"FID(logit-normal) - FID(uniform) = {law_gap}: {verdict} (one training run each)")
lower = [a < b for a, b in zip(law_losses["logit-normal"], law_losses["uniform"])]
print("held-out loss lower under logit-normal at t = " + (", ".join(f"{s:.2f}" for s, low in zip(probe, lower) if low) or "none of the probed times"))

# %% [markdown]
# The left panel is the law itself: near the ends the logit-normal density is a small fraction of its
# value in the middle (printed), so those times get few steps. The printed verdict says whether this short run shows a
# difference in FID. The right panel shows where in $t$ each law's model predicts better.
#
# ## FID against network evaluations: flow, diffusion and consistency
#
# The table samples, from the evaluator's noise (the same images for every row; the count is printed):
#
# - the flow model with Euler and with Heun (the trapezoid rule with an Euler predictor, two network
#   calls a step, one for the last);
# - 03's ε-model with DPM-Solver++(2M) (the best of notebook 09's samplers at 10 evaluations);
# - 11's consistency model, distilled from 03's model, at one and two evaluations (at two, with the
#   sampler's default intermediate noise level, not the one notebook 11 tunes).
#
# The flow model and 03's model have the same U-Net and the same number of training steps and images,
# but not the same recipe beyond that: 03's model has min-SNR-5 weighting and importance-sampled
# timesteps, the flow plain flow matching with logit-normal $t$ (both printed above). The consistency
# model cost 03's training plus its distillation.

# %%
from helpers.consistency import MultistepConsistency, consistency_record
from helpers.solvers import Solver

cd_model, cd_d, cd_ckpt = load_model(profile.require("consistency"), device)
cd_sigma_max = consistency_record(cd_ckpt)["config"]["sigma_max"]
budgets = [1, 2, 4, 8, 16]
methods = {  # name: (model, process, the sampler at a budget of nfe, or None where the method has no run at that budget)
    "flow, Euler": (flow, fm, lambda nfe: FlowEuler(nfe)),
    "flow, Heun": (flow, fm, lambda nfe: FlowHeun(nfe // 2) if nfe >= 4 else None),  # 2 steps - 1 evaluations: 3, 7, 15 within 4, 8, 16
    "eps (03), DPM-Solver++(2M)": (eps_model, d, lambda nfe: Solver("dpmpp-2m", nfe) if nfe >= 2 else None),
    "consistency (11)": (cd_model, cd_d, lambda nfe: MultistepConsistency(nfe, cd_sigma_max) if nfe <= 2 else None),
}
table, table_feats, shown, spent = {}, {}, {}, {}
table_start = time.perf_counter()
for name, (model, process, make) in methods.items():
    evaluator.d = process
    for nfe in budgets:
        sampler = make(nfe)
        if sampler is None:
            continue
        images = evaluator.images(model, sampler=sampler)[0]
        table[name, nfe], table_feats[name, nfe] = evaluator.score(images), extract_both(features, images)[0]
        shown[name, nfe] = images[:8]
        spent[name, nfe] = getattr(sampler, "spent", sampler.nfe)  # a solver's budget may leave an evaluation unspent
evaluator.d = fm
print(f"{len(table)} runs of {evaluator.n} samples in {(time.perf_counter() - table_start) / 60:.1f} minutes")

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
for name in methods:
    runs = [nfe for nfe in budgets if (name, nfe) in table]
    ax.plot([spent[name, nfe] for nfe in runs], [table[name, nfe].fid for nfe in runs], "o-", label=name)  # at the evaluations spent
floor_q = next(iter(table.values())).floor
ax.axhspan(floor_q.fid - floor_q.fid_std, floor_q.fid + floor_q.fid_std, color="tab:gray", alpha=0.3, label="real-data floor ± 1 std")
ax.set(xscale="log", yscale="log", xticks=budgets, xticklabels=[str(b) for b in budgets], xlabel="network evaluations (NFE)", ylabel="FID (lower is better)",
       title=f"FID of {evaluator.n} samples from the same noise against NFE [{profile.name} profile]")
ax.legend()
q = table["flow, Euler", 1]
print(f"FID, {q.n_fake} samples from the same noise against {q.n_real} real images, {q.features} features; floor {floor_q}")
print(f"{'method':<28}" + "".join(f"{'NFE ' + str(b):>10}" for b in budgets))
for name in methods:
    print(f"{name:<28}" + "".join(f"{table[name, b].fid:>10.1f}" if (name, b) in table else f"{'-':>10}" for b in budgets))
print("FID change from the 8 to the 16 column: " + ", ".join(f"{name} {table[name, 16].fid - table[name, 8].fid:+.1f}" for name in methods if (name, 16) in table))
comparisons = [(("flow, Heun", 8), ("eps (03), DPM-Solver++(2M)", 8)), (("flow, Heun", 16), ("eps (03), DPM-Solver++(2M)", 16)),
               (("flow, Euler", 16), ("eps (03), DPM-Solver++(2M)", 16)), (("flow, Heun", 8), ("flow, Euler", 8)),
               (("flow, Euler", 2), ("consistency (11)", 2))]  # fmt: skip
for a, b in comparisons:
    interval = fid_interval(evaluator.real, table_feats[a], table_feats[b], replicates=replicates)
    verdict = "no difference detected" if not interval.excludes_zero else f"{a[0] if interval.estimate < 0 else b[0]} is better"
    print(f"FID({a[0]}, {spent[a]} NFE) - FID({b[0]}, {spent[b]} NFE) = {interval}: {verdict}")

# %% [markdown]
# The printed lines are the verdicts; each is one training run per model. At one evaluation, Euler
# from $t = 1$ lands on $x_1 - \hat u(x_1, 1)$ ($x_1 = \varepsilon$, the state at $t = 1$), and for the exact field
# that is $\mathbb E[x_0]$, the same mean image from every noise. How close the learned model's one-step
# samples come to one image is printed under the sample grids below (their spread across samples,
# against the real images'; the one-step images themselves are in the reflow figure further down); a
# consistency model is distilled to avoid exactly this. Heun's last step is Euler's (no evaluation at $t = 0$, as in
# Karras et al.'s Heun), so it spends $2k - 1$ evaluations on $k$ steps: its column 4 is 3 evaluations, 8
# is 7, 16 is 15 (the figure plots it at those). The last line of the table says how much each row
# still moves from 8 to 16 evaluations; a row that still moves has solver error left in it, so a
# difference at 16 mixes that error with what the two networks learned. Below, the first eight
# samples of each method at two budgets, from the same noise:

# %%
fig, axes = plt.subplots(2, 4, figsize=(11, 4.9), layout="constrained")
for col, name in enumerate(methods):
    for row, nfe in enumerate((2, 8)):
        ax = axes[row, col]
        if (name, nfe) in shown:
            show_grid(shown[name, nfe], f"{name}\nNFE {spent[name, nfe]}: FID {table[name, nfe].fid:.1f}", nrow=4, ax=ax)
        else:
            ax.set_axis_off()
            ax.set_title(f"{name}\nno run at NFE {nfe}")
fig.suptitle(f"the same 8 noise images, 2 and 8 network evaluations [{profile.name} profile]")
one_step = evaluator.images(flow, sampler=FlowEuler(1))[0]
print(f"flow Euler at 1 NFE: pixel std across the {len(one_step)} samples, averaged over pixels, {one_step.std(0).mean():.3f}; "
      f"across {len(test_images)} real test images {test_images.cpu().std(0).mean():.3f}")

# %% [markdown]
# ## Reflow: straighten the paths, then take fewer steps
#
# The ring's paths bent because the noise and the data were paired at random, so the straight lines
# between pairs cross, and the field at a crossing averages their directions. **Reflow** (Liu et al.
# 2023, §2.3) draws new pairs: each noise $\varepsilon$ with the $\hat x_0$ that the trained flow's ODE carries it
# to. These pairs are a deterministic function of $\varepsilon$ (`helpers.flow.reflow_pairs`), and the lines
# between them cross less, so a flow trained on them has straighter paths, and Euler with few steps
# loses less. On the ring, with the exact field as the
# first flow:

# %%
def exact_ring_x0(eps):
    """The first flow's pairs: Heun with 50 steps of the ring's exact velocity from each eps."""
    return reflow_pairs(lambda x, s: toy.velocity(x, float(s[0])), fm_toy, eps, FlowHeun(50), batch_size=len(eps), clamp=False, progress=False).tensors[0]


toy_eps = torch.randn(8192, 2, generator=cpu_generator(4), dtype=torch.float64)
toy_pairs = exact_ring_x0(toy_eps)


def draw_pairs(n, gen):
    """n of the stored pairs (x0_hat, eps), drawn with replacement."""
    i = torch.randint(0, len(toy_eps), (n,), generator=gen)
    return toy_pairs[i], toy_eps[i]


reflow_net = fit_toy(draw_pairs)
starts = torch.randn(400, 2, generator=cpu_generator(5), dtype=torch.float64)
fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), layout="constrained")
toy_fields = {"1-rectified (exact field)": fields["exact u(x, t)"], "2-rectified (trained on the pairs)": lambda x, s: reflow_net(x, torch.full((len(x),), s, dtype=torch.float64))}
for ax, (name, field) in zip(axes, toy_fields.items()):
    paths = euler_path(field, starts, path_times)
    ax.contourf(fine, fine, toy.log_prob(dense, 0.0).exp().reshape(121, 121), levels=8, cmap="Blues")
    for k in range(12):
        ax.plot(paths[:, k, 0], paths[:, k, 1], "-", color=f"C{k % 10}", lw=1)
        ax.plot(*paths[0, k], "o", color=f"C{k % 10}", ms=3)
    s_med = straightness(paths, path_times).median()
    ax.set(title=f"{name}, t = 1 (dots) to 0\nstraightness median {s_med:.1e}", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="first coordinate", ylabel="second coordinate")
    one_step = field(starts, 1.0) * -1 + starts  # a single Euler step from t = 1
    style = dict(marker="x", ms=12, mew=2, zorder=3) if name.startswith("1") else dict(marker=".", ms=3)  # the first flow's 400 land on one point
    axes[2].plot(one_step[:, 0], one_step[:, 1], ls="none", label=name, **style)
axes[2].contourf(fine, fine, toy.log_prob(dense, 0.0).exp().reshape(121, 121), levels=8, cmap="Blues", zorder=-1)
axes[2].set(title="one Euler step from t = 1 (400 draws)", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="first coordinate", ylabel="second coordinate")
axes[2].legend(loc="upper right")
fig.suptitle("reflow on the ring: the same noise, the paths of the first flow and of the flow trained on its pairs")
s_first, s_reflow = (straightness(euler_path(f, starts, path_times), path_times).median().item() for f in toy_fields.values())
radius = {name: (f(starts, 1.0) * -1 + starts).norm(dim=1).median().item() for name, f in toy_fields.items()}
print(f"straightness, median of 400 paths: 1-rectified {s_first:.1e}, 2-rectified {s_reflow:.1e}")
print("one Euler step from t = 1, median distance from the origin (the ring's radius is 2): "
      + ", ".join(f"{name.split(' ')[0]} {r:.2f}" for name, r in radius.items()))
assert s_reflow < s_first

# %% [markdown]
# On images: pairs from the flow model (Heun, 8 steps, 15 evaluations each), then a second model,
# started from the first one's weights, trained on the pairs at a quarter of the first one's peak
# learning rate (`FlowMatching(coupling="reflow")`: the Trainer takes each image's ε from its pair).

# %%
n_pairs = profile.compare_steps * profile.train.batch_size // 6  # each pair seen about six times
pairs_start = time.perf_counter()
pair_noise = torch.randn((n_pairs, *shape[1:]), generator=cpu_generator(6))
pairs = reflow_pairs(flow, fm, pair_noise.to(device), FlowHeun(8), batch_size=profile.sample.batch_size, progress=False)
print(f"{n_pairs} pairs (flow Heun, 8 steps) in {(time.perf_counter() - pairs_start) / 60:.1f} minutes")
reflow_process = FlowMatching(fm.time_sampling, fm.logit_mean, fm.logit_std, fm.time_scale, coupling="reflow")
config = TrainConfig.from_profile(profile, steps=profile.compare_steps, timesteps="uniform", eval_every=0, sample_every=0,
                                  lr=profile.train.lr / 4, warmup_steps=0)
reflowed = UNet(**profile.model).to(device)
reflowed.load_state_dict(flow.state_dict())
torch.manual_seed(0)
run_start = time.perf_counter()
reflow_trainer = Trainer(reflowed, reflow_process, pairs, config, device, progress=False).train()
print(f"reflow: {config.steps} steps of batch {config.batch_size} on the pairs, Adam at {config.lr:g} with a {config.lr_decay} decay, "
      f"in {(time.perf_counter() - run_start) / 60:.1f} minutes")

# %%
@torch.no_grad()
def path_straightness(model, process, noise, steps=16):
    record = Trajectory()
    end = sample(model, process, noise, FlowEuler(steps), progress=False, clamp=False, callback=record)
    return straightness(torch.cat([record.x_t, end[None].cpu()]), flow_times(steps))


probe_noise = torch.randn((64, *shape[1:]), generator=cpu_generator(7)).to(device)
reflow_budgets = [1, 2, 4]
reflow_rows, reflow_feats = {}, {}
reflowed = reflow_trainer.model
with reflow_trainer.ema.averaged(reflowed):
    straight = {"flow": path_straightness(flow, fm, probe_noise), "reflow": path_straightness(reflowed, fm, probe_noise)}
    for nfe in reflow_budgets:
        images = evaluator.images(reflowed, sampler=FlowEuler(nfe))[0]
        reflow_rows[nfe], reflow_feats[nfe] = evaluator.score(images), extract_both(features, images)[0]
        shown["reflow", nfe] = images[:8]
fig, axes = plt.subplots(2, len(reflow_budgets), figsize=(8.5, 4.6), layout="constrained")
for col, nfe in enumerate(reflow_budgets):
    show_grid(shown["flow, Euler", nfe], f"flow, Euler, NFE {nfe}: FID {table['flow, Euler', nfe].fid:.1f}", nrow=4, ax=axes[0, col])
    show_grid(shown["reflow", nfe], f"reflow, Euler, NFE {nfe}: FID {reflow_rows[nfe].fid:.1f}", nrow=4, ax=axes[1, col])
fig.suptitle(f"before (top) and after (bottom) reflow, the same noise [{profile.name} profile]")
print(f"straightness of 64 paths (Euler, 16 steps), median: flow {straight['flow'].median():.4f}, reflow {straight['reflow'].median():.4f}")
for nfe in reflow_budgets:
    interval = fid_interval(evaluator.real, reflow_feats[nfe], table_feats["flow, Euler", nfe], replicates=replicates)
    verdict = "no difference detected" if not interval.excludes_zero else ("reflow is better" if interval.estimate < 0 else "the first flow is better")
    print(f"NFE {nfe}: FID reflow {reflow_rows[nfe].fid:.1f} against flow {table['flow, Euler', nfe].fid:.1f}; difference {interval}: {verdict}")
interval = fid_interval(evaluator.real, reflow_feats[1], table_feats["consistency (11)", 1], replicates=replicates)
verdict = "no difference detected" if not interval.excludes_zero else ("reflow is better" if interval.estimate < 0 else "the consistency model is better")
print(f"one evaluation, reflow against 11's consistency model: FID {reflow_rows[1].fid:.1f} against {table['consistency (11)', 1].fid:.1f}; "
      f"difference {interval}: {verdict}; the floor is {floor_q}")

# %% [markdown]
# The printed straightness and the paired differences are the measurement. Straightness is the
# squared gap between a path's speed and its chord's, averaged over time and coordinates, so compare
# values within one setting (the toy's 2-D points or these 784 pixels), not across them. Reflow has
# two costs: the pairs (a sampling run of 15 evaluations for each pair) and a second training run
# (both timed above); the reflowed model has also had `compare_steps` more training steps than the
# first. What it buys is what the lines above say at 1, 2 and 4 evaluations, with this budget for
# pairs and training.
#
# ## One path, step by step
#
# Scrub $t$ from 1 to 0 along the flow-Euler paths of four images, 50 steps: $x_t$ and the model's
# $\hat x_0 = x_t - t\,\hat u$ (one evaluation, what a single Euler step from here would land on), left and
# right under the slider, top and bottom in the strip after it, which is the stored version.

# %% tags=["nbval-ignore-output"]
from ipywidgets import IntSlider

from helpers.viz import TrajectoryView, slider_widget

trajectory = Trajectory()
sample(flow, fm, z[:4], FlowEuler(50), progress=False, callback=trajectory)
view = TrajectoryView(trajectory, title=f"[{profile.name}] flow, ")
slider_widget(view.render, IntSlider(value=0, min=0, max=len(view) - 1, description="step"))

# %%
frames = [0, 10, 25, 40, 49]
fig, axes = plt.subplots(2, len(frames), figsize=(2.3 * len(frames), 4.8))
for j, k in enumerate(frames):
    show_grid(trajectory.x_t[k].clamp(-1, 1), f"$x_t$, t = {trajectory.t[k]:.2f}", nrow=2, ax=axes[0, j])
    show_grid(trajectory.x0[k].clamp(-1, 1), rf"$\hat x_0$, t = {trajectory.t[k]:.2f}", nrow=2, ax=axes[1, j])
fig.suptitle(f"one flow-Euler trajectory: the state (top) and the predicted x0 (bottom) [{profile.name} profile]", y=1.02)
final = trajectory.x0[-1]
gaps = [(trajectory.x0[k] - final).abs().mean().item() for k in range(len(trajectory.t))]
settled = next(k for k in range(len(gaps)) if max(gaps[k:]) < 0.1)
print("mean |x0_hat - final image| at t = " + ", ".join(f"{trajectory.t[k]:.2f}: {gaps[k]:.3f}" for k in frames))
print(f"from t = {trajectory.t[settled]:.2f} on the prediction stays within 0.1 of the final image (pixels in [-1, 1])")

# %% [markdown]
# ## Exercises
#
# **1. The flow-matching loss.** Write the loss of one training batch: interpolate, call the network
# at `1000 * t`, and return the mean squared error against the conditional velocity, averaged over
# every pixel of every image. The check compares it with `FlowMatching.loss` on random
# networks and batches.

# %%
def flow_matching_loss(model, x0, t, eps):
    """The conditional flow-matching loss of a batch: x0, eps [B, C, H, W], t [B] in [0, 1]."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(flow_matching_loss)

# %% [markdown]
# **2. A Heun sampler for the flow.** Write Heun's method on $\mathrm dx/\mathrm dt = u(x, t)$ from
# $t = 1$ to 0 over `steps` equal steps: an Euler step to $t'$ as a predictor, then the step with the
# average of the velocities at $t$ and at the predicted point at $t'$; the last step, to $t' = 0$,
# keeps the Euler step (as `FlowHeun` does, and Karras et al.'s Heun at $\sigma = 0$: a model trained
# with logit-normal $t$ has almost never seen $t = 0$). `velocity(x, t)` takes a float $t$. The check
# runs it on the exact velocity of Gaussian data, where the exact end is known, and measures its order
# of convergence.

# %%
def flow_heun(velocity, x, steps):
    """x at t = 0 from x at t = 1, Heun with ``steps`` equal steps (2 velocity calls each, 1 for the last)."""
    raise NotImplementedError  # your code here


# %%
check(flow_heun)

# %% [markdown]
# **3. Predict, then run: reflow on Gaussian data.** Take data $x_0 \sim \mathcal N(M, S^2)$ in every
# coordinate. The first flow's ODE carries each noise $\varepsilon$ to $M + S\varepsilon$ along a curved path,
# $x_t = (1-t)M + \sqrt{(1-t)^2S^2 + t^2}\,\varepsilon$. Reflow pairs each $\varepsilon$ with that end and learns
# the marginal velocity of the lines between the pairs. How many equal Euler steps does the reflowed
# ODE need to land on $M + S x_1$ ($x_1 = \varepsilon$, where the ODE starts) to
# within $10^{-9}$: 1, about 10, or about 100? Return your answer; the check builds that velocity in
# closed form and integrates it.

# %%
def predict_reflow_steps():
    """Your prediction: 1, 10 or 100 Euler steps."""
    raise NotImplementedError  # your prediction here


# %%
check(predict_reflow_steps)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
