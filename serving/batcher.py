"""Adaptive batching: concurrent requests share one model call.

While the model runs a batch, new requests queue; when it finishes, the next call takes
everything queued (up to ``max_batch_size`` inputs). Batches therefore grow with load and a
lone request never waits for a window to close. BentoML's own ``batchable=True`` does this
for endpoints of exactly one argument that answer a bare list; the zoo's endpoints take
images or rows and answer with the model's name and version, so they batch here instead,
one level below HTTP, where every endpoint (embed, classify, identify, enroll) shares it.

The model runs on one dedicated thread (ONNX Runtime releases the GIL), so the event loop
keeps reading and decoding requests while a batch computes.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass
class _Job:
    inputs: np.ndarray
    future: asyncio.Future[Outputs]


class Batcher:
    """Coalesce ``await batcher(x)`` calls into calls of ``fn`` on concatenated inputs."""

    def __init__(self, fn: Callable[[np.ndarray], Outputs], max_batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.fn, self.max_batch_size, self.on_batch = fn, max_batch_size, on_batch
        self._queue: list[_Job] = []
        self._draining = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="zoo-model")

    async def __call__(self, inputs: np.ndarray) -> Outputs:
        """The model's outputs for ``inputs`` (``[N, ...]``), computed with others' inputs."""
        if len(inputs) > self.max_batch_size:  # one large request: in chunks, each batched
            parts = [await self(inputs[i:i + self.max_batch_size])
                     for i in range(0, len(inputs), self.max_batch_size)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future())
        self._queue.append(job)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await job.future

    def _take(self) -> list[_Job]:
        """Queued jobs in arrival order, as many as fit into one batch (at least one)."""
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0].inputs) <= self.max_batch_size):
            job = self._queue.pop(0)
            taken.append(job)
            size += len(job.inputs)
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                jobs = [job for job in self._take() if not job.future.cancelled()]
                if not jobs:
                    continue
                batch = np.concatenate([job.inputs for job in jobs])
                try:
                    outputs = await loop.run_in_executor(self._executor, self.fn, batch)
                except Exception as exc:  # noqa: BLE001 - every caller of this batch gets it
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(batch))
                start = 0
                for job in jobs:
                    end = start + len(job.inputs)
                    if not job.future.done():
                        job.future.set_result({k: v[start:end] for k, v in outputs.items()})
                    start = end
        finally:
            self._draining = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
