"""Faces as a cheap camera takes them: small, blurred, dim and compressed.

A door camera, CCTV or an old phone gives faces a studio set does not: few pixels on the
face, soft focus, poor light and heavy JPEG. ``CameraDegradation`` makes such a photo from a
clean one, in this order: the image scaled down by ``factor`` and back up (the pixels the
face had), a Gaussian blur of sigma drawn from ``blur`` (focus, motion), brightness times a
factor drawn from ``light`` (dim light), and a JPEG at a quality drawn from ``quality`` (the
camera's encoder). ``degrade_tree`` writes a degraded copy of a folder-per-person tree, each
photo with its own generator seeded from the run's seed, the factor and the photo's path, so
that a copy is the same on every machine and for any subset of the tree
(``bench/camera_faces.py``).
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

#: what ``degrade_tree`` reads: the image files a folder source takes
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class CameraDegradation:
    """One camera's strength: ``factor`` the downscale (1: the photo's own pixels), and the
    ranges each photo draws its blur sigma (px), brightness factor and JPEG quality from."""

    factor: float
    blur: tuple[float, float] = (0.3, 1.0)
    light: tuple[float, float] = (0.5, 0.9)
    quality: tuple[int, int] = (20, 40)

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1 (a downscale), got {self.factor}")
        for name in ("blur", "light", "quality"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range lo <= hi of non-negative values, "
                                 f"got {(lo, hi)}")
        if self.quality[1] > 100 or self.quality[0] < 1:
            raise ValueError(f"quality must lie in 1-100, got {self.quality}")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> bytes:
        """``image`` as this camera would have saved it: JPEG bytes, in its own mode (grey
        stays grey) and size."""
        mode = "L" if image.mode in ("L", "I", "I;16", "1") else "RGB"
        image = image.convert(mode)
        if self.factor > 1:
            small = (max(1, round(image.width / self.factor)),
                     max(1, round(image.height / self.factor)))
            image = image.resize(small, Image.Resampling.BOX).resize(
                image.size, Image.Resampling.BILINEAR)
        sigma = float(rng.uniform(*self.blur))
        if sigma > 0:
            image = image.filter(ImageFilter.GaussianBlur(sigma))
        light = float(rng.uniform(*self.light))
        pixels = np.asarray(image, np.float32) * light
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode)
        quality = int(rng.integers(self.quality[0], self.quality[1] + 1))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()


def photo_generator(seed: int, factor: float, relative: str) -> np.random.Generator:
    """The generator of one photo of a copy: the same for the same seed, factor and path."""
    return np.random.default_rng([seed, round(factor * 1000), zlib.crc32(relative.encode())])


def degrade_tree(source: Path, target: Path, camera: CameraDegradation, seed: int = 0) -> int:
    """A degraded copy of the folder-per-person tree ``source`` in ``target`` (each photo as
    ``<person>/<stem>.jpg``); returns the photos written. ``target`` must not exist yet, so
    that a copy is never a mix of two runs."""
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise FileNotFoundError(f"no folder {source}")
    if target.exists():
        raise FileExistsError(f"{target} exists: degrade into a new folder")
    photos = sorted(p for p in source.rglob("*")
                    if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise ValueError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) under {source}")
    partial = target.with_name(target.name + ".partial")
    for photo in photos:
        relative = photo.relative_to(source)
        out = partial / relative.with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photo) as image:
            out.write_bytes(camera(image, photo_generator(seed, camera.factor,
                                                          relative.as_posix())))
    partial.rename(target)
    return len(photos)
