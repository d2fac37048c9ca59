"""The input a model family was built and trained for, declared once and without torch.

A run that leaves ``image_size``, ``channels`` or ``faces`` unset takes them from here (as
timm's ``create_model`` takes a pretrained model's input size from its config), so
``-P model=dlib_resnet -P pretrained=true`` reads dlib's 150 px RGB chips without being told.
The families read their sizes from here too, so the two cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NativeInput:
    """A family's own input: its side in pixels, its channels and its face stage."""

    image_size: int
    channels: int = 3
    faces: str = "none"  # "align": dlib's face-chip template at image_size


#: What a run without a family's own input uses (the digits-sized default).
GENERIC = NativeInput(image_size=32, channels=3, faces="none")
DLIB_RESNET = NativeInput(image_size=150, channels=3, faces="align")  # dlib's aligned chip
#: insightface's own 112 px alignment, not dlib's template: no face stage of the zoo's
IRESNET = NativeInput(image_size=112, channels=3, faces="none")
NATIVE_INPUTS = {"dlib_resnet": DLIB_RESNET, "iresnet50": IRESNET, "iresnet100": IRESNET}


def native_input(model: str) -> NativeInput | None:
    """The input model ``model`` declares, or None (timm and tabular models declare none)."""
    return NATIVE_INPUTS.get(model)
