"""``hybrid``: a ConvNeXt-V2 branch and a SwinV2 branch from timm on the same image.

Convolutions see local texture with a built-in sense of position; shifted-window attention
relates distant parts of the image. Each branch is a headless timm model pooled to a vector;
the vectors are concatenated and go through the usual embedding neck. The Swin branch is built
for the run's input size (timm's ``img_size``), and timm shrinks its attention windows to the
feature map where the map is smaller than a window, so 32 px inputs work. GradCAM explains
with the ConvNeXt branch, whose stages are ordinary feature maps.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.models.image import create_timm_backbone
from zoo.models.registry import MODELS

CNN_BRANCH = "convnextv2_atto"
TRANSFORMER_BRANCH = "swinv2_tiny_window8_256"


class HybridBackbone(nn.Module):
    """Both branches' pooled features, concatenated (CNN first)."""

    #: the branch GradCAM explains with (``serving.model.gradcam.default_target_layer``)
    explained_by = "cnn"

    def __init__(self, cnn: nn.Module, transformer: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn
        self.transformer = transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cnn(x), self.transformer(x)], dim=1)


@MODELS.register()
def hybrid(num_classes: int, embedding_dim: int, *, in_chans: int = 3, image_size: int = 32,
           dropout: float = 0.0, cnn_branch: str = CNN_BRANCH,
           transformer_branch: str = TRANSFORMER_BRANCH, stage: int | None = None,
           grid: int = 1, parts: bool = False, **timm_options: Any) -> EmbeddingModel:
    """ConvNeXt-V2 + SwinV2 branches from timm, features concatenated, then the neck."""
    if stage is not None or grid != 1 or parts:
        raise ValueError("hybrid pools each branch on its own: stage, grid and parts do not "
                         "apply (leave stage=auto, grid=1, parts=false)")
    if timm_options:
        raise ValueError(f"hybrid passes no options to its branches ({', '.join(timm_options)}); "
                         "name other branches with cnn_branch and transformer_branch instead")
    cnn, cnn_width = create_timm_backbone(cnn_branch, in_chans, image_size)
    transformer, transformer_width = create_timm_backbone(transformer_branch, in_chans,
                                                          image_size)
    model = EmbeddingModel(HybridBackbone(cnn, transformer), cnn_width + transformer_width,
                           embedding_dim, num_classes, dropout, modality="image", name="hybrid")
    model.record = model.record.with_(architecture={
        "cnn_branch": cnn_branch, "transformer_branch": transformer_branch,
        "feature_dim": cnn_width + transformer_width})
    return model


hybrid.modality = "image"  # type: ignore[attr-defined]
