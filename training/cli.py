"""The command-line shape shared by every entry point: one ``--field`` per config field,
and any failure as one ``error: ...`` line on stderr with exit status 1."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """One ``--field`` option per dataclass field (less those the class sets itself, its
    ``PER_CHILD``), with its help and default."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(config_cls):
        if f.name in getattr(config_cls, "PER_CHILD", ()):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        helptext = f.metadata.get("help", "") + f" (default: {default!r})"
        if choices:
            helptext += f"; one of {', '.join(choices)}"
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, metavar=f.name.upper(),
                            help=helptext)
    return parser


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("ZOO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s stop), handled like Ctrl-C."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process it terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated``, so runs end KILLED, not RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(fn: Callable[[Any], Any], config_cls: type, argv: list[str] | None = None) -> int:
    """Parse ``argv`` into ``config_cls``, run ``fn(config)``; failures → one line, exit 1.

    Ctrl-C and SIGTERM → one line (saying how to resume, where there is a run to resume) and
    exit 130 / 143. ``ZOO_DEBUG=1`` re-raises for the full traceback.
    """
    setup_logging()
    doc = sys.modules[fn.__module__].__doc__
    args = build_parser(config_cls, doc).parse_args(argv)
    try:
        with sigterm_as_interrupt():
            fn(config_cls.from_dict({k: v for k, v in vars(args).items() if v is not None}))
    except KeyboardInterrupt as exc:
        print(f"error: {str(exc) or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except Exception as exc:  # one line for users
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
