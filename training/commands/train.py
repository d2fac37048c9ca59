"""``python -m training.commands.train``: train one model × loss combination
(the MLproject ``train``).

With ``--nproc N`` (N > 1) it starts itself N times under torchrun, data-parallel; started by
torchrun directly (``torchrun --nproc_per_node=N -m training.commands.train ...``) it is one
of them.
"""
from __future__ import annotations

import os
import sys

from training.cli import build_parser, run_cli
from training.config import TrainConfig
from zoo.values import parse_value


def requested_nproc(argv: list[str]) -> int:
    """The ``--nproc`` in ``argv`` (1 when absent); a bad value is left for the full parse.
    An unknown or shortened name stops here, before torch and MLflow are imported (14 s)."""
    args = build_parser(TrainConfig, __doc__).parse_args(argv)
    try:
        return int(parse_value(int, args.nproc, "nproc")) if args.nproc else 1
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> int:
    from training.engine.distributed import current_world, launch, under_torchrun

    argv = list(sys.argv[1:] if argv is None else argv)
    nproc = requested_nproc(argv)
    if nproc > 1 and not under_torchrun():
        return launch(nproc, "training.commands.train", argv)
    if not current_world().is_main:
        os.environ.setdefault("ZOO_LOG_LEVEL", "WARNING")  # rank 0 speaks for the run
    from training.pipeline.run import train

    return run_cli(train, TrainConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
