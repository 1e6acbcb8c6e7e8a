"""The scaffolding of the course's one command line, ``python -m helpers <command>``: every command
(``COMMANDS``) builds its parser and reports its errors here, so a flag, a help text or a message
is written once.

    parser(name, about)          an ``argparse`` parser whose errors are one ``error:`` line
    add_common(p, ...)           --profile, --device, --out, --resume, --no-progress (one help text each)
    add_config(p, Config)        a flag for every field of a settings dataclass (TrainConfig, DistilConfig, ...)
    given(args, Config)          the fields of it that the command line set
    positive, count, positive_number, finite     argparse types on ``helpers.validate``
    pick(args), profile_of(args, device)         the device and profile; a device that is asked for
                                 and absent (``--device cuda`` without CUDA) is a one-line error
    check_out(out, resume)       "<out> exists: pass --resume to continue it, or --out to write elsewhere"
    start(args, Config, key)     a training command's device, profile, checked --out and given settings
    resume, train_to, saved      continue a run from its checkpoint; train it to its target steps; say so
    setting_up(), running(out)   turn the errors of a run's preparation and of the run into one line
    CliError, fail(message)      one ``error:`` line on stderr, exit code 2 (or the error's code)
    run_command(build, run, argv)   parse, run, and report: what every command's ``main`` is

The module imports only light things at the top, so that ``python -m helpers --help`` answers at
once; torch and the course's modules are imported when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from helpers import validate

if TYPE_CHECKING:
    import torch

    from helpers.config import Profile

__all__ = [
    "Command", "COMMANDS", "PROG", "CliError", "one_line", "fail", "Parser", "parser", "flag", "positive", "count", "positive_number",
    "finite", "add_common", "add_config", "given", "pick", "profile_of", "check_out", "start", "resume", "train_to", "saved",
    "setting_up", "running", "run_command",
]  # fmt: skip

PROG = "python -m helpers"


@dataclass(frozen=True)
class Command:
    """A command of ``python -m helpers``: the module whose ``main(argv)`` runs it, and one line on what it does."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("helpers.train", "train the course's U-Net under a profile, resumably, into the checkpoints the notebooks load"),
    "sample": Command("helpers.sample", "draw images from a checkpoint into a PNG grid, an .npz or a folder of PNGs"),
    "distil": Command("helpers.distil", "distil a trained diffusion model into a consistency model (notebook 11), resumably"),
    "autoencoder": Command("helpers.autoencode", "train latent diffusion's autoencoder (notebook 10), resumably"),
    "bench": Command("helpers.bench", "time training and sampling, and compare quality with a reference library at equal minutes"),
    "pretrained": Command("helpers.pretrained", "measure a shipped model against its card, or export a checkpoint as a shipped model"),
}


# ---- errors ----------------------------------------------------------------------------------------


class CliError(Exception):
    """Bad input to a command: printed as one ``error:`` line, exit code ``code`` (2: the input; 1: the run failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def one_line(message: object) -> str:
    """``message`` on one line (the lines of a longer one joined with "; ")."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: object, code: int = 2) -> int:
    """Print ``error: <message>`` as one line on stderr; return the exit code ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code


# ---- the parser ------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (an unknown flag, a bad value) raise ``CliError``, so that
    ``run_command`` reports them as one line and ``main`` returns 2 instead of exiting; ``group(title)``
    is its argument group of that title (made at the first call, so the first call sets the order)."""

    def group(self, title: str) -> argparse._ArgumentGroup:
        found = [g for g in self._action_groups if g.title == title]
        return found[0] if found else self.add_argument_group(title)

    def error(self, message: str) -> NoReturn:
        # "argument --n: must be a positive integer, got 0" (the types below) -> "--n must be ..."
        message = re.sub(r"^argument ([^:]+): must ", r"\1 must ", message)
        raise CliError(f"{message} (see {self.prog} --help)")


def parser(name: str, about: str = "", *, common: bool = True, config: type | None = None, group: str | None = None, **flags: Any) -> Parser:
    """The parser of the command ``name``: its prog is ``python -m helpers <name>``, its description
    its summary in ``COMMANDS`` and then ``about``; with ``common``, the flags of ``add_common``
    (``flags`` choose which), and with ``config`` a flag for each of its fields (``add_config``)."""
    summary = COMMANDS[name].summary
    p = Parser(prog=f"{PROG} {name}", description=f"{summary[0].upper()}{summary[1:]}. {about}".strip())
    if common:
        add_common(p, **flags)
    if config is not None:
        add_config(p, config, group)
    return p


def flag(name: str) -> str:
    """The flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return f"--{name.replace('_', '-')}"


class _Checked:
    """An argparse type: ``parse`` the text, then ``check`` it with ``helpers.validate``; a value
    that fails is refused in the check's words ("must be a positive integer, got 0")."""

    def __init__(self, parse: Callable[[str], Any], check: Callable[..., Any], **bounds: Any) -> None:
        self.parse, self.check, self.bounds = parse, check, bounds
        self.__name__ = getattr(check, "__name__", "value")  # argparse names the type in some messages

    def __call__(self, text: str) -> Any:
        try:
            value = self.parse(text)
        except ValueError:
            value = text  # not a number at all: the check refuses the text in its own words
        try:
            return self.check("", value, **self.bounds)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).strip()) from None


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


positive = _Checked(int, validate.integer)  # 1, 2, 3, ...
count = _Checked(int, validate.integer, minimum=0)  # 0, 1, 2, ...
positive_number = _Checked(float, validate.number)  # a finite float > 0
finite = _Checked(float, _finite)  # any finite float


_HELP = {
    "profile": "the scale of data, model and settings: {profiles} (default: $DIFFUSION_PROFILE, else gpu on CUDA and laptop elsewhere)",
    "device": "cuda, cuda:N, mps or cpu (default: $DIFFUSION_DEVICE, else the first of CUDA, MPS and the CPU that is there); "
    "one that is asked for and absent is an error",
    "out": "the checkpoint to write (default: artifacts/<profile>/checkpoints/{file})",
    "resume": "continue --out exactly where it stopped (weights, optimiser, EMA, data position, random state); "
    "its settings come from the checkpoint, and a flag that contradicts them is an error",
    "no_progress": "no progress bar (for log files)",
}


def add_common(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    profile: bool = True,
    device: bool = True,
    writes: str | None = None,
    progress: bool = True,
) -> None:
    """The flags commands share, each with its one help text: ``--profile``, ``--device``,
    ``--no-progress``, and for a command that ``writes`` a checkpoint (its file name under
    ``artifacts/<profile>/checkpoints/``, or a description of the default) ``--out`` and ``--resume``."""
    if profile:
        from helpers.config import PROFILES

        p.add_argument("--profile", choices=list(PROFILES), default=None, help=_HELP["profile"].format(profiles=", ".join(PROFILES)))
    if writes is not None:
        p.add_argument("--out", type=Path, default=None, help=_HELP["out"].format(file=writes))
        p.add_argument("--resume", action="store_true", help=_HELP["resume"])
    if device:
        p.add_argument("--device", default=None, help=_HELP["device"])
    if progress:
        p.add_argument("--no-progress", action="store_true", help=_HELP["no_progress"])


_PARSE = {"int": int, "float": float, "float | None": float, "str": str}


def add_config(p: Parser, config: type, group: str | None = None) -> None:
    """A flag for every field of the settings dataclass ``config``, with the help text of its
    metadata and default None (the profile's value), in the argument group its metadata names,
    else in ``group`` (else the parser's own). The values are checked where the settings are built
    (``config(...)``), not here: one check, one message."""
    for f in fields(config):
        where = f.metadata.get("group", group)
        target = p if where is None else p.group(where)
        kw: dict[str, Any] = {"default": None, "help": f"{f.metadata['help']} (default: the profile's)"}
        if f.type in ("bool", "bool | None"):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.type in _PARSE:
            kw.update(type=_PARSE[f.type], choices=f.metadata.get("choices"))
        else:
            raise TypeError(f"{config.__name__}.{f.name} has the type {f.type}, which has no command-line form")
        target.add_argument(flag(f.name), **kw)


def given(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The fields of ``config`` that the command line set (``add_config``'s flags that are not None)."""
    return {f.name: getattr(args, f.name) for f in fields(config) if getattr(args, f.name, None) is not None}


# ---- what every command checks first ----------------------------------------------------------------


def pick(args: argparse.Namespace) -> torch.device:
    """The device of ``--device`` (else ``$DIFFUSION_DEVICE``, else the best there is); an unknown
    device, or one that is asked for and absent, is a CliError."""
    from helpers.device import configure_cuda, pick_device

    try:
        device = pick_device(getattr(args, "device", None))
    except ValueError as err:
        raise CliError(str(err)) from None
    configure_cuda(device)
    return device


def profile_of(args: argparse.Namespace, device: torch.device) -> Profile:
    """The profile of ``--profile`` (else ``$DIFFUSION_PROFILE``, else the device's); an unknown one is a CliError."""
    from helpers.config import get_profile

    try:
        return get_profile(getattr(args, "profile", None), device)
    except ValueError as err:
        raise CliError(str(err)) from None


def check_out(out: Path, resume: bool | None) -> Path:
    """``out``, unless it must not be written: with ``resume``, it must be there; without, it must
    not (a finished run is never overwritten by accident). ``resume=None``: the command cannot resume."""
    if resume and not out.is_file():
        raise CliError(f"--resume, but there is no checkpoint at {out}")
    if not resume and out.exists():
        hint = "pass --resume to continue it, or --out to write elsewhere" if resume is not None else "delete it first, or pass --out to write elsewhere"
        raise CliError(f"{out} exists: {hint}")
    return out


def start(args: argparse.Namespace, config: type, checkpoint: str | Callable[[Profile], str], world: Any = None) -> tuple[torch.device, Profile, Path, dict[str, Any]]:
    """What a command that trains begins with: (the device, placed in ``world`` under torchrun; the
    profile; the checkpoint to write, ``--out`` or else the profile's file ``checkpoint`` of
    ``helpers.paths.CHECKPOINTS`` (or the key a function of the profile gives), held to
    ``check_out``; the settings of ``config`` that the command line gave)."""
    device = pick(args)
    device = world.device(device) if world is not None else device
    profile = profile_of(args, device)
    key = checkpoint if isinstance(checkpoint, str) else checkpoint(profile)
    return device, profile, check_out(args.out or profile.checkpoint(key), args.resume), given(args, config)


def resume(run: Any, out: Path, say: Callable[..., None] = print) -> None:
    """Continue the run (a ``helpers.runs.GuardedRun``) from ``out`` exactly, and say so."""
    run.load(out)
    say(f"resuming {out} at step {run.step}")


def train_to(run: Any, out: Path, target: int, say: Callable[..., None] = print, **options: Any) -> bool:
    """Train the run until step ``target``, saving to ``out`` (``options`` go to its ``train``),
    under ``running``; False, and it says so, when a resumed run already stands there."""
    if run.step >= target:
        say(f"{out} is already at step {run.step} (target {target}); nothing to do")
        return False
    with running(out):
        run.train(save_to=out, **options)
    return True


def saved(out: Path, step: int, detail: str = "", say: Callable[..., None] = print) -> None:
    say(f"saved {out} at step {step}{detail}")


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """Around a run's preparation: bad settings (ValueError), missing or damaged files and data
    become one-line errors (exit code 2)."""
    from helpers.checkpoints import CheckpointError
    from helpers.data import DatasetUnavailableError

    try:
        yield
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, DatasetUnavailableError) as err:
        raise CliError(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)) from None
    except OSError as err:  # e.g. a read-only artifacts folder
        raise CliError(f"cannot write the run's files ({err.strerror or err}: {err.filename})") from None


@contextlib.contextmanager
def running(out: Path) -> Iterator[None]:
    """Around a training run that writes ``out``: another run on the file, a damaged cache, data
    that went missing, a setting found wanting (exit code 2); weights that stopped being finite, a
    failed write (exit code 1). A stop (Ctrl-C, SIGTERM) passes through to ``run_command``."""
    from helpers.checkpoints import CheckpointError
    from helpers.data import DatasetUnavailableError
    from helpers.runs import RunLockedError

    try:
        yield
    except (RunLockedError, CheckpointError, DatasetUnavailableError, ValueError) as err:  # ValueError: a setting found wanting late
        raise CliError(str(err)) from None
    except FloatingPointError as err:  # the loss or the weights stopped being finite
        raise CliError(str(err), 1) from None
    except OSError as err:  # a read-only folder, a full disk
        raise CliError(f"could not write the run's files ({err.strerror or err}: {err.filename or out})", 1) from None


def run_command(build: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int | None], argv: list[str] | None) -> int:
    """What every command's ``main`` does: parse ``argv`` with ``build()``'s parser, ``run`` it, and
    return the exit code: 0, a CliError's code after its one line, or 130 after a stop (whose
    message says what was saved)."""
    try:
        return run(build().parse_args(argv)) or 0
    except CliError as err:
        return fail(err, err.code)
    except KeyboardInterrupt as err:
        print(f"stopped: {one_line(err)}" if str(err) else "stopped", file=sys.stderr)
        return 130
