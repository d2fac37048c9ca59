"""``python -m zoo list``: what the catalogue holds (models, losses, data sources);
``python -m zoo stages MODEL``: the feature stages an image model can be read at (``stage=``)."""
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


def stages(model: str, image_size: int) -> str:
    """Each feature stage of an image model: index, channels, stride, map side at ``image_size``."""
    from zoo.models import MODELS, TIMM_PREFIX, model_modality
    from zoo.models.image import feature_stages

    timm_name = model[len(TIMM_PREFIX):] if model.startswith(TIMM_PREFIX) else model
    if not model.startswith(TIMM_PREFIX):
        MODELS.get(model)  # an unknown name lists the choices
        if model_modality(model) != "image":
            raise ValueError(f"{model} is a tabular encoder: it has no feature stages")
    lines = [f"feature stages of {model} (stage=N reads one; grid=G pools its map to GxG):",
             f"  {'stage':>5}  {'channels':>8}  {'stride':>6}  map at {image_size} px"]
    for index, channels, stride in feature_stages(timm_name):
        side = -(-image_size // stride)
        lines.append(f"  {index:>5}  {channels:>8}  {stride:>6}  {side}x{side}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    parser.add_argument("command", choices=["list", "stages"],
                        help="list the catalogue, or the feature stages of one image model")
    parser.add_argument("model", nargs="?", help="stages: a model name or timm/<name>")
    parser.add_argument("--image-size", type=int, default=32, help="stages: input side in px")
    args = parser.parse_args(argv)
    if args.command == "stages":
        if not args.model:
            parser.error("stages needs a model name, e.g. python -m zoo stages timm/vgg11_bn")
        try:
            print(stages(args.model, args.image_size))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print(catalogue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
