"""Photo augmentation: each training image re-read from its file, then a random-resized crop
of the original, a flip and colour jitter, through timm's own training transform.

This is the field's standard for real photos (timm's ``transforms_imagenet_train``): the crop
is taken from the decoded original, not from an already-resized image, so a close-up keeps its
detail. The original is first shrunk to at most ``max_side`` (default the larger of 512 and
twice the training size) so a 12-megapixel file costs no more than it can add. timm's
``use_prefetcher`` form ends in a uint8 tensor, so batches travel as 8-bit pixels like every
other ``ImageSet`` and are normalised on the device.

Validation, test and served images are resized whole, as without augmentation. Random numbers
come from torch and Python's ``random``, which DataLoader workers seed from the loader's
generator: the same seed gives the same crops.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .images import ImageSet
from .preprocessing import DEFAULT_INTERPOLATION, to_channels

__all__ = ["PhotoImages", "photo_transform", "photo_view"]


def photo_transform(channels: int, size: tuple[int, int], hflip: bool,
                    interpolation: str = DEFAULT_INTERPOLATION) -> Any:
    """timm's training transform: random-resized crop (8-100 % of the area), flip, jitter."""
    from timm.data import create_transform

    return create_transform((channels, *size), is_training=True, use_prefetcher=True,
                            scale=(0.08, 1.0), hflip=0.5 if hflip else 0.0, color_jitter=0.3,
                            interpolation=interpolation)


class PhotoImages(ImageSet):
    """Image files, freshly cropped, flipped and jittered on every access (training only)."""

    reads_files = True

    def __init__(self, paths: Sequence[str | Path], channels: int, size: Sequence[int],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 hflip: bool = False, interpolation: str = DEFAULT_INTERPOLATION,
                 max_side: int | None = None) -> None:
        super().__init__(channels, size, mean, std)
        self.paths = [str(p) for p in paths]
        self.hflip = bool(hflip)
        self.interpolation = interpolation
        self.max_side = int(max_side or max(512, 2 * max(self.image_size)))
        self.transform = photo_transform(self.channels, self.image_size, self.hflip,
                                         interpolation)

    def __len__(self) -> int:
        return len(self.paths)

    def _one(self, path: str) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                img = to_channels(img, self.channels)
                if max(img.size) > self.max_side:
                    img.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
                return self.transform(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None

    def raw(self, picked: list[int]) -> torch.Tensor:
        if not picked:
            return torch.empty((0, self.channels, *self.image_size), dtype=torch.uint8)
        return torch.stack([self._one(self.paths[i]) for i in picked])

    def _view(self, picked: list[int], mean: list[float] | None,
              std: list[float] | None) -> "PhotoImages":
        return PhotoImages([self.paths[i] for i in picked], self.channels, self.image_size,
                           mean, std, self.hflip, self.interpolation, self.max_side)


def photo_view(x: Any, hflip: bool) -> PhotoImages:
    """The training images of ``x`` (an ``ImageSet`` read from a folder) with photo
    augmentation, resized with the filter ``x`` was decoded with; images that came from no
    file (digits, tables) are refused by name."""
    paths = getattr(x, "paths", None)
    if not isinstance(x, ImageSet) or paths is None:
        raise ValueError("augment=photo crops each training image from its file, and this data "
                         "has no image files (digits and tables are arrays): use augment=light "
                         "or strong")
    return PhotoImages(paths, x.channels, x.image_size, x.mean, x.std, hflip, x.interpolation)
