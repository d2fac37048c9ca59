"""``python -m training.commands.sweep``: every model × loss as nested runs of one parent run.

The work is ``training.pipeline.sweep``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.sweep import SweepConfig, run_sweep, sweep_config


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1. With ``--resume``, every
    parameter not given is the parent run's."""
    return run_cli(run_sweep, SweepConfig, argv, build=sweep_config)


if __name__ == "__main__":
    sys.exit(main())
