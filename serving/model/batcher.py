"""Adaptive batching: concurrent requests share one model call.

While the model runs a batch, new requests queue; when it finishes, the next call takes
everything queued (up to ``max_batch_size`` inputs). Batches therefore grow with load and a
lone request never waits for a window to close. BentoML's own ``batchable=True`` does this
for endpoints of exactly one argument that answer a bare list; the zoo's endpoints take
images or rows and answer with the model's name and version, so they batch here instead,
one level below HTTP, where every endpoint (embed, classify, identify, enroll) shares it.

The model runs on a thread of its own that takes the next batch itself the moment the last
one is done (ONNX Runtime releases the GIL). Handing batches out from the event loop instead
left the model idle a third of the time under load, waiting for a busy loop to get round to
it (bench/serve_throughput.py, resnet18 at 112 px). A fixed batching window (waiting a few
ms for more requests) made batches larger but throughput lower on two cores: the model's
threads and HTTP parsing share them, and a waiting model is wasted compute.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass
class _Job:
    inputs: np.ndarray
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    checked: bool = True  # False for a chunk of a large request: checked whole, afterwards


def _settle(future: asyncio.Future[Outputs], result: Outputs | BaseException) -> None:
    if future.done():  # the caller went away (client disconnected, timeout)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    """Coalesce ``await batcher(x)`` calls into calls of ``fn`` on concatenated inputs."""

    def __init__(self, fn: Callable[[np.ndarray], Outputs], max_batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None,
                 check: Callable[[Outputs], None] | None = None) -> None:
        """``check`` raises for outputs a caller must not get; it runs on the whole batch
        (one vectorised call), and on each caller's share only when the batch fails it, so
        that only the callers whose outputs are bad get the error."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.fn, self.max_batch_size, self.on_batch = fn, max_batch_size, on_batch
        self.check = check
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="zoo-model", daemon=True)
        self._thread.start()

    async def __call__(self, inputs: np.ndarray) -> Outputs:
        """The model's outputs for ``inputs`` (``[N, ...]``), computed with others' inputs."""
        if len(inputs) <= self.max_batch_size:
            return await self._submit(inputs, checked=True)
        # one large request: in chunks, each batched, checked as a whole (the error then
        # names the input's index in the request, not in its chunk)
        parts = [await self._submit(inputs[i:i + self.max_batch_size], checked=False)
                 for i in range(0, len(inputs), self.max_batch_size)]
        outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self.check is not None:
            self.check(outputs)
        return outputs

    async def _submit(self, inputs: np.ndarray, checked: bool) -> Outputs:
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future(), loop, checked)
        with self._ready:
            if self._closed:
                raise RuntimeError("the model is shutting down")
            self._queue.append(job)
            self._ready.notify()
        return await job.future

    def _take(self) -> list[_Job]:
        """Queued jobs in arrival order, as many as fit into one batch (at least one)."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            taken, size = [], 0
            while self._queue and (not taken or
                                   size + len(self._queue[0].inputs) <= self.max_batch_size):
                job = self._queue.popleft()
                taken.append(job)
                size += len(job.inputs)
            return taken

    def _serve(self) -> None:
        while True:
            jobs = [job for job in self._take() if not job.future.done()]
            if not jobs:
                if self._closed:
                    return
                continue
            batch = np.concatenate([job.inputs for job in jobs])
            try:
                outputs = self.fn(batch)
            except Exception as exc:  # noqa: BLE001 - every caller of this batch gets it
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            parts, start = [], 0
            for job in jobs:
                end = start + len(job.inputs)
                parts.append({k: v[start:end] for k, v in outputs.items()})
                start = end
            for job, result in zip(jobs, self._checked(outputs, jobs, parts)):
                job.loop.call_soon_threadsafe(_settle, job.future, result)

    def _checked(self, outputs: Outputs, jobs: list[_Job], parts: list[Outputs]
                 ) -> list[Outputs | BaseException]:
        """Each caller's share of ``outputs``, or the error ``check`` raises for it."""
        if self.check is None:
            return list(parts)
        try:
            self.check(outputs)
            return list(parts)
        except Exception:  # noqa: BLE001 - some share is bad: find whose
            pass
        results: list[Outputs | BaseException] = []
        for job, part in zip(jobs, parts):
            try:
                if job.checked:
                    self.check(part)
                results.append(part)
            except Exception as exc:  # noqa: BLE001 - that caller's error, and only theirs
                results.append(exc)
        return results

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
