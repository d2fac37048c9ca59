"""A migration's work at a lower CPU priority than the requests.

Carrying re-embeds every kept entry as fast as the cores allow; on a server that also
answers, requests should come first. On Linux each thread has its own niceness, and the
threads a thread starts inherit it, so the migration runs on a thread of its own made nicer
(its reader and writer threads with it) while the workers' request threads keep theirs. A
niceness only ever goes up without privileges, hence a fresh thread per migration. Where
threads cannot be made nicer (not Linux), the work runs as it is, with one log line.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def nicer_thread(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer (at most 19)."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + nice))
    except (AttributeError, OSError) as exc:  # not a Linux thread: the process's priority
        log.info("the migration runs at the requests' priority: %s", exc)


def run_nicer(nice: int, work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs)`` on a fresh thread ``nice`` steps nicer; its result, or its
    exception raised here."""
    with ThreadPoolExecutor(1, thread_name_prefix="zoo-migration",
                            initializer=nicer_thread, initargs=(nice,)) as pool:
        return pool.submit(work, *args, **kwargs).result()
