"""Image files decoded in threads: all at once at load, or on access when they don't fit.

``LazyImages`` is the ``ImageSet`` (``images.py``) whose pixels stay in their files, so one
training loop serves preloaded sets and folders of any size alike.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .images import ImageSet, _unit_on
from .preprocessing import DEFAULT_INTERPOLATION, image_to_array

if TYPE_CHECKING:
    from zoo.faces.chips import FaceChipper

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
    chipper: FaceChipper | None = None,
) -> torch.Tensor:
    """Decode files into one uint8 ``[N, C, H, W]`` tensor (8-bit pixels, as in the files);
    with a ``chipper`` (the face stage) each file is its largest face's aligned chip."""
    height, width = size
    out = torch.empty((len(paths), channels, height, width), dtype=torch.uint8)
    decode = ((lambda p: _chip_of(chipper, p)) if chipper is not None
              else (lambda p: decode_file(p, channels, size, interpolation)))
    arrays = thread_map(decode, paths, workers=workers, desc=desc)
    for i, arr in enumerate(arrays):
        out[i] = torch.from_numpy(arr)
    return out


def _chip_of(chipper: FaceChipper, path: str | Path) -> np.ndarray:
    pixels, outcome = chipper(path)
    if pixels is None:
        raise ValueError(f"no face found in {path}, which had one when the folder was loaded")
    return pixels


class LazyImages(ImageSet):
    """Image files decoded (in threads) on access: ``x[idx] -> float32 [n, C, H, W]``."""

    reads_files = True

    def __init__(
        self,
        paths: Sequence[str | Path],
        channels: int,
        size: tuple[int, int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        workers: int | None = None,
        interpolation: str = DEFAULT_INTERPOLATION,
        chipper: FaceChipper | None = None,
    ) -> None:
        super().__init__(channels, size, mean, std)
        self.paths = [str(p) for p in paths]
        self.interpolation = interpolation
        self.workers = workers
        self.chipper = chipper  # the face stage: aligned (or read from its cache) on access

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        norm = "normalised" if self.mean is not None else "in [0, 1]"
        return f"LazyImages({len(self)} files, shape={tuple(self.shape)}, {norm})"

    def raw(self, picked: list[int], desc: str | None = None) -> torch.Tensor:
        return decode_files([self.paths[i] for i in picked], self.channels, self.image_size,
                            workers=self.workers, desc=desc, interpolation=self.interpolation,
                            chipper=self.chipper)

    def _view(self, picked: list[int], mean: list[float] | None,
              std: list[float] | None) -> "LazyImages":
        return LazyImages([self.paths[i] for i in picked], self.channels, self.image_size,
                          mean, std, self.workers, self.interpolation, self.chipper)

    def load(self, desc: str | None = None) -> torch.Tensor:
        """Everything as one float32 tensor (only when it fits in memory)."""
        return self._finish(_unit_on(self.raw(list(range(len(self))), desc)))
