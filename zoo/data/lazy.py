"""Image files decoded in threads: all at once at load, or on access when they don't fit.

``LazyImages`` quacks like the preloaded ``[N, C, H, W]`` tensor where the trainer touches it
(``x[idx]``, ``len(x)``, ``x.shape``), so one training loop serves folders of any size.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .preprocessing import DEFAULT_INTERPOLATION, image_to_array, normalise, to_unit

log = logging.getLogger(__name__)

T = TypeVar("T")


def default_workers() -> int:
    """Decoding threads: PIL releases the GIL while decoding, so one per core pays."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_file(path: str | Path, channels: int, size: tuple[int, int],
                interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """Decode one image file to uint8 ``[C, H, W]``; a broken file names itself."""
    try:
        with Image.open(path) as img:
            return image_to_array(img, channels, size, interpolation)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from None


def check_file(path: str | Path) -> None:
    """Read only the header: cheap proof that PIL knows the file (used in lazy mode)."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header is parsed by open; size forces nothing more
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from None


def thread_map(
    fn: Callable[[Any], T],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    desc: str | None = None,
) -> Iterable[T]:
    """``map`` over a thread pool, in order, with an optional tqdm bar; errors propagate."""
    workers = workers or default_workers()
    if workers == 1 or len(items) <= 1:
        it: Iterable[T] = map(fn, items)
        return tqdm(it, total=len(items), desc=desc, disable=None) if desc else it

    def run() -> Iterable[T]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(fn, items)
            bar = tqdm(results, total=len(items), desc=desc, disable=None if desc else True)
            try:
                yield from bar
            finally:
                bar.close()
                pool.shutdown(wait=True, cancel_futures=True)

    return run()


def decode_files(
    paths: Sequence[str | Path],
    channels: int,
    size: tuple[int, int],
    *,
    workers: int | None = None,
    desc: str | None = None,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> torch.Tensor:
    """Decode files into one float32 ``[N, C, H, W]`` tensor in [0, 1]."""
    height, width = size
    out = torch.empty((len(paths), channels, height, width), dtype=torch.float32)
    arrays = thread_map(
        lambda p: decode_file(p, channels, size, interpolation), paths, workers=workers,
        desc=desc,
    )
    for i, arr in enumerate(arrays):
        out[i] = to_unit(arr)
    return out


class LazyImages:
    """Image files decoded on access, optionally normalised: ``x[idx] -> [n, C, H, W]``."""

    dtype = torch.float32

    def __init__(
        self,
        paths: Sequence[str | Path],
        channels: int,
        size: tuple[int, int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        workers: int | None = None,
        interpolation: str = DEFAULT_INTERPOLATION,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.interpolation = interpolation
        self.channels = int(channels)
        self.image_size = (int(size[0]), int(size[1]))
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.workers = workers

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), self.channels, *self.image_size))

    def __len__(self) -> int:
        return len(self.paths)

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> torch.Size | int:
        """Like ``Tensor.size``."""
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        norm = "normalised" if self.mean is not None else "in [0, 1]"
        return f"LazyImages({len(self)} files, shape={tuple(self.shape)}, {norm})"

    def _indices(self, index: Any) -> list[int] | int:
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} images")
            return i % len(self)
        if isinstance(index, slice):
            return list(range(len(self)))[index]
        idx = torch.as_tensor(np.asarray(index) if isinstance(index, list) else index)
        if idx.dtype == torch.bool:
            if idx.numel() != len(self):
                raise IndexError(f"boolean mask of {idx.numel()} for {len(self)} images")
            idx = idx.nonzero().flatten()
        if idx.dim() == 0:
            return self._indices(int(idx))
        if idx.numel() and (idx.max() >= len(self) or idx.min() < -len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        return [int(i) % len(self) for i in idx.flatten().tolist()]

    def __getitem__(self, index: Any) -> torch.Tensor:
        """Decode (in threads) and normalise the selected images."""
        picked = self._indices(index)
        single = isinstance(picked, int)
        chosen = [self.paths[picked]] if single else [self.paths[i] for i in picked]
        x = decode_files(chosen, self.channels, self.image_size, workers=self.workers,
                         interpolation=self.interpolation)
        if self.mean is not None and self.std is not None:
            x = normalise(x, self.mean, self.std)
        return x[0] if single else x

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "LazyImages":
        """The same images restricted to ``indices`` (a view: nothing is decoded)."""
        picked = self._indices(indices)
        picked = [picked] if isinstance(picked, int) else picked
        return LazyImages(
            [self.paths[i] for i in picked], self.channels, self.image_size, self.mean, self.std,
            self.workers, self.interpolation,
        )

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> "LazyImages":
        """A copy that normalises with ``mean``/``std`` on access."""
        return LazyImages(self.paths, self.channels, self.image_size, mean, std, self.workers,
                          self.interpolation)

    def load(self, desc: str | None = None) -> torch.Tensor:
        """Everything as one tensor (only when it fits in memory)."""
        x = decode_files(
            self.paths, self.channels, self.image_size, workers=self.workers, desc=desc,
            interpolation=self.interpolation,
        )
        return x if self.mean is None else normalise(x, self.mean, self.std)
