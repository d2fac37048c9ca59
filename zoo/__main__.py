"""``python -m zoo list``: what the catalogue holds (models, losses, data sources);
``python -m zoo stages MODEL``: the feature stages an image model can be read at (``stage=``)."""
from __future__ import annotations

import sys

from zoo.cli import StrictParser
from zoo.registry import Registry


def _section(title: str, registry: Registry, extra=lambda entry: "") -> list[str]:
    lines = [f"{title} ({len(registry)}):"]
    width = max((len(e.name) for e in registry), default=0)
    for entry in registry:
        lines.append(f"  {entry.name:<{width}}  {extra(entry)}{entry.doc}")
    return lines


#: The input the parameter counts are for: the training defaults.
COUNT_AT = dict(image_size=32, in_chans=3, embedding_dim=128, num_features=16)


def parameter_count(name: str) -> int:
    """Parameters of model ``name`` (backbone and neck, no head) at ``COUNT_AT``, built on
    the meta device: nothing is allocated, so even resnet152 counts in a blink."""
    import torch

    from zoo.models import MODELS, create_model

    # a network built for one input size (dlib_resnet's 150 px chips) is counted at it
    size = getattr(MODELS.get(name).factory, "native_image_size", COUNT_AT["image_size"])
    with torch.device("meta"):
        model = create_model(name, 0, COUNT_AT["embedding_dim"], in_chans=COUNT_AT["in_chans"],
                             image_size=size,
                             num_features=COUNT_AT["num_features"])
    return sum(p.numel() for p in model.parameters())


def catalogue() -> str:
    """The three registries as text, with each model's size and the image models' options."""
    from zoo.data import DATASETS
    from zoo.losses import LOSSES
    from zoo.models import CURATED_IMAGE_MODELS, MODELS, model_modality

    def describe(entry) -> str:
        modality = model_modality(entry.name)
        size = f"{parameter_count(entry.name) / 1e6:6.2f}M"
        sweep = "*" if entry.name in CURATED_IMAGE_MODELS else " "
        return f"[{modality:<7}] {size} {sweep} "

    lines = _section("models", MODELS, describe)
    lines.append("  timm/<name>  [image  ] any timm model, e.g. timm/efficientvit_m0")
    lines.append(f"  (parameters at {COUNT_AT['image_size']} px, 3 channels, a 128-d embedding; "
                 f"tabular: {COUNT_AT['num_features']} features. * = in the default sweep)")
    lines.append("  image options (-P name=value): stage, grid, parts, width_multiplier "
                 "(mobilenetv3, resnet50+, convnext), act_layer, norm_layer, drop_rate, "
                 "drop_path_rate; depth and squeeze-and-excitation by name (resnet18..152, "
                 "seresnet18..152)")
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
    parser = StrictParser(prog="python -m zoo", description=__doc__)
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
