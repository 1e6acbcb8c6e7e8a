"""``python -m helpers <command> [flags]``: the course's one command line (``helpers.cli.COMMANDS``).

    python -m helpers --help                 the commands, one line each
    python -m helpers train --help           a command's flags

Each command is also its module's entry point (``python -m helpers.train`` runs the same code).
"""

from __future__ import annotations

import importlib
import sys

from helpers.cli import COMMANDS, PROG, fail


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [flags]   ({PROG} <command> --help lists a command's flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}; choose {', '.join(COMMANDS)} ({PROG} --help says what each does)")
    return importlib.import_module(COMMANDS[name].module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
