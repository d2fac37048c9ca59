"""``python -m training.commands.evaluate``: evaluate registered models, alone or as an ensemble.

The work is ``training.pipeline.evaluate``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.evaluate import EvaluateConfig, evaluate_models


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(evaluate_models, EvaluateConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
