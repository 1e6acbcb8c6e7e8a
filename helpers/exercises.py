"""The checks behind the exercises at the end of each notebook.

An exercise is a function the reader writes in a cell (its stub raises ``NotImplementedError``);
the next cell calls ``check(fn)``, which runs the exercise's check on it and prints one line:
done, not done yet, or what is wrong. It never raises, so a notebook with its exercises still
open runs top to bottom (and passes nbval). Each check compares the reader's function with the
tested code in ``helpers`` on random inputs; ``EXERCISES`` maps a function's name to its check,
which raises ``AssertionError`` when the function is wrong. The solutions live in
``notebooks/solutions/`` and ``tests/test_exercises.py`` holds them to these checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .clip import contrastive_loss
from .consistency import c_out as _c_out
from .consistency import c_skip as _c_skip
from .consistency import cd_loss
from .diffusion import Diffusion
from .editing import SDEdit
from .ema import EMA
from .flow import FlowHeun, FlowMatching
from .samplers import Guided, ddim_step, ddim_timesteps
from .samplers import DDIM, DDPM, sample
from . import solvers as _solvers
from .toy import GaussianMixture
from .unet import AttentionBlock, CrossAttentionBlock, ResBlock, UNet

__all__ = ["EXERCISES", "check", "exercise"]

Check = Callable[[Callable[..., Any]], None]

EXERCISES: dict[str, Check] = {}


def exercise(check_fn: Check) -> Check:
    """Register ``check_fn`` as the check of the exercise with its name (the reader's function keeps it)."""
    EXERCISES[check_fn.__name__] = check_fn
    return check_fn


def _close(got: Any, want: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    assert isinstance(got, torch.Tensor), f"{what}: expected a tensor, got {type(got).__name__}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= atol, f"{what}: off by up to {err:.3g}"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _schedules() -> dict[str, Diffusion]:
    return {name: Diffusion.from_schedule(name, 1000) for name in ("linear", "cosine", "sigmoid")}


# ---- 01 · the forward process ---------------------------------------------------------------------


@exercise
def jump_forward(fn: Callable[..., Any]) -> None:
    """fn(x_from, t_from, t_to, alpha_bars, eps) = a sample of q(x_to | x_from), the chain's steps
    composed: sqrt(ab_to / ab_from) x_from + sqrt(1 - ab_to / ab_from) eps. Against Diffusion.q_step
    on one step, and on longer jumps from x_from = Diffusion.q_sample(x_0), for every schedule."""
    g = _gen()
    for name, d in _schedules().items():
        x_prev, eps = (torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
        want = d.q_step(x_prev, torch.full((4,), 500), eps)
        _close(fn(x_prev.clone(), 499, 500, d.alpha_bars.clone(), eps.clone()), want, f"{name} schedule, one step 499 -> 500", atol=1e-9)
        for t_from, t_to in ((0, 999), (99, 600), (300, 301), (700, 950)):
            x0, e_from, eps = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
            x_from = d.q_sample(x0, t_from, e_from)
            ratio = d.alpha_bars[t_to] / d.alpha_bars[t_from]  # the product of the alphas of the steps taken
            want = ratio.sqrt() * x_from + (1 - ratio).sqrt() * eps
            _close(fn(x_from.clone(), t_from, t_to, d.alpha_bars.clone(), eps.clone()), want, f"{name} schedule, t {t_from} -> {t_to}", atol=1e-9)


@exercise
def snr_crossing(fn: Callable[..., Any]) -> None:
    """fn(alpha_bars) = the first t with SNR(t) <= 1, against each schedule's SNR table."""
    for name, d in _schedules().items():
        want = int(torch.nonzero(d.snr <= 1)[0])
        got = fn(d.alpha_bars.clone())
        assert int(got) == want, f"{name} schedule: got t = {got}, expected {want}"


# ---- 02 · the U-Net ---------------------------------------------------------------------------------


@exercise
def resblock_parameters(fn: Callable[..., Any]) -> None:
    """fn(in_ch, out_ch, emb_dim) = the parameter count of ResBlock, against the module itself."""
    for in_ch, out_ch, emb_dim in ((32, 32, 128), (32, 64, 128), (24, 48, 96)):
        want = sum(p.numel() for p in ResBlock(in_ch, out_ch, emb_dim, dropout=0.0, groups=8).parameters())
        got = fn(in_ch, out_ch, emb_dim)
        assert got == want, f"ResBlock({in_ch} -> {out_ch}, emb {emb_dim}): got {got}, expected {want}"


@exercise
def multihead_attention(fn: Callable[..., Any]) -> None:
    """fn(attn, x) = AttentionBlock's output with attn.heads heads, by explicit softmax."""
    with torch.random.fork_rng(devices=[]):  # the blocks' initial weights: leave the reader's seed alone
        torch.manual_seed(0)
        blocks = [AttentionBlock(ch=32, groups=8, heads=heads) for heads in (1, 2, 4)]
        for attn in blocks:
            nn.init.normal_(attn.proj.weight, std=0.1)  # the projection starts at zero: make it count
    for attn in blocks:
        x = torch.randn(2, 32, 6, 6, generator=_gen(attn.heads))
        with torch.no_grad():
            _close(fn(attn, x), attn(x), f"{attn.heads} heads")


def _up_block_inputs(model: UNet) -> list[tuple[int, int, int]]:
    """(channels from below, channels of the skip, side) at each up block of ``model``, observed in a
    forward pass: the outputs of conv_in and the down blocks are stacked, each up block pops one."""
    stack: list[torch.Size] = []
    seen: list[tuple[int, int, int]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: stack.append(o.shape)) for m in (model.conv_in, *model.down)]
    hooks += [m.register_forward_pre_hook(lambda m, i: seen.append((i[0].shape[1] - stack[-1][1], stack.pop()[1], i[0].shape[-1]))) for m in model.up]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, model.image_size, model.image_size), torch.zeros(1, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return seen


@exercise
def up_block_channels(fn: Callable[..., Any]) -> None:
    """fn(image_size, ch, ch_mult, num_res_blocks) = [(channels from below, skip channels, side)] per
    up block, against a forward pass through UNets of four shapes."""
    for image_size, ch, ch_mult, blocks in ((16, 4, (1, 2), 1), (16, 8, (1, 2, 2), 2), (16, 4, (1, 2, 4, 4), 1), (8, 4, (1, 3), 3)):
        with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave the reader's seed alone
            model = UNet(image_size, 1, ch, ch_mult, blocks, attn_resolutions=(), dropout=0.0, norm_groups=4)
        want = _up_block_inputs(model)
        got = fn(image_size, ch, tuple(ch_mult), blocks)
        what = f"image_size {image_size}, ch {ch}, ch_mult {ch_mult}, num_res_blocks {blocks}"
        assert len(got) == len(want), f"{what}: {len(got)} up blocks, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert tuple(g) == w, f"{what}: up.{i} gets (from below, skip, side) = {tuple(g)}, expected {w}"


# ---- 03 · training ----------------------------------------------------------------------------------


@exercise
def min_snr_loss_x0(fn: Callable[..., Any]) -> None:
    """fn(model, alpha_bars, x0, t, noise, gamma) = min-SNR-gamma written on x0_hat (Hang et al. 2023,
    eq. 7), against Diffusion.loss (min_snr, eps prediction) on the same t and noise."""
    with torch.random.fork_rng(devices=[]):  # the stand-in network's weights: leave the reader's seed alone
        torch.manual_seed(0)
        conv = nn.Conv2d(1, 1, 3, padding=1)
    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # an eps-predictor that depends on x_t and t
        return torch.tanh(conv(x_t)) * (1 + t.view(-1, 1, 1, 1) / 1000)

    g = _gen()
    x0, noise = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 20, 100, 300, 600, 999])
    with torch.no_grad():
        for name, d in _schedules().items():
            for gamma in (1.0, 5.0):
                want = Diffusion(d.betas, loss_weighting="min_snr", min_snr_gamma=gamma).loss(model, x0, t=t, noise=noise).item()
                got = float(fn(model, d.alpha_bars.clone(), x0.clone(), t.clone(), noise.clone(), gamma))
                assert math.isclose(got, want, rel_tol=1e-4), f"{name} schedule, gamma {gamma}: got {got:.6g}, Diffusion.loss gives {want:.6g}"


@exercise
def eps_from_denoiser(fn: Callable[..., Any]) -> None:
    """fn(denoiser, x_t, alpha_bar) = E[eps | x_t] from denoiser(x, sigma) = E[x_0 | x_0 + sigma eps = x],
    against -sigma * score(x_t / sqrt(alpha_bar)) of the same mixture (only its denoiser is handed over)."""
    mixtures = (GaussianMixture.ring(k=6, radius=2.0, std=0.25),
                GaussianMixture(torch.tensor([[0.0, 0.0], [3.0, 1.0]]), torch.tensor([0.5, 0.2]), torch.tensor([0.7, 0.3])))  # fmt: skip
    x_t = 2 * torch.randn(64, 2, generator=_gen(), dtype=torch.float64)
    for i, mixture in enumerate(mixtures):
        for alpha_bar in (0.97, 0.5, 0.05):
            sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
            want = -sigma * mixture.score(x_t / math.sqrt(alpha_bar), sigma)
            got = fn(lambda x, s: mixture(x, s), x_t.clone(), alpha_bar)
            _close(torch.as_tensor(got).double(), want, f"mixture {i + 1}, alpha_bar {alpha_bar}", atol=1e-6)


@exercise
def eps_loss_floor(fn: Callable[..., Any]) -> None:
    """fn(kappa, alpha_bar) = E ||eps - E[eps | x_t]||^2 per coordinate on well-separated components of
    std kappa, against a Monte Carlo estimate with the exact E[eps | x_t] (10,000 draws; within 5%)."""
    for kappa in (0.05, 0.25, 1.0):
        ring = GaussianMixture.ring(k=6, radius=30.0, std=kappa)  # neighbours 30 apart: x_t always tells its component
        for alpha_bar in (0.97, 0.5, 0.2):
            g, sigma = _gen(), math.sqrt((1 - alpha_bar) / alpha_bar)
            x0, eps = ring.sample(10_000, g), torch.randn(10_000, 2, generator=g, dtype=torch.float64)
            x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
            want = ((eps + sigma * ring.score(x_t / math.sqrt(alpha_bar), sigma)) ** 2).mean().item()
            got = float(fn(kappa, alpha_bar))
            assert abs(got - want) <= 0.05 * want, f"kappa {kappa}, alpha_bar {alpha_bar}: predicted {got:.4g}, measured {want:.4g}"


# ---- 04 · DDPM sampling -----------------------------------------------------------------------------


def _exact_eps(d: Diffusion, data: GaussianMixture) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A stand-in for the network that makes no error: E[eps | x_t] for data x_0 ~ ``data`` [N, D],
    from the mixture's exact denoiser in VE units (x_t / sqrt(ab_t) = x_0 + sigma eps)."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = float(d.alpha_bars[int(t[0])])
        x0 = data(x_t / ab**0.5, ((1 - ab) / ab) ** 0.5)
        return ((x_t.double() - ab**0.5 * x0) / (1 - ab) ** 0.5).to(x_t.dtype)

    return model


def _spread(samplers: list[Any], kappa: float = 0.5, n: int = 20_000) -> list[float]:
    """std(samples) / kappa for data N(0, kappa^2) (one number per sample) and its exact E[eps | x_t],
    for each sampler (unclipped), all from the same n starting noises; linear schedule, T = 1000."""
    d = Diffusion.from_schedule("linear", 1000)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # E[eps | x_t] = sqrt(1 - ab) x_t / (ab kappa^2 + 1 - ab)
        ab = float(d.alpha_bars[int(t[0])])
        return (1 - ab) ** 0.5 * x_t / (ab * kappa**2 + 1 - ab)

    x_T = torch.randn(n, 1, generator=_gen())
    return [sample(model, d, x_T, s, _gen(1), progress=False, clamp=False).std().item() / kappa for s in samplers]


def _direction(ratio: float, tolerance: float = 0.03) -> int:
    """-1 below 1 - tolerance, +1 above 1 + tolerance, else 0."""
    return 0 if abs(ratio - 1) <= tolerance else (1 if ratio > 1 else -1)


def _predictions(got: Any, allowed: tuple[tuple[int, ...], ...], what: str) -> None:
    assert isinstance(got, (list, tuple)) and len(got) == len(allowed), f"return {len(allowed)} predictions: {what}"
    for g, ok in zip(got, allowed):
        assert g in ok, f"each prediction is one of {', '.join(f'{v:+d}' if v < 0 or -1 in ok and v else str(v) for v in ok)}; got {g!r} in {what}"


@exercise
def ddpm_respaced(fn: Callable[..., Any]) -> None:
    """fn(model, d, x_T, timesteps, generator) = ancestral sampling over the grid with each jump's
    posterior (alpha = ab_t / ab_t'), against DDPM() on the full grid and DDIM(10, eta=1) on a
    10-step grid (the same sampler: DDIM's eq. 16 at eta = 1 is the jump's beta tilde), on the same
    noise, with the exact E[eps | x_t] of 2-D toy data as the model."""
    d = Diffusion.from_schedule("linear", 1000)
    model = _exact_eps(d, GaussianMixture.ring(k=4, radius=0.6, std=0.15))
    x_T = torch.randn(64, 2, generator=_gen())
    for steps, sampler in ((d.T, DDPM()), (10, DDIM(10, eta=1.0))):
        want = sample(model, d, x_T, sampler, _gen(1), progress=False)
        got = fn(model, d, x_T.clone(), ddim_timesteps(d.T, steps), _gen(1))
        _close(got, want, f"{steps} steps, against {sampler}", atol=1e-4)


@exercise
def predict_sample_spread(fn: Callable[..., Any]) -> None:
    """fn() = (full chain, 10-step grid): whether fixed-small ancestral samples of N(0, 0.5^2) data
    with the exact model come out narrower (-1), the same within 3% (0) or wider (+1)."""
    got = fn()
    _predictions(got, ((-1, 0, 1), (-1, 0, 1)), "(full chain, 10-step grid)")
    ratios = _spread([DDPM(clip_x0=False), DDIM(10, eta=1.0, clip_x0=False)])
    for what, g, r in zip(("full chain", "10-step grid"), got, ratios):
        assert g == _direction(r), f"{what}: you predicted {g:+g}, but the samples' std is {r:.3f} kappa"


# ---- 05 · DDIM --------------------------------------------------------------------------------------


@exercise
def ddim_euler(fn: Callable[..., Any]) -> None:
    """fn(model, d, x_T, timesteps) = deterministic DDIM written as Euler steps of y = x_t / sqrt(ab_t)
    in sigma, against DDIM(steps, eta=0, clip_x0=False) on the same x_T, with the exact E[eps | x_t]
    of 2-D toy data as the model."""
    d = Diffusion.from_schedule("linear", 1000)
    model = _exact_eps(d, GaussianMixture.ring(k=4, radius=0.6, std=0.15))
    x_T = torch.randn(64, 2, generator=_gen())
    for steps in (50, 10, 3):
        want = sample(model, d, x_T, DDIM(steps, clip_x0=False), progress=False, clamp=False)
        _close(fn(model, d, x_T.clone(), ddim_timesteps(d.T, steps)), want, f"{steps} steps", atol=1e-3)


@exercise
def predict_ddim_spread(fn: Callable[..., Any]) -> None:
    """fn() = (whether 10-step DDIM at eta = 0 makes samples of N(0, 0.5^2) data with the exact model
    narrower (-1), the same within 3% (0) or wider (+1); the eta, 0 or 1, whose 10-step samples have
    the std closer to the data's)."""
    got = fn()
    _predictions(got, ((-1, 0, 1), (0, 1)), "(eta = 0 at 10 steps, the closer eta)")
    deterministic, stochastic = _spread([DDIM(10, eta=0.0, clip_x0=False), DDIM(10, eta=1.0, clip_x0=False)])
    measured = f"the samples' std is {deterministic:.3f} kappa at eta = 0 and {stochastic:.3f} kappa at eta = 1"
    assert got[0] == _direction(deterministic), f"eta = 0: you predicted {got[0]:+g}, but {measured}"
    assert got[1] == (0 if abs(deterministic - 1) < abs(stochastic - 1) else 1), f"you predicted eta = {got[1]:g}, but {measured}"


# ---- 06 · EMA and FID -------------------------------------------------------------------------------


@exercise
def ema_error(fn: Callable[..., Any]) -> None:
    """fn(decay, noise_std, jump, steps) = E[(shadow_n - jump)^2] of an EMA (no warm-up) started at 0 that
    sees jump + noise_std z at each of n updates, against 20,000 such averages run through helpers.ema.EMA."""
    chains, g = 20_000, _gen(6)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.zeros(chains), requires_grad=False)
    for decay, noise_std, jump, steps in ((0.9, 0.25, 1.0, 50), (0.99, 0.25, 1.0, 50), (0.99, 0.25, 1.0, 500), (0.99, 1.0, 0.0, 20), (0.95, 0.5, 2.0, 10)):
        holder.w.zero_()
        ema = EMA(holder, decay=decay, warmup=False)
        for _ in range(steps):
            holder.w.copy_(jump + noise_std * torch.randn(chains, generator=g))
            ema.update(holder)
        want = float(((ema.shadow["w"].double() - jump) ** 2).mean())
        got = float(fn(decay, noise_std, jump, steps))
        assert math.isclose(got, want, rel_tol=0.05), (
            f"decay {decay}, noise std {noise_std}, jump {jump}, {steps} updates: got {got:.4g}, the averages' mean squared error is {want:.4g}"
        )


@exercise
def ema_half_life(fn: Callable[..., Any]) -> None:
    """fn(decay) = updates until a weight's old value has half its say in the average, against an EMA
    (no warm-up) tracking a parameter that jumps from 0 to 1: its shadow crosses 0.5 then."""
    for decay in (0.9, 0.99, 0.999):
        model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(model.weight)
        ema = EMA(model, decay=decay, warmup=False)
        nn.init.ones_(model.weight)
        n = 0
        while ema.shadow["weight"].item() < 0.5:
            ema.update(model)
            n += 1
        got = float(fn(decay))
        assert n - 1 <= got <= n, f"decay {decay}: got {got:.1f}, but the average crosses one half after {n} updates"


# ---- 07 · v-prediction ------------------------------------------------------------------------------


def _stand_in_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, nonlinear function of (x_t, t) in place of a network (float32 or float64 alike)."""
    return 0.5 * x + 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1) * torch.tanh(x)


@exercise
def v_loss(fn: Callable[..., Any]) -> None:
    """fn(model, alpha_bars, x0, t, eps, gamma) = the per-image min-SNR-gamma loss of a v-model
    (Hang et al. 2023; weight min(SNR, gamma) / (SNR + 1) on the v MSE), against Diffusion.loss."""
    g = _gen(7)
    x0, eps = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    for name in ("linear", "cosine"):
        d = Diffusion.from_schedule(name, 1000)
        for gamma in (1.0, 5.0):
            want = Diffusion(d.betas, prediction="v", loss_weighting="min_snr", min_snr_gamma=gamma).loss(_stand_in_model, x0, t=t, noise=eps, reduction="none")
            _close(fn(_stand_in_model, d.alpha_bars.clone(), x0.clone(), t.clone(), eps.clone(), gamma), want, f"{name} schedule, gamma {gamma}")


@exercise
def ddim_step_from_v(fn: Callable[..., Any]) -> None:
    """fn(x_t, v_hat, alpha_bar_t, alpha_bar_s) = deterministic DDIM x_s of a v-model without clipping,
    against helpers.samplers.ddim_step (eta = 0, clip_x0=False); s = -1 is alpha_bar = 1."""
    g = _gen(8)
    for name, d in _schedules().items():
        dv = Diffusion(d.betas, prediction="v")
        for t, s in ((999, 899), (500, 480), (20, -1)):
            x_t, v_hat = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
            want = ddim_step(dv, v_hat, x_t, t, s, clip_x0=False)[0]
            ab_s = float(d.alpha_bars[s]) if s >= 0 else 1.0
            _close(fn(x_t.clone(), v_hat.clone(), float(d.alpha_bars[t]), ab_s), want, f"{name} schedule, t = {t} -> {s}")


# ---- 08 · classifier-free guidance ------------------------------------------------------------------


class _RingClasses(nn.Module):
    """The exact class-conditional eps-prediction on the 2-D ring of ``helpers.toy``: class k is
    component k, the "no label" id ``num_classes`` the whole mixture. At timestep t, x_t / sqrt(ab_t)
    is x_0 + sigma eps with sigma^2 = (1 - ab_t) / ab_t, so E[x_0 | x_t, y] is the toy's denoiser (of
    component y, or of the mixture) and eps = (x_t - sqrt(ab_t) E[x_0 | x_t, y]) / sqrt(1 - ab_t)."""

    def __init__(self, d: Diffusion, ring: GaussianMixture) -> None:
        super().__init__()
        self.alpha_bars, self.ring, self.num_classes = d.alpha_bars, ring, len(ring.means)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float64)
        for step in t.unique().tolist():
            at, ab = t == step, self.alpha_bars[step]
            sigma2 = float((1 - ab) / ab)
            x_t, k = x[at].double(), y[at]
            z = x_t / ab.sqrt()  # = x_0 + sigma eps
            comp = k.clamp(max=self.num_classes - 1)
            mu, var0 = self.ring.means[comp], (self.ring.stds[comp] ** 2)[:, None]
            x0 = torch.where((k == self.num_classes)[:, None], self.ring(z, sigma2**0.5), mu + var0 / (var0 + sigma2) * (z - mu))
            out[at] = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return out.to(x.dtype)


def _ring_setting(steps: int) -> tuple[Diffusion, _RingClasses, list[int]]:
    d = Diffusion.from_schedule("linear", 1000)
    return d, _RingClasses(d, GaussianMixture.ring()), ddim_timesteps(d.T, steps)


@exercise
def guided_ddim_sample(fn: Callable[..., Any]) -> None:
    """fn(model, d, x_T, y, s, timesteps) = guided DDIM at eta = 0 without clipping, against
    sample(Guided(model, y, s), d, x_T, DDIM(steps, clip_x0=False), clamp=False) on the ring toy."""
    d, model, timesteps = _ring_setting(8)
    g = _gen()
    x_T, y = torch.randn(32, 2, generator=g), torch.randint(0, model.num_classes, (32,), generator=g)
    for s in (0.0, 1.0, 3.0):
        want = sample(Guided(model, y, s), d, x_T, DDIM(len(timesteps), clip_x0=False), progress=False, clamp=False)
        got = fn(model, d, x_T.clone(), y.clone(), s, list(timesteps))
        _close(got, want, f"s = {s}", atol=1e-4)


@exercise
def guidance_on_the_ring(fn: Callable[..., Any]) -> None:
    """fn() = the predicted directions (-1, 0 or +1) of the spread of class-0 samples and of the
    distance of their mean from the ring's centre, from s = 1 to s = 3; the check runs it."""
    got = fn()
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"return two numbers (spread, distance), got {got!r}"
    assert all(v in (-1, 0, 1) for v in got), f"each prediction is -1, 0 or +1, got {got!r}"
    d, model, timesteps = _ring_setting(10)
    x_T, y = torch.randn(400, 2, generator=_gen()), torch.zeros(400, dtype=torch.long)
    spread, distance = [], []
    for s in (1.0, 3.0):
        x = sample(Guided(model, y, s), d, x_T, DDIM(len(timesteps), clip_x0=False), progress=False, clamp=False).double()
        spread.append(float((x - x.mean(0)).pow(2).sum(1).mean().sqrt()))
        distance.append(float(x.mean(0).norm()))
    for what, guess, (a, b) in zip(("the spread around the samples' mean", "the distance of their mean from the ring's centre"), got, (spread, distance)):
        change = b / a - 1
        truth = 0 if abs(change) < 0.05 else (1 if change > 0 else -1)
        assert guess == truth, f"{what}: you predicted {guess:+d}; from s = 1 to s = 3 it went from {a:.3f} to {b:.3f} ({change:+.0%})"


# ---- 09 · scores, SDEs and solvers -------------------------------------------------------------------


@exercise
def heun_sampler(fn: Callable[..., Any]) -> None:
    """fn(denoiser, x, sigmas) = Heun's method down ``sigmas`` (ending with 0; the last step Euler),
    against helpers.solvers.sample_heun on the ring mixture's exact denoiser, counting its calls."""
    mix = GaussianMixture.ring()
    for n, sigma_max in ((5, 4.0), (12, 80.0)):
        sigmas = _solvers.karras_sigmas(n, 0.01, sigma_max)
        x = sigma_max * torch.randn(64, 2, generator=_gen(n), dtype=torch.float64)
        calls = []

        def counted(x: torch.Tensor, sigma: Any) -> torch.Tensor:
            calls.append(sigma)
            return mix(x, sigma)

        got = fn(counted, x.clone(), sigmas.clone())
        where = f"{n} noise levels from sigma {sigma_max:g}, then 0"
        assert isinstance(got, torch.Tensor) and torch.isfinite(got).all(), f"{where}: not a finite tensor (the step to sigma = 0 must stay Euler: its slope would divide by 0)"
        _close(got, _solvers.sample_heun(mix, x, sigmas), where, atol=1e-8)
        assert len(calls) == 2 * n - 1, f"{where}: {len(calls)} denoiser calls; Heun needs 2 per step and 1 for the last, {2 * n - 1}"


@exercise
def error_shrink_factors(fn: Callable[..., Any]) -> None:
    """fn() = the predicted (Euler, Heun, DPM-Solver++(2M)) factors err(16 steps) / err(32 steps),
    measured here on the ring mixture from sigma 5 to 0.1 (no final step to 0) against Heun at 256
    steps; a prediction within 20% of the measured factor passes."""
    mix = GaussianMixture.ring()
    x = 5.0 * torch.randn(64, 2, generator=_gen(), dtype=torch.float64)

    def grid(steps: int) -> torch.Tensor:
        return _solvers.karras_sigmas(steps + 1, 0.1, 5.0)[:-1]

    got = fn()
    assert len(got) == 3, f"return three factors (Euler, Heun, DPM-Solver++(2M)), got {got!r}"
    exact = _solvers.sample_heun(mix, x, grid(256))
    for name, solve, predicted in zip(("Euler", "Heun", "DPM-Solver++(2M)"), (_solvers.sample_euler, _solvers.sample_heun, _solvers.sample_dpmpp_2m), got):
        err = [float((solve(mix, x, grid(steps)) - exact).norm(dim=1).mean()) for steps in (16, 32)]
        measured = err[0] / err[1]
        assert abs(float(predicted) / measured - 1) <= 0.2, f"{name}: you predicted {float(predicted):.3g}, the run measures {measured:.3g}"


# ---- 10 · latent diffusion ----------------------------------------------------------------------------


@exercise
def kl_to_prior(fn: Callable[..., Any]) -> None:
    """fn(mean, logvar, prior_std) = KL(N(mean, diag exp(logvar)) || N(0, prior_std^2 I)) per image,
    against torch.distributions."""
    g = _gen()
    for prior_std in (1.0, 0.2, 5.0):
        mean, logvar = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
        q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
        p = torch.distributions.Normal(torch.zeros_like(mean), torch.full_like(mean, prior_std))
        want = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
        _close(fn(mean.clone(), logvar.clone(), prior_std), want, f"prior N(0, {prior_std:g}^2 I)", atol=1e-5)


def _ddim_exact(spread: float, steps: int, n: int = 1000) -> float:
    """DDIM (eta 0, trailing grid, linear schedule, T = 1000) with the exact denoiser on a ring mixture
    of per-coordinate std ``spread``; the samples' mean distance to the nearest component centre, in
    units of ``spread`` (so that different spreads compare on the same footing)."""
    d, ring = Diffusion.from_schedule("linear", 1000), GaussianMixture.ring()
    unit = float((ring.means.pow(2).sum(1).mean() / 2 + ring.stds[0] ** 2).sqrt())  # the ring's std per coordinate
    mix = GaussianMixture(ring.means * spread / unit, ring.stds * spread / unit)
    x = torch.randn(n, 2, generator=_gen(), dtype=torch.float64)
    grid = ddim_timesteps(1000, steps)
    for t, t_prev in zip(grid, grid[1:] + [-1]):
        ab = float(d.alpha_bars[t])
        eps = (x - ab**0.5 * mix(x / ab**0.5, ((1 - ab) / ab) ** 0.5)) / (1 - ab) ** 0.5  # the exact eps from E[x_0 | x_t]
        x = ddim_step(d, eps, x, t, t_prev, clip_x0=False)[0]
    return float(torch.cdist(x, mix.means).min(1).values.mean()) * unit / spread


@exercise
def predict_spread_effect(fn: Callable[..., Any]) -> None:
    """fn() = (effect of latents of std 0.2, effect of std 5.5): +1 if 5-step DDIM with the exact
    denoiser lands further from the data than with latents of std 1, -1 if closer. The check runs it."""
    got = fn()
    assert isinstance(got, (tuple, list)) and len(got) == 2 and all(v in (-1, 1) for v in got), f"return a pair of +1 (further) or -1 (closer), got {got!r}"
    base = _ddim_exact(1.0, 5)
    for spread, guess in zip((0.2, 5.5), got):
        dist = _ddim_exact(spread, 5)
        outcome = 1 if dist > base else -1
        assert guess == outcome, (f"latents of std {spread:g}: you predicted {'further' if guess > 0 else 'closer'}; the run lands "
                                  f"{dist:.2f} from the nearest component (std 1: {base:.2f}, in units of each spread): compare the SNR curves "
                                  f"of the notebook's figure at the 5 timesteps {ddim_timesteps(1000, 5)}")


# ---- 11 · consistency models --------------------------------------------------------------------------


def _tiny_consistency_functions() -> tuple[list[nn.Module], Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """Two tiny networks (student, target) and their consistency functions c_skip x + c_out F(x)."""
    with torch.random.fork_rng(devices=[]):  # the nets' initial weights: leave the reader's seed alone
        torch.manual_seed(0)
        nets = [nn.Conv2d(1, 1, 3, padding=1) for _ in range(2)]

    def as_f(net: nn.Module) -> Callable[..., torch.Tensor]:
        return lambda x, sigma: _c_skip(sigma, 0.002) * x + _c_out(sigma, 0.002) * net(x)

    return nets, as_f(nets[0]), as_f(nets[1])


@exercise
def ct_loss(fn: Callable[..., Any]) -> None:
    """fn(student, target, x0, sigmas, n, z) = the consistency-training loss per image (Song et al. 2023,
    algorithm 3), against helpers.consistency.cd_loss with an Euler step of the one-sample denoiser
    D(x, sigma) = x0, on a tiny model; the target must receive no gradient."""
    nets, student, target = _tiny_consistency_functions()
    g = _gen()
    sigmas = _solvers.karras_sigmas(8, 0.002, 20.0)[:-1].flip(0).float()  # ascending, as cd_sigmas
    x0 = 2 * torch.rand(6, 1, 4, 4, generator=g) - 1
    n, z = torch.tensor([0, 1, 3, 5, 6, 2]), torch.randn(6, 1, 4, 4, generator=g)
    with torch.no_grad():
        want = cd_loss(student, target, lambda x, sigma: x0, x0, sigmas, n, z, "pseudo-huber", "euler")
    got = fn(student, target, x0.clone(), sigmas.clone(), n.clone(), z.clone())
    _close(got, want, "per-image loss")
    assert got.requires_grad, "the loss carries no gradient: the student's output must not be detached"
    for net in nets:
        net.zero_grad(set_to_none=True)
    got.sum().backward()
    assert nets[0].weight.grad is not None and nets[0].weight.grad.abs().sum() > 0, "no gradient reaches the student"
    assert nets[1].weight.grad is None or not nets[1].weight.grad.any(), "the target received a gradient: compute its output under torch.no_grad()"


@exercise
def predict_one_step_radius(fn: Callable[..., Any]) -> None:
    """fn() = (trend of the exact denoiser's one-step samples, trend of the exact consistency function's),
    in mean distance from the origin on the ring toy, as sigma_max grows through 0.5, 4, 32 with x
    drawn from the exact noisy marginal: -1 shrinks, 0 stays at the data's, +1 grows. The check runs it."""
    got = fn()
    assert isinstance(got, (tuple, list)) and len(got) == 2 and all(v in (-1, 0, 1) for v in got), f"return a pair of -1, 0 or +1, got {got!r}"
    toy, g = GaussianMixture.ring(), _gen()
    x0 = toy.sample(1000, g)
    data = float(x0.norm(dim=1).mean())
    radii: dict[str, list[float]] = {"the denoiser D(x, sigma_max)": [], "the consistency function f(x, sigma_max)": []}
    for sigma_max in (0.5, 4.0, 32.0):
        x = x0 + sigma_max * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        radii["the denoiser D(x, sigma_max)"].append(float(toy(x, sigma_max).norm(dim=1).mean()))
        f = _solvers.sample_heun(toy, x, _solvers.karras_sigmas(24, 0.01, sigma_max)[:-1])  # the ODE solved down to sigma_min = 0.01
        radii["the consistency function f(x, sigma_max)"].append(float(f.norm(dim=1).mean()))
    for (what, r), guess in zip(radii.items(), got):
        if all(abs(v - data) < 0.1 for v in r):
            outcome = 0
        else:
            outcome = -1 if r[0] > r[1] > r[2] else 1 if r[0] < r[1] < r[2] else None
        words = {-1: "shrinks", 0: "stays at the data's", 1: "grows"}
        assert guess == outcome, (f"{what}: you predicted its samples' mean radius {words[guess]}; at sigma_max = 0.5, 4, 32 it is "
                                  f"{', '.join(f'{v:.2f}' for v in r)} (the data's: {data:.2f})")


# ---- 12 · flow matching -------------------------------------------------------------------------------


@exercise
def flow_matching_loss(fn: Callable[..., Any]) -> None:
    """fn(model, x0, t, eps) = mean over pixels and images of (model(x_t, 1000 t) - (eps - x0))^2 with
    x_t = (1 - t) x0 + t eps: against FlowMatching.loss on small random networks that depend on t."""
    g = _gen(12)
    for shape in ((4, 1, 6, 6), (3, 2, 5, 5)):
        w, b = torch.randn(2, generator=g)
        model = lambda x, s, w=w, b=b: torch.tanh(w * x + b * s.view(-1, 1, 1, 1) / 1000) + 0.3 * x  # noqa: E731
        x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.rand(shape[0], generator=g)
        want = FlowMatching().loss(model, x0, t=t, noise=eps)
        _close(fn(model, x0.clone(), t.clone(), eps.clone()), want, f"loss of a batch of shape {shape}", atol=1e-5)


_M, _S = 0.7, 0.4  # the data of flow_heun's check: x_0 ~ N(M, S^2) in every dimension


def _gaussian_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """E[eps - x_0 | x_t = x] for x_0 ~ N(M, S^2): Cov(x_0, x_t) = (1 - t) S^2, Cov(eps, x_t) = t, Var(x_t) = (1 - t)^2 S^2 + t^2."""
    var = (1 - t) ** 2 * _S**2 + t**2
    centred = x - (1 - t) * _M
    return t / var * centred - (_M + (1 - t) * _S**2 / var * centred)


@exercise
def flow_heun(fn: Callable[..., Any]) -> None:
    """fn(velocity, x, steps) = Heun on dx/dt = velocity(x, t) from t = 1 to 0 in equal steps: against
    helpers.flow.FlowHeun on the exact velocity of Gaussian data (whose exact end from x_1 is M + S x_1)."""
    x1 = torch.randn(2000, 3, generator=_gen(13), dtype=torch.float64)
    model = lambda x, s: _gaussian_velocity(x, float(s[0]) / 1000)  # noqa: E731  the helper calls its network at 1000 t
    for steps in (1, 3, 10):
        want = sample(model, FlowMatching(), x1, FlowHeun(steps), progress=False, clamp=False)
        _close(fn(_gaussian_velocity, x1.clone(), steps), want, f"{steps} steps", atol=1e-5)
    errors = [float((fn(_gaussian_velocity, x1.clone(), n) - (_M + _S * x1)).abs().max()) for n in (8, 16)]
    assert errors[0] / errors[1] > 3, f"halving the step should cut the error about 4-fold (order 2); it fell from {errors[0]:.2e} to {errors[1]:.2e}"


def _euler(velocity: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, steps: int) -> torch.Tensor:
    for k in range(steps):
        t, t_next = 1 - k / steps, 1 - (k + 1) / steps
        x = x + (t_next - t) * velocity(x, t)
    return x


@exercise
def predict_reflow_steps(fn: Callable[..., Any]) -> None:
    """fn() = the predicted number of equal Euler steps (1, 10 or 100) that the reflowed ODE of Gaussian
    data x_0 ~ N(M, S^2) needs to land on M + S x_1 within 1e-9. The pairs (eps, M + S eps) are joined
    by lines x = (1 - t)(M + S eps) + t eps, one through each point, so the velocity there is that
    line's own, (1 - S) eps - M with eps = (x - (1 - t) M) / ((1 - t) S + t): constant along the path."""
    got = fn()
    assert got in (1, 10, 100), f"return 1, 10 or 100, got {got!r}"
    x1 = torch.randn(2000, 3, generator=_gen(14), dtype=torch.float64)
    exact = _M + _S * x1

    def reflowed(x: torch.Tensor, t: float) -> torch.Tensor:
        eps = (x - (1 - t) * _M) / ((1 - t) * _S + t)
        return (1 - _S) * eps - _M

    errors = {n: float((_euler(reflowed, x1, n) - exact).abs().max()) for n in (1, 10, 100)}
    first = {n: float((_euler(_gaussian_velocity, x1, n) - exact).abs().max()) for n in (1, 10, 100)}
    needed = min(n for n, e in errors.items() if e < 1e-9)
    assert got == needed, (f"you predicted {got}; the reflowed ODE lands within 1e-9 after {needed} (errors at 1, 10, 100 steps: "
                           f"{', '.join(f'{e:.1e}' for e in errors.values())}; the first flow's: {', '.join(f'{e:.1e}' for e in first.values())}). "
                           "Its paths are the straight lines themselves, so Euler's straight step is exact")


# ---- 13 · text-to-image ---------------------------------------------------------------------------


@exercise
def cross_attention(fn: Callable[..., Any]) -> None:
    """fn(block, x, context, pad) = a CrossAttentionBlock's output written out for any number of heads
    (the channels of q, k and v split into ``block.heads`` groups of consecutive channels, one softmax
    per head, padding masked): against the block itself with 1, 2 and 4 heads."""
    g = _gen(13)
    for heads in (1, 2, 4):
        block = CrossAttentionBlock(8, 6, groups=4, heads=heads).double()
        with torch.no_grad():
            for p in block.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        x, context = torch.randn(2, 8, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
        pad = torch.tensor([[False, False, True, True, True], [False, False, False, False, True]])
        with torch.no_grad():
            _close(fn(block, x.clone(), context.clone(), pad.clone()), block(x, context, pad), f"{heads} head(s)", atol=1e-9)


def _duplicates_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, ids: torch.Tensor, logit_scale: torch.Tensor) -> float:
    """The loss written out with loops over rows and columns (the reference the check holds the reader's to)."""
    n, scale = len(ids), float(logit_scale.exp())
    sim = [[scale * float(F.cosine_similarity(image_emb[i], text_emb[j], dim=0)) for j in range(n)] for i in range(n)]
    same = [[bool(torch.equal(ids[i], ids[j])) for j in range(n)] for i in range(n)]
    rows = [-math.log(sum(math.exp(sim[i][j]) for j in range(n) if same[i][j]) / sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)]
    cols = [-math.log(sum(math.exp(sim[i][j]) for i in range(n) if same[i][j]) / sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


@exercise
def contrastive_loss_with_duplicates(fn: Callable[..., Any]) -> None:
    """fn(image_emb, text_emb, ids, logit_scale) = the symmetric InfoNCE loss in which every caption
    identical to image i's own (equal token ids) is a match for it: row i's term is -log of the softmax
    mass on all such captions, and column j's likewise. Equal to helpers.clip.contrastive_loss when all
    captions differ; against a reference when some repeat."""
    g = _gen(14)
    img, txt = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor(math.log(8.0), dtype=torch.float64)
    distinct = torch.arange(12).view(6, 2)
    _close(fn(img.clone(), txt.clone(), distinct, scale), contrastive_loss(img, txt, scale), "all captions different", atol=1e-9)
    repeated = torch.tensor([[1, 4], [1, 5], [1, 4], [1, 6], [1, 5], [1, 4]])
    want = torch.tensor(_duplicates_loss(img, txt, repeated, scale), dtype=torch.float64)
    _close(fn(img.clone(), txt.clone(), repeated, scale), want, "captions 0, 2, 5 and 1, 4 repeat", atol=1e-9)


@exercise
def sdedit_loop(fn: Callable[..., Any]) -> None:
    """fn(model, d, image, timesteps, eps) = SDEdit by hand: the image noised to timesteps[0] by the
    forward process with ``eps``, then unclipped DDIM (eta = 0) through ``timesteps`` and on to x_0:
    against helpers.editing.SDEdit on a small random U-Net."""
    g = _gen(15)
    d = Diffusion.from_schedule("linear", 1000)
    with torch.random.fork_rng(devices=[]):  # the U-Net's initial weights, leaving the reader's global stream alone
        torch.manual_seed(15)
        model = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    image = torch.randn(3, 1, 8, 8, generator=g).clamp(-1, 1)
    for strength, steps in ((0.4, 20), (0.8, 10)):
        edit = SDEdit(image, strength, steps, clip_x0=False)
        eps = torch.randn(3, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = sample(model, d, eps.clone(), edit, progress=False, clamp=False)
            got = fn(model, d, image.clone(), edit.timesteps(d.T), eps.clone())
        _close(got, want, f"strength {strength}, {steps} steps (timesteps {edit.timesteps(d.T)[0]}, ..., {edit.timesteps(d.T)[-1]})", atol=1e-4)


def check(fn: Callable[..., Any]) -> None:
    """Run the exercise check named like ``fn`` and print the verdict in one line (never raises)."""
    name = getattr(fn, "__name__", repr(fn))
    if name not in EXERCISES:
        print(f"✗ no exercise is called {name!r}; keep the function's name from the stub")
        return
    try:
        EXERCISES[name](fn)
    except NotImplementedError:
        print(f"· {name}: not done yet (replace the line that raises NotImplementedError)")
    except AssertionError as e:
        print(f"✗ {name}: not right yet: {e}")
    except Exception as e:  # the reader's code crashed: say how, and keep the notebook running
        print(f"✗ {name} raised {type(e).__name__}: {e}")
    else:
        print(f"✓ {name}: correct")
