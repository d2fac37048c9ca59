"""What every worker of a deployment agrees on, in one small file beside the gallery:
the version answering, the versions refused, and the latest migration's progress.

``<gallery folder>/serving.json``, written whole and renamed into place under a lock, so a
reader never sees half of it; each worker reads it twice a second and loads the version it
names. A migration holds ``migration.lock`` (an ``flock``: released by the kernel when its
holder dies, even by kill -9), so one worker migrates and the others wait for its verdict.
The state belongs to the ``ZOO_MODEL_URI`` it was written under: a server started with
another URI starts afresh.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STATE_FILE = "serving.json"
LOCK_FILE = "serving.lock"
MIGRATION_LOCK = "migration.lock"


@dataclass
class State:
    """The deployment's shared state (see the module's docstring)."""

    configured: str = ""  # the ZOO_MODEL_URI this state belongs to
    serving: str | None = None  # the pinned URI every worker answers with
    refused: dict[str, str] = field(default_factory=dict)  # pinned URI -> why
    migration: dict[str, Any] | None = None  # the latest migration's status (``Status``)
    server: int | None = None  # the process whose workers these are (their parent's pid)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "State":
        known = {k: data[k] for k in ("configured", "serving", "refused", "migration", "server")
                 if k in data}
        return cls(**known)


class Busy(RuntimeError):
    """Another worker (or a ``serving.migrate``) is migrating this gallery."""


def _private(path: Path) -> Any:
    """A lock file, made 0600 as everything beside the gallery is."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")


def read(folder: Path) -> State:
    """The state in ``folder`` (an empty one where there is none, or it cannot be parsed)."""
    try:
        return State.from_dict(json.loads((folder / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return State()


def stamp(folder: Path) -> float:
    """When the state last changed (0 when there is none): cheap, read twice a second."""
    try:
        return (folder / STATE_FILE).stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def update(folder: Path, change: Callable[[State], None]) -> State:
    """``change`` the state in place under the lock, then write it whole; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    with _private(folder / LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read(folder)
        change(state)
        fd, tmp = tempfile.mkstemp(prefix=".serving-", dir=folder)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(state), out, indent=1)
        os.replace(tmp, folder / STATE_FILE)
    return state


@contextlib.contextmanager
def migrating(folder: Path) -> Iterator[None]:
    """Hold the gallery's migration lock, or raise ``Busy`` at once where another holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with _private(folder / MIGRATION_LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"a migration of the gallery in {folder} is running (a server "
                       "following its alias, POST /gallery/migrate or serving.migrate): "
                       "try again when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migration_running(folder: Path) -> bool:
    """Whether some process holds the migration lock now."""
    try:
        with migrating(folder):
            return False
    except Busy:
        return True
