"""An exclusive lock between processes on one machine: ``flock`` on a lock file.

Used wherever several processes may write the same thing at once: a gallery folder that
two server workers enroll into, an embedded SQLite store that sweep workers open for the
first time, a registered model whose aliases two sweeps move.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
