"""The command-line shape shared by every entry point: one ``--field`` per config field,
and any failure as one ``error: ...`` line on stderr with exit status 1."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from training.config import params_of
from zoo.cli import StrictParser
from zoo.values import format_value


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """One ``--name`` option per parameter of the config (its parts' included), with its
    help and default. No abbreviations: ``--epoch`` is refused, not taken as ``--epochs``."""
    parser = StrictParser(description=description, noun="parameter")
    for param in params_of(config_cls):
        helptext = param.help + f" (default: {format_value(param.default)})"
        if param.choices:
            helptext += f"; one of {', '.join(param.choices)}"
        parser.add_argument(f"--{param.name}", dest=param.name, default=None,
                            metavar=param.name.upper(), help=helptext)
    return parser


def setup_logging() -> None:
    """INFO lines of the zoo on stderr (``ZOO_LOG_LEVEL`` to change). ``force``: importing
    ``mlflow.pytorch`` already called ``basicConfig(level=ERROR)``, which hid them."""
    logging.basicConfig(level=os.environ.get("ZOO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


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


def run_cli(fn: Callable[[Any], Any], config_cls: type, argv: list[str] | None = None, *,
            build: Callable[[dict[str, str]], Any] | None = None) -> int:
    """Parse ``argv`` into ``config_cls`` (``build`` makes the config of the parameters given,
    when it is not ``config_cls.from_dict``), run ``fn(config)``; failures → one line, exit 1.

    Ctrl-C and SIGTERM → one line (saying how to resume, where there is a run to resume) and
    exit 130 / 143. ``ZOO_DEBUG=1`` re-raises for the full traceback.
    """
    setup_logging()
    doc = sys.modules[fn.__module__].__doc__
    args = build_parser(config_cls, doc).parse_args(argv)
    try:
        with sigterm_as_interrupt():
            given = {k: v for k, v in vars(args).items() if v is not None}
            fn((build or config_cls.from_dict)(given))
    except KeyboardInterrupt as exc:
        print(f"error: {str(exc) or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except Exception as exc:  # one line for users
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
