"""``iresnet50`` and ``iresnet100``: insightface's face ResNets (arcface_torch's backbones),
so their published ``backbone.pth`` checkpoints load with ``pretrained=<file>``.

The "improved" ResNet of ArcFace (Deng et al. 2019; Duta et al. 2020): a 3x3 stem at stride
1, basic blocks ordered BN-conv-BN-PReLU-conv-BN with the stride on the second convolution,
stages of 64/128/256/512 channels, then BN, flatten (no pooling: the 7x7 map of a 112 px
chip keeps where on the face each feature is), dropout, a linear layer to the embedding and
a BatchNorm1d. The modules carry arcface_torch's names, so a checkpoint's keys map one to
one (its ``fc`` and ``features`` are the zoo's neck).

The weights insightface publishes (MS1MV2/3, Glint360K, WebFace) are for non-commercial
research only, and are not shipped by any package: pass the file you downloaded. They were
trained on insightface's own 112 px alignment, not dlib's template the face stage warps to.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.native import IRESNET
from zoo.models.image import refuse_reshaping
from zoo.models.pretrained import (LoadReport, PretrainedError, PretrainedWeights,
                                   WeightsPreprocessing, read_checkpoint, sha256_of)
from zoo.models.registry import MODELS

log = logging.getLogger(__name__)

CHIP_SIZE = IRESNET.image_size
EMBEDDING_DIM = 512
WIDTHS = (64, 128, 256, 512)
DEPTHS = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
NECK_KEYS = ("fc.", "features.")  # arcface_torch's embedding layers: the zoo's neck
#: arcface_torch's input: RGB, (pixel / 255 - 0.5) / 0.5
PREPROCESSING = WeightsPreprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     interpolation="bilinear")
LICENCE = ("insightface's pretrained models: non-commercial research purposes only "
           "(arcface_torch model zoo)")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5)


class Block(nn.Module):
    """BN, 3x3 conv, BN, PReLU, 3x3 conv (with the stride), BN; plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = _bn(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn2 = _bn(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = _bn(channels)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride,
                                                   bias=False), _bn(channels))
                           if stride != 1 or in_channels != channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """The body: ``[B, 3, H, W]`` → the flattened last map ``[B, 512 * (H / 16) ** 2]``."""

    def __init__(self, depths: tuple[int, ...], in_chans: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = _bn(WIDTHS[0])
        self.prelu = nn.PReLU(WIDTHS[0])
        width = WIDTHS[0]
        for index, (channels, depth) in enumerate(zip(WIDTHS, depths), start=1):
            blocks = [Block(width if i == 0 else channels, channels, 2 if i == 0 else 1)
                      for i in range(depth)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            width = channels
        self.bn2 = _bn(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.dropout(self.bn2(x).flatten(1))


class IResNetNeck(nn.Module):
    """arcface_torch's ``fc`` and ``features`` (BatchNorm1d, its scale fixed at 1)."""

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(x))


def zoo_key(key: str) -> str:
    """A checkpoint key of arcface_torch under the zoo model's name for it."""
    key = key.removeprefix("module.")  # saved from DistributedDataParallel
    return f"neck.{key}" if key.startswith(NECK_KEYS) else f"backbone.{key}"


def _build(name: str, in_chans: int, image_size: int, num_classes: int, embedding_dim: int,
           dropout: float = 0.0) -> EmbeddingModel:
    if image_size % 16:
        raise ValueError(f"{name} flattens its last map: image_size must be a multiple of 16 "
                         f"(its weights are for {CHIP_SIZE}), got {image_size}")
    body = IResNet(DEPTHS[name], in_chans, dropout)
    features = WIDTHS[-1] * (image_size // 16) ** 2
    return EmbeddingModel(body, features, embedding_dim, num_classes, modality="image",
                          name=name, neck=IResNetNeck(features, embedding_dim))


def resolve_weights_of(name: str, spec: str, in_chans: int = 3, image_size: int | None = None,
                       embedding_dim: int = EMBEDDING_DIM) -> PretrainedWeights:
    """An arcface_torch ``backbone.pth`` for ``name``, read as a state dict (no pickles run),
    its keys mapped to the zoo's and every tensor checked against the model."""
    if spec.strip().lower() == "true":
        raise PretrainedError(f"no package ships insightface's {name} weights (they are for "
                              "non-commercial research only): download its backbone.pth from "
                              "the arcface_torch model zoo and pass pretrained=<file>")
    path = Path(spec).expanduser().resolve()
    state = {zoo_key(k): v for k, v in read_checkpoint(path).items()}
    size = image_size or CHIP_SIZE
    with torch.device("meta"):
        reference = {k: v.shape for k, v in
                     _build(name, in_chans, size, 0, embedding_dim).state_dict().items()}
    report = LoadReport()
    for key, tensor in state.items():
        if key not in reference:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(reference[key]):
            report.mismatched[key] = [list(tensor.shape), list(reference[key])]
        else:
            report.matched.append(key)
    report.missing = [k for k in reference if k not in state]
    if report.missing or report.unexpected or report.mismatched:
        shapes = "; ".join(f"{k}: file {a}, model {b}" for k, (a, b) in
                           list(report.mismatched.items())[:2])
        raise PretrainedError(
            f"pretrained={spec} is not an arcface_torch {name} at image_size={size}, "
            f"embedding_dim={embedding_dim}, channels={in_chans}: {len(report.missing)} "
            f"tensors missing (e.g. {report.missing[:2]}), {len(report.unexpected)} unexpected "
            f"(e.g. {report.unexpected[:2]}), {len(report.mismatched)} of another shape"
            + (f" ({shapes})" if shapes else ""))
    return PretrainedWeights(name, f"file:{path}", path, sha256_of(path),
                             {k: state[k] for k in report.matched}, PREPROCESSING, report,
                             licence=LICENCE)


def _register(name: str) -> None:
    def factory(num_classes: int, embedding_dim: int, *, in_chans: int = 3,
                image_size: int = CHIP_SIZE, dropout: float = 0.0,
                weights: PretrainedWeights | None = None, stage: int | None = None,
                grid: int = 1, parts: bool = False, **timm_options: Any) -> EmbeddingModel:
        refuse_reshaping(name, stage, grid, parts, timm_options)
        model = _build(name, in_chans, image_size, num_classes, embedding_dim, dropout)
        model.record = model.record.with_(architecture={
            "family": "iresnet", "depths": list(DEPTHS[name]),
            "feature_dim": model.neck.fc.in_features})
        if weights is not None:
            model.load_state_dict(weights.state_dict, strict=False)
            model.record = model.record.with_(lineage=weights.lineage())
        return model

    def resolve(spec: str, in_chans: int = 3, image_size: int | None = None,
                embedding_dim: int = EMBEDDING_DIM, **_: Any) -> PretrainedWeights:
        return resolve_weights_of(name, spec, in_chans, image_size, embedding_dim)

    factory.__name__ = name
    factory.__doc__ = (f"insightface's {name} (arcface_torch); pretrained=<backbone.pth> "
                       "loads its published weights (non-commercial research only)")
    factory.modality = "image"  # type: ignore[attr-defined]
    factory.resolve_weights = resolve  # type: ignore[attr-defined]
    factory.native_image_size = CHIP_SIZE  # type: ignore[attr-defined]
    MODELS.register(name)(factory)


for _name in DEPTHS:
    _register(_name)
