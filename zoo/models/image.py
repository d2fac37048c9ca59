"""Image backbones from timm with the zoo neck: from scratch by default (nothing is
downloaded), or from checked pretrained weights (``zoo.models.pretrained``).

The curated names are small and fast on CPU; any other timm model is reachable as
``timm/<name>``. The neck is sized from a dummy forward pass because timm's
``num_features`` is not always the width of ``forward`` (mobilenetv3: 1024, not 576).

``stage`` and ``grid`` read the embedding from an earlier feature stage (timm's
``features_only``) pooled to a ``grid x grid`` layout instead of the last stage's global
average. Learning identities from a few people generalises better from mid-level features
that keep where on the face they are: on ORL with half the people unseen, vgg11_bn read at
stage 2 on a 2x2 grid gives open-set MAP@R 0.85, the whole network pooled globally 0.78.

timm is imported where a model is built, not with the catalogue: importing it takes 3 s here,
and a server of an ONNX model, like every ``python -m`` command that builds no image model,
never needs it.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.models.pretrained import PretrainedWeights
from zoo.models.registry import MODELS

log = logging.getLogger(__name__)

CURATED_IMAGE_MODELS = ("resnet18", "convnext_atto", "mobilenetv3_small_100")
#: Registered beside them (by name, not in the default sweep): the other depths of ResNet,
#: squeeze-and-excitation ResNets, other MobileNetV3 widths, ConvNeXt-V2 and VGG.
MORE_IMAGE_MODELS = (
    "resnet34", "resnet50", "resnet101", "resnet152",
    "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152",
    "mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_large_100",
    "convnextv2_atto", "vgg11_bn",
)
#: Options every curated model passes straight to timm (``timm.create_model`` kwargs).
TIMM_OPTIONS = ("act_layer", "norm_layer", "drop_rate", "drop_path_rate")


class StageMap(nn.Module):
    """The feature map of one stage of a timm ``features_only`` model, as a tensor (GradCAM
    hooks and ONNX export see an ordinary module instead of a list of maps)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]


class GridPooledBackbone(nn.Module):
    """A stage's map average-pooled to ``grid x grid`` cells, flattened cell by cell."""

    def __init__(self, body: StageMap, grid: int) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)


def feature_stages(timm_name: str, in_chans: int = 3) -> list[tuple[int, int, int]]:
    """(index, channels, stride) of every stage ``stage=`` can read, from timm's feature_info."""
    info = _features_only(timm_name, in_chans, None, {}).feature_info
    return list(zip(range(len(info)), info.channels(), info.reduction()))


def _features_only(timm_name: str, in_chans: int, stage: int | None,
                   kwargs: dict[str, Any]) -> nn.Module:
    """timm's ``features_only`` model, cut after ``stage`` (None: every stage); ``kwargs``
    may carry pretrained weights (timm loads them into the whole model, then cuts it)."""
    extra = {} if stage is None else {"out_indices": (stage,)}
    try:
        return _timm_model(timm_name, features_only=True, in_chans=in_chans, **extra, **kwargs)
    except IndexError:
        stages = ", ".join(f"{i} ({c} channels, stride {r})"
                           for i, c, r in feature_stages(timm_name, in_chans))
        raise ValueError(f"timm model {timm_name!r} has no feature stage {stage}; its stages "
                         f"are {stages}") from None
    except RuntimeError as exc:  # timm: "features_only not implemented for ..."
        raise ValueError(f"timm model {timm_name!r} cannot be read at a stage ({exc}); leave "
                         "stage=auto and grid=1") from None


def _check_timm_name(timm_name: str) -> None:
    import timm  # lazily: see the module docstring
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:8]
        raise ValueError(
            f"timm has no model {timm_name!r}"
            + (f"; similar names: {', '.join(close)}" if close else "")
        )


def apply_width(timm_name: str, width: float, in_chans: int = 3) -> tuple[str, dict[str, Any]]:
    """The timm name and arguments that scale ``timm_name``'s channels by ``width``, the way
    timm offers it for that family: MobileNetV3 by name (``_050``, ``_075``, ...), bottleneck
    ResNets by ``base_width``, ConvNeXt by ``dims``. Anything else is refused."""
    import timm  # lazily: see the module docstring
    if width == 1.0:
        return timm_name, {}
    if width <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width}")
    if match := re.fullmatch(r"(mobilenetv3_(?:small|large))_(\d{3})", timm_name):
        scaled = f"{match[1]}_{round(width * int(match[2])):03d}"
        if timm.is_model(scaled):
            return scaled, {}
        offered = [n for n in timm.list_models(f"{match[1]}_*")
                   if re.fullmatch(rf"{match[1]}_\d{{3}}", n)]
        raise ValueError(f"width_multiplier={width} of {timm_name} would be {scaled}, which "
                         f"timm does not have; it has {', '.join(offered)}")
    if re.fullmatch(r"(se)?resnet(50|101|152)", timm_name):
        return timm_name, {"base_width": round(64 * width)}
    if timm_name.startswith(("convnext_", "convnextv2_")):
        dims = [channels for _, channels, _ in feature_stages(timm_name, in_chans)]
        return timm_name, {"dims": tuple(max(1, round(c * width)) for c in dims)}
    raise ValueError(f"timm offers no width multiplier for {timm_name}; it has one for "
                     "mobilenetv3_*, resnet50/101/152, seresnet50/101/152 and convnext*")


def create_timm_backbone(
    timm_name: str, in_chans: int = 3, image_size: int = 32, stage: int | None = None,
    grid: int = 1, weights: PretrainedWeights | None = None, **kwargs: Any
) -> tuple[nn.Module, int]:
    """A headless timm model and the width of its flat output.

    Default: the model's own globally pooled features. With ``stage`` (an index of
    ``feature_stages``; -1 the last) or ``grid > 1``: that stage's map pooled to a grid.
    ``weights``: built by timm from those checked pretrained weights. ``kwargs`` go to
    ``timm.create_model`` (``act_layer``, ``drop_path_rate``, ...).
    """
    import timm  # lazily: see the module docstring
    _check_timm_name(timm_name)
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if weights is not None:
        kwargs.update(weights.timm_kwargs())
    if stage is not None or grid > 1:
        body = StageMap(_features_only(timm_name, in_chans, -1 if stage is None else stage,
                                       kwargs))
        backbone: nn.Module = GridPooledBackbone(body, grid)
        return backbone, _width(backbone, in_chans, image_size, grid)
    try:
        # Transformers need the input size for position embeddings and windows; CNNs refuse it.
        backbone = timm.create_model(
            timm_name, num_classes=0, in_chans=in_chans,
            **{"pretrained": False, "img_size": image_size, **kwargs},
        )
    except TypeError:
        backbone = _timm_model(timm_name, num_classes=0, in_chans=in_chans, **kwargs)
    return backbone, _width(backbone, in_chans, image_size, grid)


def _timm_model(timm_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model``; options the model does not take are named in the error."""
    import timm  # lazily: see the module docstring
    kwargs.setdefault("pretrained", False)
    try:
        return timm.create_model(timm_name, **kwargs)
    except (TypeError, AssertionError, KeyError) as exc:
        options = {k: v for k, v in kwargs.items() if k in (*TIMM_OPTIONS, "base_width", "dims")}
        if not options:
            raise
        raise ValueError(f"timm model {timm_name!r} does not take "
                         f"{', '.join(f'{k}={v!r}' for k, v in options.items())} "
                         f"({type(exc).__name__}: {exc})") from None


def _width(backbone: nn.Module, in_chans: int, image_size: int, grid: int) -> int:
    """The flat output width, from a forward pass at the run's input size."""
    backbone.eval()
    with torch.no_grad():
        if grid > 1:
            side = backbone.body(torch.zeros(2, in_chans, image_size, image_size)).shape[-1]
            if side < grid:
                raise ValueError(f"grid={grid} needs a feature map of at least {grid}x{grid}, "
                                 f"but at image_size={image_size} it is {side}x{side}: read an "
                                 "earlier stage, use a larger image_size or a smaller grid")
        width = backbone(torch.zeros(2, in_chans, image_size, image_size)).shape[-1]
    backbone.train()
    return int(width)


def create_image_model(
    timm_name: str,
    num_classes: int,
    embedding_dim: int,
    *,
    in_chans: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    name: str | None = None,
    stage: int | None = None,
    grid: int = 1,
    parts: bool = False,
    width_multiplier: float | None = None,
    weights: PretrainedWeights | None = None,
    **timm_kwargs: Any,
) -> EmbeddingModel:
    """timm backbone (optionally read at ``stage`` on a ``grid``) + embedding neck + cosine
    head; ``parts``: one embedding per grid cell (``PartNeck``). ``width_multiplier``
    scales the channels (``apply_width``); ``weights``: pretrained backbone weights (from
    ``resolve_weights``); other ``timm_kwargs`` (``act_layer``, ``norm_layer``,
    ``drop_rate``, ``drop_path_rate``) go straight to timm."""
    if parts and grid < 2:
        raise ValueError("parts=true embeds each grid cell on its own: it needs grid >= 2")
    timm_name, scaled = apply_width(timm_name, float(width_multiplier or 1.0), in_chans)
    options = {k: v for k, v in timm_kwargs.items() if v is not None}
    backbone, features = create_timm_backbone(timm_name, in_chans, image_size, stage, grid,
                                              weights, **scaled, **options)
    model = EmbeddingModel(
        backbone, features, embedding_dim, num_classes, dropout, modality="image",
        name=name or timm_name, parts=grid * grid if parts else 1,
    )
    model.record = model.record.with_(architecture={
        "timm_name": timm_name, "feature_dim": features, "stage": stage, "grid": grid,
        "parts": grid * grid if parts else 1, "timm_options": {**scaled, **options}})
    if weights is not None:
        model.record = model.record.with_(lineage=weights.lineage())
    return model


def refuse_reshaping(name: str, stage: int | None, grid: int, parts: bool,
                     options: dict[str, Any]) -> None:
    """A network taken as its authors built it (``dlib_resnet``, ``iresnet*``) takes none of
    the options that reshape timm backbones; name the ones given."""
    refused = [k for k, v in {"stage": stage, "parts": parts, **options}.items() if v]
    refused += ["grid"] if grid != 1 else []
    if refused:
        raise ValueError(f"{name} is its authors' network as it is: {', '.join(refused)} do "
                         "not apply")


def _curated(timm_name: str) -> None:
    def factory(num_classes: int, embedding_dim: int, **kw: Any) -> EmbeddingModel:
        return create_image_model(timm_name, num_classes, embedding_dim, **kw)

    factory.__name__ = timm_name
    factory.__doc__ = f"timm {timm_name} (pretrained=False) + embedding neck"
    factory.modality = "image"  # type: ignore[attr-defined]
    factory.timm_name = timm_name  # type: ignore[attr-defined]
    MODELS.register(timm_name)(factory)


for _name in (*CURATED_IMAGE_MODELS, *MORE_IMAGE_MODELS):
    _curated(_name)
