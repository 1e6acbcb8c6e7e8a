"""The notebooks' exercises: each solution in notebooks/solutions passes its check, a wrong answer
fails it, an open stub reads "not done yet", and every notebook ends with its exercises."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

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
    "forward_step": lambda x, beta, eps: (1 - beta) * x + beta**0.5 * eps,  # no square root on the signal
    "snr_crossing": lambda ab: int(torch.nonzero(ab / (1 - ab) <= 1)[0]) - 1,  # the last step above 1
    "resblock_parameters": lambda i, o, e: 2 * i + 2 * o + 9 * i * o + o + 9 * o * o + o + e * o + o,  # forgot the skip
    "multihead_attention": lambda attn, x: x + attn.proj(  # scaled by sqrt(C), not sqrt(C / heads)
        (lambda q, k, v: (v @ torch.softmax(q.transpose(2, 3) @ k / x.shape[1] ** 0.5, -1).transpose(2, 3)))(
            *attn.qkv(attn.norm(x)).reshape(x.shape[0], 3, attn.heads, x.shape[1] // attn.heads, -1).unbind(1)
        ).reshape(x.shape)
    ),
    "min_snr_weight": lambda ab, t, g: (ab / (1 - ab))[t].clamp(max=g).float(),  # the x0 loss's weight
    "initial_loss": lambda ab, g: 1.0,  # the unweighted loss
    "x0_from_eps": lambda ab, x, e: (x + (1 - ab) ** 0.5 * e) / ab**0.5,  # sign
    "posterior_mean_from_eps": lambda a, ab, x, e: (x - (1 - a) / (1 - ab) * e) / a**0.5,  # no square root
    "leading_timesteps": lambda T, n: [round(T - k * T / n) - 1 for k in range(n)],  # the trailing grid
    "ddim_sigma": lambda ab, ab_prev, eta: ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5,  # eta forgotten
    "ema_update": lambda s, p, d: [d * b + (1 - d) * a for a, b in zip(s, p)],  # decay on the new weights
    "ema_half_life": lambda d: 1 / (1 - d),  # the averaging window, not the half-life
    "x0_from_v": lambda ab, x, v: ab**0.5 * x + (1 - ab) ** 0.5 * v,  # sign
    "eps_from_v": lambda ab, x, v: ab**0.5 * x + (1 - ab) ** 0.5 * v,  # the roles of the two factors swapped
    "drop_labels": lambda y, p, null, g: torch.where(torch.rand(y.shape, generator=g) < 1 - p, torch.full_like(y, null), y),
    "guidance_w_form": lambda c, u, w: u + w * (c - u),  # our s-form with s = w
    "tweedie": lambda x, sigma, score: x + sigma * score,  # sigma where sigma^2 belongs
    "kl_to_standard_normal": lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).mean(1),  # a mean over latents, not the sum
    "latent_scale_factor": lambda z: 1 / float(z.abs().mean()),  # the mean magnitude, not the standard deviation
    "consistency_coefficients": lambda s, m: (0.25 / ((s - m) ** 2 + 0.25), s * 0.5 / (s**2 + 0.25) ** 0.5),  # EDM's c_out: no shift by sigma_min
    "pseudo_huber": lambda a, b: ((a - b).flatten(1).pow(2).sum(1) + (0.00054 * 28) ** 2).sqrt(),  # forgot to subtract c
    "ancestral_split": lambda s, s_next: (0.0, s_next) if s_next == 0 else (s_next * s_next / s, (s**2 - s_next**2) ** 0.5),  # the full reverse-diffusion noise
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
    for name in ("multihead_attention", "ema_update"):
        EXERCISES[name](_solution(name))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_an_in_place_ema_update_is_refused():
    def ema_update(shadow, params, decay):
        for s, p in zip(shadow, params):
            s.mul_(decay).add_((1 - decay) * p)
        return shadow

    with pytest.raises(AssertionError, match="the inputs changed"):
        EXERCISES["ema_update"](ema_update)


def test_check_names_what_is_wrong_and_what_crashed(capsys):
    def forward_step(x_prev, beta, eps):
        return x_prev  # forgot the noise

    def snr_crossing(alpha_bars):
        return alpha_bars.nonexistent

    check(forward_step)
    check(snr_crossing)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("✗ forward_step: not right yet: t = 0: off by up to")
    assert out[1].startswith("✗ snr_crossing raised AttributeError")
