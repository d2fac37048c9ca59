"""Training batches on the device, with files decoded in worker processes ahead of the step.

Preloaded images and tables are indexed in the training process: a uint8 gather is far
cheaper than a step. Images read from their files (folders too big for the preload budget,
and photo augmentation) go through a torch ``DataLoader``: ``workers`` processes decode whole
index batches (``__getitems__``) while the model trains on the previous ones, the 8-bit batch
is pinned on CUDA and copied without blocking, and the float conversion and normalisation run
on the device.

The batch order comes from the loop's seeded index batches; plain decoding draws no random
numbers, so its batches are the same with any number of workers, and photo augmentation draws
them in workers seeded from ``seed``, so the same seed and workers give the same crops.
``EpochInput.wait_s`` is the time the step spent waiting for input, logged per epoch as
``data_wait_s``: near 0, input keeps up; a large share of ``epoch_time_s``, the model waits
for the decoder.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from zoo.data import ImageSet, LazyImages, batch_to
from zoo.data.images import _unit_on

__all__ = ["EpochInput", "default_loader_workers"]


def default_loader_workers() -> int:
    """Decoding processes for a lazy folder: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class _RawBatches(torch.utils.data.Dataset):
    """Images read from files as a map-style dataset whose items are whole uint8 batches."""

    def __init__(self, images: ImageSet) -> None:
        if isinstance(images, LazyImages):  # one decoding thread per worker process
            images = copy.copy(images)
            images.workers = 1
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return self.images.raw(list(indices))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images.raw([int(index)])[0]


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _yield_to_the_step(worker_id: int) -> None:
    """Decoders run at a lower priority: where cores are short (a CPU run) they take the time
    the training step leaves idle rather than slowing the step itself."""
    if hasattr(os, "nice"):
        try:
            os.nice(10)
        except OSError:
            pass


class EpochInput:
    """``(indices, inputs on device)`` for each index batch of one epoch, timing the waits."""

    def __init__(self, x, index_batches: Iterable[torch.Tensor], device: torch.device,
                 workers: int = 0, seed: int = 0) -> None:
        self.x, self.device, self.workers, self.seed = x, torch.device(device), int(workers), seed
        self.index_batches = [torch.as_tensor(i, dtype=torch.long) for i in index_batches]
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.index_batches)

    def _inputs(self) -> Iterator[torch.Tensor]:
        if getattr(self.x, "reads_files", False) and self.workers > 0 and self.index_batches:
            loader = DataLoader(
                _RawBatches(self.x), batch_sampler=[i.tolist() for i in self.index_batches],
                num_workers=self.workers, collate_fn=_as_is, prefetch_factor=4,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.seed),
                worker_init_fn=_yield_to_the_step,
            )
            for raw in loader:
                yield self.x._finish(_unit_on(raw, self.device))
        else:
            for idx in self.index_batches:
                yield batch_to(self.x, idx, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs = self._inputs()
        for idx in self.index_batches:
            start = time.perf_counter()
            xb = next(inputs)
            self.wait_s += time.perf_counter() - start
            yield idx, xb
