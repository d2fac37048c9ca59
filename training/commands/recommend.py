"""``python -m training.commands.recommend``: which model × loss to try first on a new data set.

The work is ``training.pipeline.recommend``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.recommend import RecommendConfig, recommend


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(recommend, RecommendConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
