"""``python -m training.commands.distill``: train a student on a registered teacher's outputs.

The work is ``training.pipeline.distill``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.distill import DistillConfig, distill


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(distill, DistillConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
