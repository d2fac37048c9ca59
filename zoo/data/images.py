"""Image sets held as 8-bit pixels and turned into model inputs one batch at a time.

``ImageSet`` quacks like the ``[N, C, H, W]`` float tensor the trainer used to hold (``x[idx]``,
``len(x)``, ``x.shape``): indexing returns float32 in [0, 1], or normalised when the set carries
a mean and std. Where the pixels come from is the subclass's business:

- ``StoredImages``: decoded once into one uint8 tensor, a quarter of the float32 memory;
  subsets and splits are index views of it, never copies.
- ``LazyImages`` (``lazy.py``): decoded from the files on access, for folders beyond the budget.

``batch_to`` moves the 8-bit batch to the device and converts it there (pinned memory and a
non-blocking copy on CUDA), so the host sends a quarter of the bytes and the GPU does the
arithmetic. The arithmetic is the same on every device (``to_unit`` then ``normalise``, each
correctly rounded), so a batch equals ``x[idx]`` bit for bit.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .preprocessing import DEFAULT_INTERPOLATION, normalise

__all__ = ["ImageSet", "StoredImages", "batch_to"]


def _unit_on(raw: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 ``[n, C, H, W]`` to float32 in [0, 1] on ``device`` (the same division as
    ``preprocessing.to_unit``)."""
    if device is not None and raw.device != device:
        if device.type == "cuda":
            raw = raw.pin_memory()
        raw = raw.to(device, non_blocking=True)
    return raw.to(torch.float32).div_(255.0)


class ImageSet:
    """N images of one shape, 8-bit at rest; ``x[idx]`` gives float32 model inputs."""

    dtype = torch.float32  # what indexing returns
    reads_files = False  # True: each access decodes files (worth decoding worker processes)

    def __init__(self, channels: int, size: Sequence[int],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.channels = int(channels)
        self.image_size = (int(size[0]), int(size[1]))
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    # -- what a subclass provides
    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, picked: list[int]) -> torch.Tensor:
        """uint8 ``[len(picked), C, H, W]`` of these rows (already range-checked)."""
        raise NotImplementedError

    def _view(self, picked: list[int], mean: list[float] | None,
              std: list[float] | None) -> "ImageSet":
        raise NotImplementedError

    # -- shared
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, *self.image_size))

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> torch.Size | int:
        """Like ``Tensor.size``."""
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        """Bytes the pixels take at rest (0 for files decoded on access)."""
        return 0

    def __repr__(self) -> str:
        norm = "normalised" if self.mean is not None else "in [0, 1]"
        return f"{type(self).__name__}({len(self)} images, shape={tuple(self.shape)}, {norm})"

    def _indices(self, index: Any) -> list[int] | int:
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} images")
            return i % n
        if isinstance(index, slice):
            return list(range(n)[index])
        idx = torch.as_tensor(np.asarray(index) if isinstance(index, list) else index)
        if idx.dtype == torch.bool:
            if idx.numel() != n:
                raise IndexError(f"boolean mask of {idx.numel()} for {n} images")
            idx = idx.nonzero().flatten()
        if idx.dim() == 0:
            return self._indices(int(idx))
        if idx.numel() and (idx.max() >= n or idx.min() < -n):
            raise IndexError(f"index out of range for {n} images")
        return [int(i) % n for i in idx.flatten().tolist()]

    def _finish(self, unit: torch.Tensor) -> torch.Tensor:
        if self.mean is not None and self.std is not None:
            return normalise(unit, self.mean, self.std)
        return unit

    def __getitem__(self, index: Any) -> torch.Tensor:
        """The selected images as float32 on the CPU, normalised when the set says so."""
        picked = self._indices(index)
        single = isinstance(picked, int)
        x = self._finish(_unit_on(self.raw([picked] if single else picked)))
        return x[0] if single else x

    def batch_to(self, index: Any, device: torch.device) -> torch.Tensor:
        """``self[index]`` computed on ``device``: 8-bit pixels travel, floats are made there."""
        picked = self._indices(index)
        picked = [picked] if isinstance(picked, int) else picked
        return self._finish(_unit_on(self.raw(picked), torch.device(device)))

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ImageSet":
        """The same images restricted to ``indices``: a view, nothing is copied or decoded."""
        picked = self._indices(indices)
        return self._view([picked] if isinstance(picked, int) else picked, self.mean, self.std)

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> "ImageSet":
        """The same images, normalised with ``mean``/``std`` on access."""
        return self._view(list(range(len(self))), [float(m) for m in mean],
                          [float(s) for s in std])

    def load(self, desc: str | None = None) -> torch.Tensor:
        """Everything as one float32 tensor (only when it fits in memory)."""
        return self[:]


class StoredImages(ImageSet):
    """Images decoded once into a uint8 ``[N, C, H, W]`` tensor; views share it."""

    def __init__(self, pixels: torch.Tensor, rows: torch.Tensor | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 paths: Sequence[str] | None = None,
                 interpolation: str = DEFAULT_INTERPOLATION) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(f"stored images are uint8 [N, C, H, W], got {pixels.dtype} "
                             f"{tuple(pixels.shape)}")
        super().__init__(pixels.shape[1], pixels.shape[2:], mean, std)
        self.pixels = pixels
        self.rows = rows  # None: every row of pixels, in order
        # the files the images were decoded from (folders), one per image of this view, and
        # the resize filter they were decoded with
        self.paths = None if paths is None else list(paths)
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.pixels) if self.rows is None else len(self.rows)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def raw(self, picked: list[int]) -> torch.Tensor:
        idx = torch.as_tensor(picked, dtype=torch.int64)
        return self.pixels[idx if self.rows is None else self.rows[idx]]

    def _view(self, picked: list[int], mean: list[float] | None,
              std: list[float] | None) -> "StoredImages":
        idx = torch.as_tensor(picked, dtype=torch.int64)
        paths = None if self.paths is None else [self.paths[i] for i in picked]
        return StoredImages(self.pixels, idx if self.rows is None else self.rows[idx], mean, std,
                            paths, self.interpolation)


def batch_to(x: Any, index: Any, device: torch.device) -> torch.Tensor:
    """One batch of model inputs on ``device``, from an ``ImageSet`` or a plain tensor."""
    if isinstance(x, ImageSet):
        return x.batch_to(index, device)
    return x[index].to(device, non_blocking=True)
