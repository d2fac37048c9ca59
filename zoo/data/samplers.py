"""Class-balanced P x K batches: what pair and triplet losses need to find positives.

A random batch of 64 from 40 classes holds few same-class pairs; P classes x K samples each
guarantees K-1 positives per anchor. Like pytorch-metric-learning's ``MPerClassSampler``,
but deterministic from ``seed`` and the epoch (``set_epoch``, as ``DistributedSampler``).
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``P = batch_size // k`` distinct classes x ``k`` samples each.

    Classes are visited in shuffled rounds so all appear equally often; within a class,
    samples are drawn without replacement (reshuffled when used up), with replacement when a
    class has fewer than ``k``. When there are fewer classes than P, every class is in every
    batch and K grows to fill ``batch_size``. An epoch is ``len(labels) // batch_size``
    batches (at least one).

    Data-parallel training: with ``num_replicas`` processes each takes every
    ``num_replicas``-th batch of the one sequence all of them draw from the same seed, so
    their batches are disjoint, each class-balanced, and as many on every process.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int = 64,
        k: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__()
        y = torch.as_tensor(labels).cpu().numpy().astype(np.int64).ravel()
        if k < 1 or batch_size < k:
            raise ValueError(f"need 1 <= k <= batch_size, got k={k}, batch_size={batch_size}")
        self.classes = np.unique(y)
        if len(self.classes) < 2:
            raise ValueError(f"PK sampling needs at least 2 classes, got {len(self.classes)}")
        self.members = [np.flatnonzero(y == c) for c in self.classes]
        self.p = batch_size // k
        self.k = k
        if self.p > len(self.classes):
            self.p = len(self.classes)
            self.k = batch_size // self.p
            log.info(
                "PK sampler: only %d classes for batch %d; using P=%d x K=%d",
                len(self.classes), batch_size, self.p, self.k,
            )
        self.batch_size = self.p * self.k
        self.num_samples = len(y)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got {rank} of {num_replicas}")
        self.num_replicas, self.rank = num_replicas, rank
        self.num_batches = max(1, len(y) // (batch_size * num_replicas))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: the same (seed, epoch) always yields the same batches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self.classes)
        queue: list[int] = []
        pools = [rng.permutation(m) for m in self.members]
        cursors = [0] * n_classes
        for step in range(self.num_batches * self.num_replicas):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.p:
                if not queue:
                    queue = rng.permutation(n_classes).tolist()
                c = queue.pop(0)
                (deferred if c in chosen else chosen).append(c)
            queue = deferred + queue
            batch: list[int] = []
            for c in chosen:
                members = self.members[c]
                if len(members) < self.k:
                    batch += rng.choice(members, self.k, replace=True).tolist()
                    continue
                if cursors[c] + self.k > len(members):
                    pools[c], cursors[c] = rng.permutation(members), 0
                batch += pools[c][cursors[c]:cursors[c] + self.k].tolist()
                cursors[c] += self.k
            if step % self.num_replicas == self.rank:
                yield batch
