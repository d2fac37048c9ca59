"""``python -m training.commands.tune``: search one loss's hyperparameters with Optuna.

The work is ``training.pipeline.tune``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.tune import TuneConfig, run_tune


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(run_tune, TuneConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
