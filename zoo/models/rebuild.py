"""A trained model as a JSON recipe and a safetensors file, and back, without pickles.

``mlflow.pytorch.load_model`` unpickles the module, which runs whatever code the pickle
names: whoever can write a tracking server's artifacts could run code on every server that
loads it. A recipe (``create_model``'s arguments, recorded as ``record.build``, plus
the classifier head the training attached) rebuilds the same architecture from this
checkout's code, and the weights come from safetensors, a format that holds tensors only.

The recipe is refused unless its options are plain JSON values of the options
``create_model`` is known to take, so a recipe can choose an architecture but not make timm
download or load anything (``pretrained`` is never passed).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import names
from zoo.models import BRANCH_KWARGS, IMAGE_KWARGS, EmbeddingModel, create_model
from zoo.models.heads import CosineClassifier, PartClassifier
from zoo.names import RECIPE_FILE, WEIGHTS_FILE
from zoo.record import ModelRecord

RECIPE_FORMAT = 1
#: How far a rebuilt module's embeddings and logits may be from the original's.
REBUILD_MAX_ABS_DIFF = 1e-5
#: What a recipe may pass to ``create_model``: the image, hybrid and tabular options, never
#: pretrained weights (the state dict replaces them).
REBUILD_KWARGS = frozenset({*IMAGE_KWARGS, *BRANCH_KWARGS, "num_features", "hidden", "width",
                            "depth", "d_token", "heads", "feature_groups"}) - {"weights"}
_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """A JSON scalar, or a list of ints (a table's features per column)."""
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, _SCALARS)


def rebuild(build: dict[str, Any]) -> EmbeddingModel:
    """The architecture ``build`` (a ``record.build`` recipe) names, freshly initialised,
    in eval mode; pretrained weights are never loaded (the caller loads trained ones)."""
    name, kwargs = build.get("name"), build.get("kwargs") or {}
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"build recipe names no zoo or timm model: {name!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"build recipe options are not a mapping: {kwargs!r}")
    refused = sorted(k for k, v in kwargs.items() if k not in REBUILD_KWARGS or not _plain(v))
    if refused:
        raise ValueError(f"build recipe of {name!r} has options a rebuild does not take: "
                         f"{', '.join(refused)}")
    sizes = [build.get("num_classes"), build.get("embedding_dim")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes):
        raise ValueError(f"build recipe of {name!r} has no valid num_classes and embedding_dim")
    model = create_model(name, sizes[0], sizes[1], **kwargs, weights=None)
    return model.eval()


def head_recipe(head: nn.Module | None) -> dict[str, Any] | None:
    """The classifier a trained model carries, as JSON (training replaces ``create_model``'s
    head with the loss's: a cosine head with sub-centres, a linear one, one per part)."""
    if head is None:
        return None
    if type(head) is CosineClassifier:
        return {"type": "cosine", "num_classes": head.num_classes,
                "embedding_dim": int(head.weight.shape[1]), "subcenters": head.subcenters}
    if type(head) is nn.Linear:
        return {"type": "linear", "in_features": head.in_features,
                "out_features": head.out_features, "bias": head.bias is not None}
    if type(head) is PartClassifier:
        return {"type": "parts", "heads": [head_recipe(h) for h in head.heads]}
    raise ValueError(f"no recipe for a classifier head of type {type(head).__name__}")


def build_head(recipe: dict[str, Any] | None) -> nn.Module | None:
    """The (untrained) head ``head_recipe`` described; its weights come from the state dict."""
    if recipe is None:
        return None
    kind = recipe.get("type")
    if kind == "cosine":
        return CosineClassifier(int(recipe["num_classes"]), int(recipe["embedding_dim"]),
                                subcenters=int(recipe.get("subcenters", 1)))
    if kind == "linear":
        return nn.Linear(int(recipe["in_features"]), int(recipe["out_features"]),
                         bias=bool(recipe.get("bias", True)))
    if kind == "parts":
        heads = [build_head(h) for h in recipe.get("heads") or []]
        if not heads or any(h is None for h in heads):
            raise ValueError("a part classifier recipe needs one head per part")
        return PartClassifier(heads)  # type: ignore[arg-type]
    raise ValueError(f"unknown classifier head type in recipe: {kind!r}")


def model_recipe(model: EmbeddingModel, build: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``rebuild_from_recipe`` needs: the build recipe (``record.build`` unless given),
    the head and the model's record (what the server describes and preprocesses with)."""
    build = json.loads(json.dumps(build)) if build else model.record.build
    if not build:
        raise ValueError("the model has no build recipe (record.build)")
    record = model.record.with_(build=build)
    return {"format": RECIPE_FORMAT, "build": build, "head": head_recipe(model.head),
            names.RECORD_KEY: record.to_dict()}


def rebuild_from_recipe(recipe: dict[str, Any]) -> EmbeddingModel:
    """``rebuild`` plus the recipe's head and record (weights still to be loaded)."""
    if recipe.get("format") != RECIPE_FORMAT:
        raise ValueError(f"recipe format {recipe.get('format')!r} is not {RECIPE_FORMAT}: "
                         "written by another model-zoo version")
    model = rebuild(recipe["build"])
    if "head" in recipe:
        model.set_head(build_head(recipe["head"]))
    if recipe.get(names.RECORD_KEY):
        model.record = ModelRecord.from_dict(recipe[names.RECORD_KEY])
    return model.eval()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: CPU, contiguous, no two tensors sharing
    memory (safetensors refuses shared storage; tied weights are stored twice and
    ``load_state_dict`` fills both from their copies)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_weights(model: EmbeddingModel, folder: Path, recipe: dict[str, Any] | None = None
                 ) -> list[Path]:
    """``folder/model.safetensors`` and ``folder/recipe.json`` of ``model``."""
    from safetensors.torch import save_file

    recipe = recipe or model_recipe(model)
    folder.mkdir(parents=True, exist_ok=True)
    weights, described = folder / WEIGHTS_FILE, folder / RECIPE_FILE
    save_file(plain_state_dict(model), str(weights), metadata={"format": "pt"})
    described.write_text(json.dumps(recipe, indent=2))
    return [weights, described]


def load_weights(folder: Path) -> EmbeddingModel:
    """The module ``save_weights`` wrote, rebuilt from its recipe with its weights loaded
    strictly (every tensor present and of its shape), on the CPU in eval mode."""
    from safetensors.torch import load_file

    recipe = json.loads((folder / RECIPE_FILE).read_text())
    model = rebuild_from_recipe(recipe)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"), strict=True)
    return model.eval()


def save_checked(model: EmbeddingModel, folder: Path, example: torch.Tensor,
                 build: dict[str, Any] | None = None) -> str | None:
    """``save_weights``, kept only when the module rebuilt from the files (the recipe's
    architecture, the file loaded strictly) answers like ``model`` on ``example``. Returns
    why not instead (no recipe, a head without one, a mismatch), with ``folder`` removed."""
    try:
        save_weights(model, folder, model_recipe(model, build))
        diff = largest_difference(model, load_weights(folder), example)
        if diff > REBUILD_MAX_ABS_DIFF:
            shutil.rmtree(folder, ignore_errors=True)
            return (f"the module rebuilt from its recipe answers differently (max |diff| "
                    f"{diff:.2e} > {REBUILD_MAX_ABS_DIFF:g})")
    except Exception as exc:  # noqa: BLE001 - any failure means the same: no rebuildable files
        shutil.rmtree(folder, ignore_errors=True)
        return f"cannot rebuild the module from a recipe ({type(exc).__name__}: {exc})"
    return None


def largest_difference(model: nn.Module, rebuilt: nn.Module, example: torch.Tensor) -> float:
    """The largest difference of any embedding or logit of the two modules (eval mode)."""
    was_training = model.training
    model.eval()
    rebuilt.eval()
    try:
        with torch.no_grad():
            ours, theirs = model(example), rebuilt(example)
    finally:
        model.train(was_training)
    if set(ours) != set(theirs):
        return float("inf")
    return max((float((ours[k].float() - theirs[k].float()).abs().max()) if ours[k].numel()
                else 0.0) for k in ("embedding", "logits") if k in ours)
