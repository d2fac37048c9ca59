"""``python -m zoo list``: what the catalogue holds (models, losses, data sources)."""
from __future__ import annotations

import argparse
import sys

from zoo.registry import Registry


def _section(title: str, registry: Registry, extra=lambda entry: "") -> list[str]:
    lines = [f"{title} ({len(registry)}):"]
    width = max((len(e.name) for e in registry), default=0)
    for entry in registry:
        lines.append(f"  {entry.name:<{width}}  {extra(entry)}{entry.doc}")
    return lines


def catalogue() -> str:
    """The three registries as text."""
    from zoo.data import DATASETS
    from zoo.losses import LOSSES
    from zoo.models import MODELS, model_modality

    lines = _section("models", MODELS, lambda e: f"[{model_modality(e.name)}] ")
    lines.append("  timm/<name>  [image] any timm model, e.g. timm/efficientvit_m0")
    lines += [""] + _section("losses", LOSSES)
    lines += [""] + _section("data sources", DATASETS)
    lines.append("  (a folder path means `folder`, a .csv path means `csv`)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    parser.add_argument("command", choices=["list"], help="list the catalogue")
    parser.parse_args(argv)
    print(catalogue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
