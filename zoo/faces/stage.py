"""What a face stage does, as one frozen record that travels with the model.

The template is dlib's face chip (``dlib.get_face_chip``): the five landmarks (eye corners
and the bottom of the nose) are mapped by a least-squares similarity onto fixed points of a
``size`` × ``size`` chip with ``padding`` around the face (0.25: the layout dlib's face
ResNet was trained on, at 150 px). A model trained at 64 px gets the same layout at 64 px.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

FACE_MODES = ("none", "align")
#: What training does with a photo in which no face is found.
MISSING_POLICIES = ("whole", "skip", "fail")
DETECTOR = "dlib_hog"  # dlib.get_frontal_face_detector
LANDMARKS = "dlib_5point"  # shape_predictor_5_face_landmarks.dat
#: The detector sees a copy whose longer side is at most this (a 50 MP photo costs no more
#: than a 1 MP one); landmarks and the chip are taken on the full image.
DEFAULT_MAX_SIDE = 1024


@dataclass(frozen=True)
class FaceStage:
    """Detect, five landmarks, warp to a ``size`` px chip with ``padding`` (dlib's layout)."""

    size: int  # the chip's side: the model's input size
    padding: float = 0.25
    upsample: int = 1  # detector upsampling: 1 finds faces down to about 40 px
    max_side: int = DEFAULT_MAX_SIDE
    detector: str = DETECTOR
    landmarks: str = LANDMARKS

    def __post_init__(self) -> None:
        if int(self.size) < 8:
            raise ValueError(f"a face chip needs at least 8 px, got size={self.size}")
        if not 0.0 <= float(self.padding) <= 2.0:
            raise ValueError(f"face padding must be in [0, 2], got {self.padding}")
        if not 0 <= int(self.upsample) <= 3:
            raise ValueError(f"face detector upsample must be 0-3, got {self.upsample}")
        if int(self.max_side) < 64:
            raise ValueError(f"face detector max_side must be >= 64, got {self.max_side}")
        if (self.detector, self.landmarks) != (DETECTOR, LANDMARKS):
            raise ValueError(f"unknown face detector/landmarks {self.detector}/{self.landmarks}: "
                             f"this model-zoo knows {DETECTOR}/{LANDMARKS}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "padding", float(self.padding))
        object.__setattr__(self, "upsample", int(self.upsample))
        object.__setattr__(self, "max_side", int(self.max_side))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "align", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FaceStage | None:
        """The stage a record holds; ``None`` (or mode none) is a model without one."""
        if not d or d.get("mode", "align") == "none":
            return None
        if d.get("mode") != "align":
            raise ValueError(f"unknown face stage mode {d.get('mode')!r}: one of {FACE_MODES}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def digest(self) -> str:
        """What a cached chip is keyed by, beside its file's hash."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
