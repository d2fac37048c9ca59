"""``python -m training.commands.retime``: time an exported version's runtimes again, here
(the MLproject ``retime``).

The work is ``training.pipeline.retime``."""
from __future__ import annotations

import sys

from training.cli import run_cli
from training.pipeline.retime import RetimeConfig, retime


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(retime, RetimeConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
