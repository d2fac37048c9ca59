"""The optimiser's parameter groups: weight decay, and learning rates for fine-tuning.

The new layers (neck, head, the loss's class weights) learn at ``lr``. The backbone learns
at ``lr * backbone_lr``, and with ``lr_decay`` < 1 each of a timm backbone's layers learns
at ``lr_decay`` times the rate of the layer above it, as timm's
``param_groups_layer_decay`` groups them (BEiT's layer-wise decay). Weight matrices decay;
biases, norms and the loss's weights do not. Every group carries its own ``lr``, which the
schedules scale.
"""
from __future__ import annotations

from typing import Any, Iterator

import timm
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from zoo.models import EmbeddingModel


def param_groups(model: nn.Module, loss_fn: nn.Module, weight_decay: float, lr: float,
                 backbone_lr: float = 1.0, lr_decay: float = 1.0) -> list[dict]:
    """Groups for AdamW, the new layers first (so ``param_groups[0]`` holds ``lr``); empty
    groups are left out."""
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    groups = _by_decay(head, weight_decay, lr)
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": lr})
    if backbone is not None:
        if lr_decay < 1.0:
            groups += layer_decay_groups(model, weight_decay, lr * backbone_lr, lr_decay)
        else:
            groups += _by_decay([p for p in backbone.parameters() if p.requires_grad],
                                weight_decay, lr * backbone_lr, backbone=True)
    return [g for g in groups if g["params"]]


def _by_decay(params: list[nn.Parameter], weight_decay: float, lr: float,
              backbone: bool = False) -> list[dict]:
    extra = {"backbone": True} if backbone else {}
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay,
             "lr": lr, **extra},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr,
             **extra}]


def backbone_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimiser's groups that hold backbone parameters."""
    return [g for g in optimizer.param_groups if g.get("backbone")]


def layer_decay_groups(model: EmbeddingModel, weight_decay: float, lr: float,
                       lr_decay: float) -> list[dict]:
    """timm's layer-wise decay over the backbone's timm model (a feature-stage read-out
    is grouped as the whole model it was cut from)."""
    groups = param_groups_layer_decay(_Named(*_timm_parameters(model)), weight_decay,
                                      layer_decay=lr_decay)
    return [{"params": g["params"], "weight_decay": g["weight_decay"],
             "lr": lr * g.get("lr_scale", 1.0), "backbone": True} for g in groups]


def _timm_parameters(model: EmbeddingModel) -> tuple[dict[str, nn.Parameter], Any]:
    """The backbone's parameters under their names in the whole timm model
    (``features_only`` renames ``layer1.0`` to ``layer1_0``), and that model's
    ``group_matcher``."""
    architecture = model.record.architecture
    timm_name = architecture.get("timm_name")
    if timm_name is None:
        raise ValueError(f"lr_decay groups the layers of a timm backbone; "
                         f"{model.record.model!r} is not one (use lr_decay=1)")
    body = getattr(getattr(model.backbone, "body", None), "features", None)
    if body is None:  # the whole timm model, globally pooled
        whole = model.backbone
        params = dict(whole.named_parameters())
    else:
        with torch.device("meta"):
            whole = timm.create_model(timm_name, pretrained=False, num_classes=0,
                                      **architecture.get("timm_options", {}))
        known = {n for n, _ in whole.named_parameters()}
        params = {}
        for name, param in body.named_parameters():
            first, _, rest = name.partition(".")
            dotted = ".".join(first.rsplit("_", 1)) + (f".{rest}" if rest else "")
            params[name if name in known else dotted] = param
    if not hasattr(whole, "group_matcher"):
        raise ValueError(f"timm model {timm_name} has no layer grouping for lr_decay; use "
                         "lr_decay=1 and backbone_lr")
    return params, whole.group_matcher(coarse=False)


class _Named(nn.Module):
    """Parameters under the whole timm model's names, with its ``group_matcher``: what
    timm's layer grouping reads."""

    def __init__(self, params: dict[str, nn.Parameter], matcher: Any) -> None:
        super().__init__()
        self._named, self._matcher = params, matcher

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self._named.items())

    def group_matcher(self, coarse: bool = False) -> Any:
        return self._matcher
