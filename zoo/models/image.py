"""Image backbones from timm (``pretrained=False``: nothing is downloaded) with the zoo neck.

The curated names are small and fast on CPU; any other timm model is reachable as
``timm/<name>``. The neck is sized from a dummy forward pass because timm's
``num_features`` is not always the width of ``forward`` (mobilenetv3: 1024, not 576).
"""
from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.models.registry import MODELS

log = logging.getLogger(__name__)

CURATED_IMAGE_MODELS = ("resnet18", "convnext_atto", "mobilenetv3_small_100")


def create_timm_backbone(
    timm_name: str, in_chans: int = 3, image_size: int = 32, **kwargs: Any
) -> tuple[nn.Module, int]:
    """A headless timm model and the width of its pooled output."""
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:8]
        raise ValueError(
            f"timm has no model {timm_name!r}"
            + (f"; similar names: {', '.join(close)}" if close else "")
        )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        # Transformers need the input size for position embeddings and windows; CNNs refuse it.
        backbone = timm.create_model(
            timm_name, pretrained=False, num_classes=0, in_chans=in_chans,
            **{"img_size": image_size, **kwargs},
        )
    except TypeError:
        backbone = timm.create_model(
            timm_name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs
        )
    backbone.eval()
    with torch.no_grad():
        width = backbone(torch.zeros(2, in_chans, image_size, image_size)).shape[-1]
    backbone.train()
    return backbone, int(width)


def create_image_model(
    timm_name: str,
    num_classes: int,
    embedding_dim: int,
    *,
    in_chans: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    name: str | None = None,
    **timm_kwargs: Any,
) -> EmbeddingModel:
    """timm backbone + embedding neck + cosine head."""
    backbone, width = create_timm_backbone(timm_name, in_chans, image_size, **timm_kwargs)
    model = EmbeddingModel(
        backbone, width, embedding_dim, num_classes, dropout, modality="image",
        name=name or timm_name,
    )
    model.zoo_meta.update({"timm_name": timm_name, "feature_dim": width})
    return model


def _curated(timm_name: str) -> None:
    def factory(num_classes: int, embedding_dim: int, **kw: Any) -> EmbeddingModel:
        return create_image_model(timm_name, num_classes, embedding_dim, **kw)

    factory.__name__ = timm_name
    factory.__doc__ = f"timm {timm_name} (pretrained=False) + embedding neck"
    factory.modality = "image"  # type: ignore[attr-defined]
    MODELS.register(timm_name)(factory)


for _name in CURATED_IMAGE_MODELS:
    _curated(_name)
