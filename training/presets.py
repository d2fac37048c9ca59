"""Named training recipes: ``-P preset=faces-small`` fills in many parameters at once.

A preset changes only the fields left at their defaults, so any parameter given with another
value wins (``-P preset=faces-small -P epochs=30``). The values a preset set are logged as
the run's parameters like any others (under ``mlflow run``, whose own parameters hold the
defaults it was given, as ``zoo.resolved.<param>`` tags), and the run is tagged ``zoo.preset``.
Each recipe's measurements are in docs/results.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NONE = "none"


@dataclass(frozen=True)
class Preset:
    """A recipe: what it is for, and the field values it sets."""

    doc: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "faces-small": Preset(
        doc="face identities from a few hundred images (ORL-sized): a VGG-11 cut after its "
            "third stage, one 64-d CosFace-trained part per cell of a 2x2 grid, grey 32 px, "
            "60 epochs, flips; no validation split (every image of a person trains)",
        values=dict(
            model="timm/vgg11_bn", stage=2, grid=2, parts=True, loss="cosface", channels=1,
            image_size=32, embedding_dim=256, epochs=60, batch_size=32, lr=2e-3,
            augment="light", hflip=True, tta="flip", val_fraction=0.0, monitor="none",
        ),
    ),
    "faces-pretrained": Preset(
        doc="face identities starting from dlib's face ResNet (the model face_recognition "
            "uses; its weights from the faces extra's package) on aligned 150 px RGB chips, "
            "fine-tuned gently with a batch-hard triplet loss (dlib's own kind of metric "
            "loss): 8 epochs at lr 5e-5, the backbone at a tenth of it after one epoch "
            "frozen; no validation split. Tuned on ORL (docs/results.md)",
        values=dict(
            model="dlib_resnet", pretrained="true", faces="align", channels=3, image_size=150,
            embedding_dim=128, loss="triplet", miner="batch_hard", epochs=8, lr=5e-5,
            val_fraction=0.0, monitor="none",
        ),
    ),
}


def preset_names() -> tuple[str, ...]:
    """``none`` and every preset, for the ``preset`` field's choices."""
    return (NONE, *PRESETS)


def _preset_of(flat: dict[str, Any]) -> Preset | None:
    name = flat.get("preset", NONE)
    if name == NONE:
        return None
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of {', '.join(preset_names())}")
    return PRESETS[name]


def apply_preset(flat: dict[str, Any], defaults: dict[str, Any],
                 skip: tuple[str, ...] = ()) -> None:
    """Set the preset's values on the parameters of ``flat`` that hold their default
    (except ``skip``). Applying it twice changes nothing more."""
    preset = _preset_of(flat)
    if preset is None:
        return
    for key, value in preset.values.items():
        if key not in skip and key in flat and flat[key] == defaults[key]:
            flat[key] = value


def preset_fields(flat: dict[str, Any], defaults: dict[str, Any],
                  skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The parameters that hold a value of the preset's other than their default: under
    ``mlflow run``, whose parameters hold the defaults, these are logged as resolved."""
    preset = _preset_of(flat)
    if preset is None:
        return ()
    return tuple(k for k, v in preset.values.items()
                 if k not in skip and k in flat and v != defaults[k] and flat[k] == v)
