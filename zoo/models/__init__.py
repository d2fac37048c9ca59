"""Model catalogue: ``create_model(name, num_classes, embedding_dim, **kw)``.

Curated timm backbones and tabular encoders are registered by name; any timm model is
reachable as ``timm/<name>``.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from zoo.models import image as _image  # noqa: F401  (registers the curated image models)
from zoo.models import hybrid as _hybrid  # noqa: F401  (registers the hybrid model)
from zoo.models import tabular as _tabular  # noqa: F401  (registers the tabular encoders)
from zoo.models import autoencoder as _autoencoder  # noqa: F401  (registers vae and sae)
from zoo.models import dlib_resnet as _dlib_resnet  # noqa: F401  (registers dlib_resnet)
from zoo.models import iresnet as _iresnet  # noqa: F401  (registers iresnet50 and iresnet100)
from zoo.models.embedding import EmbeddingModel, EmbeddingNeck
from zoo.models.heads import CosineClassifier
from zoo.models.image import (CURATED_IMAGE_MODELS, MORE_IMAGE_MODELS, TIMM_OPTIONS,
                              create_image_model)
from zoo.models.registry import MODELS

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
IMAGE_KWARGS = ("in_chans", "image_size", "dropout", "stage", "grid", "parts",
                "width_multiplier", "weights", *TIMM_OPTIONS)
BRANCH_KWARGS = ("cnn_branch", "transformer_branch")  # the hybrid model's only


def model_modality(name: str) -> str:
    """``image`` or ``tabular``: which kind of data the named model takes."""
    if name.startswith(TIMM_PREFIX):
        return "image"
    return getattr(MODELS.get(name).factory, "modality", "image")


def training_outputs(name: str) -> frozenset[str]:
    """What model ``name`` adds to its output dict in training (an autoencoder's
    ``reconstruction``, ...), which some losses read; empty for most models."""
    if name.startswith(TIMM_PREFIX):
        return frozenset()
    return frozenset(getattr(MODELS.get(name).factory, "training_outputs", ()))


def is_timm_backed(name: str) -> bool:
    """Whether model ``name`` is one timm backbone (``timm/<name>`` or a curated one), the
    kind that timm's pretrained weights load into."""
    if name.startswith(TIMM_PREFIX):
        return True
    return getattr(MODELS.get(name).factory, "timm_name", None) is not None


def takes_pretrained(name: str) -> bool:
    """Whether ``pretrained=`` can start model ``name``: a timm backbone (timm's weights), or
    a family that reads its own published weights (``dlib_resnet``)."""
    return is_timm_backed(name) or own_weights_reader(name) is not None


def own_weights_reader(name: str) -> Any:
    """The reader of a family's own published weights (``resolve_weights(spec, in_chans,
    image_size, embedding_dim)``), or None for timm backbones and models that have none."""
    if name.startswith(TIMM_PREFIX):
        return None
    return getattr(MODELS.get(name).factory, "resolve_weights", None)


def timm_name_of(name: str) -> str:
    """The timm architecture (with any pretrained tag) behind a timm-backed zoo model."""
    if name.startswith(TIMM_PREFIX):
        return name[len(TIMM_PREFIX):]
    return MODELS.get(name).factory.timm_name  # type: ignore[attr-defined]


def models_for(modality: str) -> list[str]:
    """Registered model names for one modality, in registration order."""
    return [n for n in MODELS.names() if model_modality(n) == modality]


def create_model(name: str, num_classes: int, embedding_dim: int, **kwargs: Any) -> EmbeddingModel:
    """Build a registered model, or any timm model given as ``timm/<name>``.

    Image models take ``in_chans``, ``image_size``, ``stage`` and ``grid``, and timm-backed
    ones pretrained ``weights`` (``zoo.models.pretrained.resolve_weights``); tabular ones
    ``num_features`` (and a table's ``feature_groups``: features per column). Keyword
    arguments a family does not use are ignored, so one call site serves all, except a
    feature-map read-out or weights asked of a model that has neither.
    The returned model's ``record.build`` is the recipe ``zoo.models.rebuild`` builds
    the same architecture from (JSON, no pickles).
    """
    if name.startswith(TIMM_PREFIX):
        kwargs = {k: kwargs[k] for k in IMAGE_KWARGS if k in kwargs}
        model = create_image_model(name[len(TIMM_PREFIX):], num_classes, embedding_dim,
                                   name=name, **kwargs)
        return _with_recipe(model, name, num_classes, embedding_dim, kwargs)
    modality = model_modality(name)
    if kwargs.get("weights") is not None and not takes_pretrained(name):
        raise ValueError(f"pretrained weights load into one timm backbone; {name!r} is not "
                         "one (start it from an earlier zoo model with init=<model uri>)")
    if kwargs.get("weights") is None:
        kwargs.pop("weights", None)
    if name != "hybrid":
        for key in BRANCH_KWARGS:
            kwargs.pop(key, None)
    if kwargs.get("feature_groups") is None or modality == "image":
        kwargs.pop("feature_groups", None)
    if modality == "image":
        kwargs.pop("num_features", None)
    else:
        asked = [k for k in ("stage", "parts", *TIMM_OPTIONS) if kwargs.get(k)]
        asked += ["width_multiplier"] if kwargs.get("width_multiplier") not in (None, 1.0) else []
        asked += ["grid"] if kwargs.get("grid", 1) != 1 else []
        if asked:
            raise ValueError(f"{', '.join(asked)} shape image backbones; tabular model "
                             f"{name!r} takes none of them")
        for key in IMAGE_KWARGS:
            if key != "dropout":
                kwargs.pop(key, None)
        if kwargs.get("num_features") is None:
            raise ValueError(f"tabular model {name!r} needs num_features (the row width)")
    model = MODELS.create(name, num_classes=num_classes, embedding_dim=embedding_dim, **kwargs)
    return _with_recipe(model, name, num_classes, embedding_dim, kwargs)


def _with_recipe(model: EmbeddingModel, name: str, num_classes: int, embedding_dim: int,
                 used: dict[str, Any]) -> EmbeddingModel:
    """Record on ``model.record.build`` how to build the same architecture again, so a
    server can rebuild the module from JSON and load its weights from safetensors instead of
    unpickling it (``zoo.models.rebuild``). Pretrained ``weights`` are left out: the trained
    state dict replaces them. Options that JSON cannot hold exactly leave no recipe (such a
    model cannot be rebuilt from one)."""
    kwargs = {k: v for k, v in used.items() if k != "weights"}
    build = {"name": name, "num_classes": int(num_classes), "embedding_dim": int(embedding_dim),
             "kwargs": kwargs}
    try:
        exact = json.loads(json.dumps(build)) == build
    except (TypeError, ValueError):
        exact = False
    if exact:
        model.record = model.record.with_(build=build)
    else:
        log.debug("model %s: options %r are not plain JSON; no build recipe recorded", name, kwargs)
    return model


__all__ = [
    "MODELS", "CURATED_IMAGE_MODELS", "MORE_IMAGE_MODELS", "TIMM_OPTIONS", "TIMM_PREFIX",
    "CosineClassifier", "EmbeddingModel", "EmbeddingNeck", "create_model", "is_timm_backed",
    "model_modality", "models_for", "own_weights_reader", "takes_pretrained", "timm_name_of",
    "training_outputs",
]
