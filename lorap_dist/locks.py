"""Exclusive locks between processes that die with their holder.

A lock is an ``flock`` on a small file that also names its holder. The system releases an
``flock`` when the process that took it ends, however it ends, so a killed run or prepare
never blocks the next one, and a reused process ID means nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` says which (``process PID on HOST``)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def try_lock(path: Path) -> TextIO:
    """Take the lock on ``path`` (created if missing) without waiting.

    Returns the open file: the lock is held until it is closed. Raises :class:`LockHeld`
    when another process holds it.
    """
    handle = open(path, "a+")  # the caller closes it to release the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise LockHeld(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing, with its folder) for the ``with``
    block, waiting while another process holds it: for work that must happen once, such as
    processing a dataset that several processes open at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield
