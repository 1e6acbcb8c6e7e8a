"""What keeps a long training run's work safe: one run per checkpoint, and Ctrl-C or SIGTERM that
stop at a step boundary so the run can save before it exits.

* ``RunLock``: ``<checkpoint>.lock`` holds the training process's id; a second run on the same
  checkpoint is refused instead of interleaving its log with the first's.
* ``deferred_interrupts``: SIGINT and SIGTERM are recorded instead of raised, so the training loop
  finishes the step in flight, writes its checkpoint and then stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["SAVE_MINUTES", "RunLockedError", "RunLock", "deferred_interrupts"]

SAVE_MINUTES = 10  # how often a training run writes its checkpoint unless told a number of steps


class RunLockedError(RuntimeError):
    """Another live process is training into the same checkpoint."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


class RunLock:
    """``with RunLock(checkpoint):`` holds ``<checkpoint>.lock`` (this process's id) for the block.

    A lock whose process no longer exists (a run that was killed) is taken over.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.path = self.checkpoint.with_name(self.checkpoint.name + ".lock")

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise RunLockedError(
                        f"{self.checkpoint} is being trained by process {pid} (lock {self.path}); "
                        f"wait for it to finish, stop it, or write to another file"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a run that no longer exists
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are appended to the yielded list instead of stopping
    the program; the caller checks the list between steps. A second SIGINT stops at once (for a
    step that hangs). Outside the main thread, where Python cannot catch signals, nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def record(signum: int, frame: object) -> None:
        received.append(signum)
        if received.count(signal.SIGINT) > 1:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
