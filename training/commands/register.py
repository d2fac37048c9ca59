"""``python -m training.commands.register``: promote the best run of an experiment or sweep.

The work is ``training.pipeline.register``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.register import RegisterConfig, register


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(register, RegisterConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
