"""Photos for the face-stage tests: ORL faces pasted into larger frames at random places and
scales, with where each face went (no network, real faces)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from support.process import REPO

#: A real face identity set (40 people x 10 images, 92 x 112 grey crops) beside the checkout.
ORL_FACES = REPO.parent / "shared" / "data" / "orl_faces"
#: The frames are photos a face covers a tenth of.
FRAME = (640, 480)


@dataclass(frozen=True)
class Pasted:
    """One face pasted into a frame: its file, and where it went ``(x0, y0, x1, y1)``."""

    source: Path
    person: str
    place: tuple[int, int, int, int]


def background(rng: np.random.Generator, size: tuple[int, int] = FRAME) -> Image.Image:
    """A smooth colour gradient with mild noise: no face-like structure."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.1, 0.1, (3, 2))
    img = base + xs[..., None] * slope[:, 0] + ys[..., None] * slope[:, 1]
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def paste_faces(sources: list[Path], rng: np.random.Generator,
                size: tuple[int, int] = FRAME, scale: tuple[float, float] = (1.0, 1.8)
                ) -> tuple[Image.Image, list[Pasted]]:
    """``sources`` pasted side by side at random scales and heights, not overlapping."""
    frame = background(rng, size)
    width, height = size
    slot = width // len(sources)
    pasted = []
    for k, source in enumerate(sources):
        face = Image.open(source).convert("RGB")
        s = rng.uniform(*scale)
        w, h = int(face.width * s), int(face.height * s)
        w, h = min(w, slot - 4), min(h, height - 4)
        face = face.resize((w, h), Image.Resampling.BILINEAR)
        x = k * slot + int(rng.integers(0, max(1, slot - w)))
        y = int(rng.integers(0, max(1, height - h)))
        frame.paste(face, (x, y))
        pasted.append(Pasted(source, source.parent.name, (x, y, x + w, y + h)))
    return frame, pasted


def contains(place: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    """Whether the centre of ``box`` lies inside ``place``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return place[0] <= cx <= place[2] and place[1] <= cy <= place[3]
