"""``python -m training.train``: train one model × loss combination (the MLproject ``train``)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from training.config import TrainConfig


def build_parser(config_cls: type = TrainConfig, description: str | None = None) -> argparse.ArgumentParser:
    """One ``--field`` option per dataclass field, with its help and default."""
    parser = argparse.ArgumentParser(description=description or __doc__)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        helptext = f.metadata.get("help", "") + f" (default: {default!r})"
        if choices:
            helptext += f"; one of {', '.join(choices)}"
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, metavar=f.name.upper(),
                            help=helptext)
    return parser


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("ZOO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def config_from_args(args: argparse.Namespace, config_cls: type = TrainConfig):
    return config_cls.from_dict({k: v for k, v in vars(args).items() if v is not None})


def run_cli(fn, argv: list[str] | None = None, config_cls: type = TrainConfig) -> int:
    """Parse, run ``fn(config)``, and turn any failure into one line on stderr and exit 1."""
    setup_logging()
    args = build_parser(config_cls, fn.__module__ and sys.modules[fn.__module__].__doc__).parse_args(argv)
    try:
        fn(config_from_args(args, config_cls))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; ZOO_DEBUG=1 for the traceback
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.run import train

    return run_cli(train, argv)


if __name__ == "__main__":
    sys.exit(main())
