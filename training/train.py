"""``python -m training.train``: train one model × loss combination (the MLproject ``train``)."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    from training.run import train

    return run_cli(train, TrainConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
