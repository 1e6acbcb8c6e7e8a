"""The notebooks' exercises: each solution in notebooks/solutions passes its check, a wrong answer
fails it, an open stub reads "not done yet", and every notebook ends with its exercises."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from einops import rearrange

from helpers.clip import contrastive_loss
from helpers.exercises import EXERCISES, check

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CALLED = re.compile(r"^check\((\w+)\)$", re.M)


def _exercises_of(notebook: Path) -> list[str]:
    return CALLED.findall(notebook.read_text())


def _solutions(stem: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"solutions_{stem}", NOTEBOOKS / "solutions" / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WHERE = {name: nb.stem for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")) for name in _exercises_of(nb)}


def _solution(name: str) -> Any:
    return getattr(_solutions(WHERE[name]), name)


def _off(value: Any) -> Any:
    """A slightly wrong answer of the same kind: tensors and numbers moved, lists moved entrywise."""
    if isinstance(value, torch.Tensor):
        return value + 0.1
    if isinstance(value, (list, tuple)):
        return [_off(v) for v in value]
    return value * 1.1 + 1


def test_every_notebook_ends_with_two_or_more_exercises_and_every_check_is_used():
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        names = _exercises_of(nb)
        assert len(names) >= 2, f"{nb.name} has {len(names)} exercises"
        text = nb.read_text()
        assert re.findall(r"^# ## (.+)$", text, re.M)[-1] == "Exercises", f"{nb.name}: the exercises come last"
    assert sorted(WHERE) == sorted(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_solution_passes_its_check(name):
    EXERCISES[name](_solution(name))


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_wrong_answer_fails_the_check(name):
    solution = _solution(name)
    with pytest.raises(AssertionError):
        EXERCISES[name](lambda *args: _off(solution(*args)))


MISTAKES = {  # a slip a student might make in each exercise
    "jump_forward": lambda x, a, b, ab, eps: (ab[b] / ab[a]).sqrt() * x + (1 - ab[b]).sqrt() * eps,  # x_from's own noise counted twice
    "snr_crossing": lambda ab: int(torch.nonzero(ab / (1 - ab) <= 1)[0]) - 1,  # the last step above 1
    "resblock_parameters": lambda i, o, e: 2 * i + 2 * o + 9 * i * o + o + 9 * o * o + o + e * o + o,  # forgot the skip
    "multihead_attention": lambda attn, x: x + attn.proj(  # scaled by sqrt(C), not sqrt(C / heads)
        (lambda q, k, v: (v @ torch.softmax(q.transpose(2, 3) @ k / x.shape[1] ** 0.5, -1).transpose(2, 3)))(
            *attn.qkv(attn.norm(x)).reshape(x.shape[0], 3, attn.heads, x.shape[1] // attn.heads, -1).unbind(1)
        ).reshape(x.shape)
    ),
    "up_block_channels": lambda *a: [(b, b, side) for b, _, side in _solution("up_block_channels")(*a)],  # every skip as wide as h
    "min_snr_loss_x0": lambda model, ab, x0, t, eps, g: (lambda a: (lambda x_t: (  # the eps loss's weight put on the x0 error
        (a / (1 - a)).clamp(max=g) / (a / (1 - a)) * ((x_t - (1 - a).sqrt() * model(x_t, t)) / a.sqrt() - x0) ** 2
    ).mean())(a.sqrt() * x0 + (1 - a).sqrt() * eps))(ab[t].float().view(-1, 1, 1, 1)),
    "eps_from_denoiser": lambda den, x, ab: (x - ab**0.5 * den(x, ((1 - ab) / ab) ** 0.5)) / (1 - ab) ** 0.5,  # x_t not rescaled by 1/sqrt(ab)
    "eps_loss_floor": lambda kappa, ab: kappa**2 / (kappa**2 + 1 - ab),  # the noise's variance in x_t, not sigma^2 in x_t / sqrt(ab)
    "ddpm_respaced": lambda model, d, x, ts, g: [  # each jump t -> t' taken as one step of the full chain (beta_t, not 1 - ab_t / ab_t')
        x := (lambda mean, var: mean + var**0.5 * torch.randn(x.shape, generator=g) if t > 0 else mean)(
            *d.q_posterior(d.predict_x0(x, t, model(x, torch.full((len(x),), t))).clamp(-1, 1), x, t)
        )
        for t in ts
    ][-1],
    "predict_sample_spread": lambda: (0, 0),  # the ancestral sampler taken to be exact at any number of steps
    "ddim_euler": lambda model, d, x, ts: _solution("ddim_euler")(  # the network given y = x_t / sqrt(alpha_bar), not x_t
        lambda x_t, t: model(x_t * (1 + d.sigmas[int(t[0])] ** 2) ** 0.5, t), d, x, ts
    ),
    "predict_ddim_spread": lambda: (0, 0),  # a deterministic sampler taken to keep the data's spread
    "ema_error": lambda d, s, j, n: (j * d**n) ** 2 + s**2 * (1 - d) / (1 + d),  # the stationary variance: forgot the average started at 0 without noise
    "ema_half_life": lambda d: 1 / (1 - d),  # the averaging window, not the half-life
    "v_loss": lambda m, ab, x0, t, e, g: (  # the eps loss's weight min(SNR, gamma) / SNR on the v error
        lambda a, snr: snr.clamp(max=g) / snr * ((m(a.sqrt() * x0 + (1 - a).sqrt() * e, t) - (a.sqrt() * e - (1 - a).sqrt() * x0)) ** 2).flatten(1).mean(1)
    )(ab[t].view(-1, 1, 1, 1), ab[t] / (1 - ab[t])),
    "ddim_step_from_v": lambda x, v, a, b: (  # rotated the wrong way: + sin(phi_t - phi_s) v_hat
        ((a * b) ** 0.5 + ((1 - a) * (1 - b)) ** 0.5) * x + (((1 - a) * b) ** 0.5 - (a * (1 - b)) ** 0.5) * v
    ),
    "guided_ddim_sample": lambda m, d, x, y, s, ts: _solution("guided_ddim_sample")(m, d, x, y, s + 1, ts),  # s read as Ho & Salimans' w
    "guidance_on_the_ring": lambda: (-1, 0),  # "tighter around the class centre": the mean does not move out
    "heun_sampler": lambda D, x, sigmas: [  # Heun's average also on the last step, to sigma = 0 (a slope divided by 0)
        x := x + (b - a) * ((x - D(x, a)) / a + ((e := x + (b - a) * (x - D(x, a)) / a) - D(e, b)) / b) / 2
        for a, b in zip(sigmas[:-1].tolist(), sigmas[1:].tolist())
    ][-1],
    "error_shrink_factors": lambda: (2.0, 4.0, 2.0),  # DPM-Solver++(2M) taken for first order: one evaluation per step
    "kl_to_prior": lambda m, lv, s: 0.5 * (m**2 / s**2 + lv.exp() / s**2 - 1 - lv).flatten(1).sum(1),  # forgot the prior's log s^2
    "predict_spread_effect": lambda: (1, 1),  # "any spread but 1 is worse"
    "ct_loss": lambda st, tg, x0, s, n, z: (  # the target fed the student's input x_{n+1}, at level sigma_n
        lambda a, b: ((a - b).flatten(1).pow(2).sum(1) + (0.00054 * 4) ** 2).sqrt() - 0.00054 * 4
    )(st(x0 + s[n + 1].view(-1, 1, 1, 1) * z, s[n + 1].view(-1, 1, 1, 1)), tg(x0 + s[n + 1].view(-1, 1, 1, 1) * z, s[n].view(-1, 1, 1, 1)).detach()),
    "predict_one_step_radius": lambda: (0, 0),  # "the denoiser is exact too, so it samples exactly"
    "flow_matching_loss": lambda m, x0, t, e: (  # the network given t, not 1000 t
        m((1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * e, t) - (e - x0)
    ).pow(2).mean(),
    "flow_heun": lambda u, x, n: [  # the corrector's second velocity taken at the start point, not the predicted one
        x := x + (b - a) * (u(x, a) + u(x, b)) / 2 for a, b in zip([1 - k / n for k in range(n)], [1 - (k + 1) / n for k in range(n)])
    ][-1],
    "predict_reflow_steps": lambda: 100,  # "as many steps as any ODE of a curved flow"
    "cross_attention": lambda b, x, c, p: x + b.proj(  # heads split as (d n): every head-th channel, not consecutive ones
        (lambda q, k, v: rearrange((q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(p[:, None, None], -math.inf).softmax(-1) @ v,
                                   "b n (h w) d -> b (d n) h w", h=x.shape[2]))(
            rearrange(b.q(b.norm(x)), "b (d n) h w -> b n (h w) d", n=b.heads), *rearrange(b.kv(c), "b l (two d n) -> two b n l d", two=2, n=b.heads))
    ),
    "contrastive_loss_with_duplicates": lambda i, t, ids, s: contrastive_loss(i, t, s),  # every repeat of a caption counted as a wrong match
    "sdedit_loop": lambda m, d, x0, ts, e: _solution("sdedit_loop")(m, d, x0 * 0, ts, e),  # the image left out of x_{t_0}: sqrt(1 - ab) eps alone
}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_plausible_mistake_fails_the_check(name):
    with pytest.raises(AssertionError):
        EXERCISES[name](MISTAKES[name])


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_notebook_stub_is_not_done_yet_and_check_never_raises(name, capsys):
    """The stub as the notebook stores it (executed from its cell) reports "not done yet"."""
    source = (NOTEBOOKS / f"{WHERE[name]}.py").read_text()
    stub = re.search(rf"^def {name}\(.*?(?=^\S)", source, re.M | re.S).group(0)
    assert "raise NotImplementedError" in stub
    scope: dict[str, Any] = {}
    exec(stub, scope)
    check(scope[name])
    assert capsys.readouterr().out.startswith(f"· {name}: not done yet")


def test_checks_leave_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    for name in ("multihead_attention", "ema_error"):
        EXERCISES[name](_solution(name))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_check_names_what_is_wrong_and_what_crashed(capsys):
    def jump_forward(x_from, t_from, t_to, alpha_bars, eps):
        return x_from  # forgot the noise

    def snr_crossing(alpha_bars):
        return alpha_bars.nonexistent

    check(jump_forward)
    check(snr_crossing)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("✗ jump_forward: not right yet: linear schedule, one step 499 -> 500: off by up to")
    assert out[1].startswith("✗ snr_crossing raised AttributeError")
