"""GradCAM heatmaps of the eager PyTorch model (pytorch-grad-cam), overlaid on the input.

Two kinds of question: "why this class?" (the target is a class logit) and "why are these
two images similar?" (the target is the cosine similarity of the query's embedding to a
reference embedding, which pytorch-grad-cam does not ship). The target layer is chosen for
the model at hand: the last stage or block whose feature map is still at least 4x4, so a 32 px
resnet18 explains with ``layer2`` (4x4) rather than ``layer4`` (1x1, a uniform map), and a
224 px one with ``layer4`` (7x7). Transformers get a reshape transform: ViT-style token
sequences become a grid, Swin's channels-last maps are permuted.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

log = logging.getLogger(__name__)

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
MIN_MAP_SIDE = 4
MIN_OVERLAY_SIDE, MAX_OVERLAY_SIDE = 256, 512  # tiny inputs are enlarged to be seen


class _Output(nn.Module):
    """The model with one of its outputs (``logits`` or ``embedding``) as a tensor."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


class SimilarityTarget:
    """Cosine similarity of an embedding to a fixed reference embedding."""

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = nn.functional.normalize(reference.detach().flatten(), dim=0)

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.dot(nn.functional.normalize(embedding.flatten(), dim=0), self.reference)


class ClassTarget:
    """One class's logit."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.index]


@dataclass(frozen=True)
class TargetLayer:
    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None


def _tokens_to_grid(prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix_tokens:, :]
        side = int(math.isqrt(grid.shape[1]))
        return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)
    return reshape


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _feature_maps(backbone: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every composite submodule, in the order they finish."""
    seen: list[tuple[str, nn.Module, tuple]] = []
    hooks = []
    for name, module in backbone.named_modules():
        if name and any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: seen.append((name, m, tuple(o.shape)))
                if isinstance(o, torch.Tensor) else None))
    try:
        with torch.no_grad():
            backbone(example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def default_target_layer(model: nn.Module, input_size: tuple[int, int, int]) -> TargetLayer:
    """The layer GradCAM explains with for ``model`` at ``input_size`` (see module docstring)."""
    backbone = getattr(model, "backbone", model)
    branch = getattr(backbone, "explained_by", None)
    if branch is not None:  # a backbone of several branches names the one to explain with
        inner = default_target_layer(getattr(backbone, branch), input_size)
        return TargetLayer(inner.name.replace("backbone", f"backbone.{branch}", 1),
                           inner.module, inner.reshape)
    example = torch.zeros(1, *input_size)
    maps = _feature_maps(backbone, example)
    if "swin" in type(backbone).__name__.lower() and hasattr(backbone, "layers"):
        return TargetLayer("backbone.layers.-1", backbone.layers[-1], _channels_last)
    # Stages and blocks (``layer4``, ``stages.1``, ``blocks.3``), not the layers inside a
    # block, whose maps may precede the block's own downsampling.
    spatial = [(n, m, s) for n, m, s in maps if len(s) == 4 and n.count(".") <= 1]
    if spatial:
        side = max(min(s[2:]) for _, _, s in spatial)
        wanted = min(MIN_MAP_SIDE, side)  # inputs too small for 4x4 maps: the largest there is
        name, module, _ = [m for m in spatial if min(m[2][2:]) >= wanted][-1]
        return TargetLayer(f"backbone.{name}", module, None)
    blocks = getattr(backbone, "blocks", None)
    if blocks is not None and len(blocks) and hasattr(blocks[-1], "norm1"):
        prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        return TargetLayer(f"backbone.blocks.{len(blocks) - 1}.norm1", blocks[-1].norm1,
                           _tokens_to_grid(prefix))
    raise ValueError(f"no layer with a spatial feature map in {type(backbone).__name__}: "
                     "GradCAM needs an image model")


@dataclass(frozen=True)
class Explanation:
    """A heatmap overlay and what it explains."""

    overlay: Image.Image
    target: str  # the class name, or "similarity"
    score: float  # the class probability's logit, or the cosine similarity
    layer: str
    heat: np.ndarray | None = None  # the map itself, [h, w] in [0, 1] over the model's input


class Explainer:
    """GradCAM for one model; one explanation at a time (hooks live on the shared model)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        self.model = model.eval()
        self.layer = default_target_layer(model, input_size)
        self._lock = threading.Lock()
        log.info("GradCAM target layer: %s", self.layer.name)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.no_grad():
            return self.model(x)["embedding"]

    def explain(self, x: torch.Tensor, image: Image.Image, method: str,
                class_index: int | None = None, reference: torch.Tensor | None = None,
                class_names: list[str] | None = None) -> Explanation:
        """Explain ``x`` (``[1, C, H, W]``): a class (default the predicted one) or the
        similarity to ``reference`` (an embedding ``[1, D]``)."""
        cam_class = METHODS[method]
        with self._lock:
            if reference is not None:
                key, target = "embedding", SimilarityTarget(reference)
                with torch.no_grad():
                    score = float(target(self.model(x)["embedding"][0]))
                name = "similarity"
            else:
                key = "logits"
                with torch.no_grad():
                    logits = self.model(x)["logits"][0]
                index = int(logits.argmax()) if class_index is None else class_index
                target, score = ClassTarget(index), float(logits[index])
                name = class_names[index] if class_names else str(index)
            with cam_class(model=_Output(self.model, key), target_layers=[self.layer.module],
                           reshape_transform=self.layer.reshape) as cam:
                heat = cam(input_tensor=x, targets=[target])[0]
            self.model.zero_grad(set_to_none=True)
        return Explanation(overlay(image, heat), name, score, self.layer.name, heat)


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """``heat`` (``[h, w]`` in [0, 1]) resized onto ``image`` (256 to 512 px a side)."""
    rgb = ImageOps.exif_transpose(image).convert("RGB")
    scale = min(MAX_OVERLAY_SIDE, max(MIN_OVERLAY_SIDE, max(rgb.size))) / max(rgb.size)
    if scale != 1.0:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BILINEAR)
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    heat = cv2.resize(np.nan_to_num(heat).astype(np.float32), (rgb.width, rgb.height),
                      interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(show_cam_on_image(base, np.clip(heat, 0, 1), use_rgb=True,
                                             image_weight=0.5))


def face_overlay(photo: Image.Image, heat: np.ndarray, face: Any, stage: Any) -> Image.Image:
    """A face model's map (over the aligned chip) carried back onto the whole photo through
    the chip's similarity transform, with the face's box drawn: what the model looked at,
    where it is in the photo."""
    from PIL import ImageDraw

    from zoo.faces.detect import chip_to_photo

    rgb = ImageOps.exif_transpose(photo).convert("RGB")
    # photo -> chip: the inverse of the chip's map, as PIL's transform wants it
    forward = np.vstack([chip_to_photo(face, stage), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2].ravel()
    size = stage.size
    chip_heat = cv2.resize(np.nan_to_num(heat).astype(np.float32), (size, size),
                           interpolation=cv2.INTER_LINEAR)
    on_photo = Image.fromarray(chip_heat, mode="F").transform(
        rgb.size, Image.Transform.AFFINE, tuple(inverse), Image.Resampling.BILINEAR, fillcolor=0)
    picture = overlay(rgb, np.asarray(on_photo))
    scale = picture.width / rgb.width
    x0, y0, x1, y1 = (v * scale for v in face.box)
    ImageDraw.Draw(picture).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 255, 0),
                                      width=max(1, round(2 * scale)))
    return picture
