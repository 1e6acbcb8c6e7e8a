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


def test_every_notebook_ends_with_two_or_three_exercises_and_every_check_is_used():
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        names = _exercises_of(nb)
        assert 2 <= len(names) <= 3, f"{nb.name} has {len(names)} exercises"
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
