"""One live process owns a run (or a sweep or study folder) at a time.

The owner holds an exclusive `fcntl.flock` on `<folder>/.owner`, which also
records its pid for the message a second process gets. The kernel releases
the lock when the owner exits in any way, SIGKILL included, so a killed run
is never left locked, and "is anyone training this?" is answered by trying
the lock, not by trusting a status written before the crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from caplab.errors import RunInUse, UnsafePath

OWNER_FILE = ".owner"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_within(fd: int, seconds: float) -> bool:
    """The lock, retried briefly: a reader's probe (`is_owned`) holds it for microseconds."""
    deadline = time.monotonic() + seconds
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _holder(path: Path) -> str:
    try:
        return (path / OWNER_FILE).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def owning(path: Path, what: str = "run") -> Iterator[None]:
    """Own the folder `path` while the block runs; RunInUse (one line, exit 2) if a live process owns it,
    UnsafePath if the folder (or its checkpoints/figures folder) is a symbolic link.

    Not re-entrant across open files: a process that already owns `path` must not ask again.
    """
    path = Path(path)
    for folder in (path, path / "checkpoints", path / "figures"):
        if folder.is_symlink():  # writing through it could land anywhere on the machine
            raise UnsafePath(f"{folder} is a symbolic link; caplab writes only inside the runs root")
    fd = os.open(path / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        if not _lock_within(fd, seconds=1.0):
            raise RunInUse(f"{what} {path.name} is in use by pid {_holder(path)}; wait for it or stop that process")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def is_owned(path: Path) -> bool:
    """Whether a live process owns the folder `path` now (False for a folder never owned, or read-only)."""
    try:
        fd = os.open(Path(path) / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if _try_lock(fd):
            return False  # nobody held it; ours is released by the close below
        return True
    finally:
        os.close(fd)


def live_status(status: str, path: Path) -> str:
    """A recorded status as it stands: "running" without a live owner means the owner died (interrupted)."""
    return "interrupted" if status == "running" and not is_owned(path) else status
