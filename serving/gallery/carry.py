"""A version's gallery filled from what the family's enrollments kept: every kept entry
re-embedded by the new version, in batches of its batch size.

Resumable: what is done is what the gallery holds. Each batch is one transaction (its
entries, and those this version cannot embed with the reason), so after a kill -9 the next
run continues from the first kept entry the gallery lacks. Enrollments that arrive meanwhile
keep their data too and are carried before the run ends; a person deleted meanwhile is
deleted from every gallery of the family and never brought back (``CarryTable.add`` writes
only what is still kept, under the gallery's lock). What cannot be carried is listed with
the reason, never dropped silently: an identity of which nothing was kept (enrolled before
keeping, or with it off), or a kept entry the new version cannot take (its face stage finds
no face, rows for an image model).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from serving.gallery.gate import Verdict, compare
from serving.gallery.kept import Uncarried, kept_input
from serving.gallery.table import CarryTable

log = logging.getLogger(__name__)


@dataclass
class Carried:
    """What a run carried: entries embedded now, those the gallery holds in all, the kept
    entries of the family, what could not be carried and why, and the seconds taken."""

    added: int = 0
    done: int = 0
    kept: int = 0
    uncarried: list[tuple[str, str]] = field(default_factory=list)
    nothing_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_keeping(model) -> None:
    """Refuse a version whose gallery keeps nothing: there is nothing to carry from."""
    if model.sealer is None:
        raise ValueError("ZOO_KEEP_ENROLLED=false: nothing is kept, so nothing can be carried "
                         "to a new version (enroll the people's files again: "
                         "python -m serving.enroll)")


def carry(model, batch_size: int | None = None,
          progress: Callable[[int, int], None] | None = None,
          ids: tuple[int, int | None] | None = None) -> Carried:
    """Embed every kept entry of ``model``'s family into its gallery (a ``ServedModel``
    whose gallery keeps data: ``ZOO_KEEP_ENROLLED``), ``progress(done, total)`` after each
    batch.

    ``ids=(lo, hi)``: only the kept entries with ids in ``(lo, hi]`` (``hi`` None: no upper
    bound), one part of the work carried alone (``serving/gallery/carry_ray.py``); the
    report's ``added`` is then this part's, its other figures the gallery's."""
    check_keeping(model)
    started = time.perf_counter()
    table = CarryTable(model.gallery.table)
    size = batch_size or model.settings.max_batch_size
    family = model.gallery.contract.name
    report = Carried()
    after, until = ids or (0, None)
    counted = Counted(table, progress)

    def read(after: int) -> tuple[list, list, list, list]:
        """The next batch, unsealed and decoded: rows, those ready, their inputs, and those
        refused with the reason."""
        rows = table.pending(after, size, until)
        ready, inputs, refused = [], [], []
        for row in rows:
            try:
                data = model.sealer.open(family, row.identity, row.kind, row.payload)
                inputs.append(kept_input(row.kind, data, model.pre, model.faces,
                                         model.settings))
                ready.append(row)
            except (Uncarried, ValueError) as exc:
                refused.append((row, str(exc)))
        return rows, ready, inputs, refused

    def write(ready: list, vectors: np.ndarray, refused: list) -> int:
        """One batch's transaction; returns the entries it settled (added or refused)."""
        added = table.add(ready, vectors, refused)
        report.added += added
        return added + len(refused)

    # Three stages on three threads, so that the model runs back to back: the next batch is
    # read and decoded while the model embeds this one, and the last one is written
    # meanwhile (ONNX Runtime, PIL's decoding and SQLite release the GIL). The next batch's
    # ids are past those being written, so writing changes nothing there; a person deleted
    # meanwhile is never written (CarryTable.add). One batch is written at a time, in
    # order, each its own transaction.
    with ThreadPoolExecutor(1, thread_name_prefix="zoo-carry-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="zoo-carry-write") as writer:
        upcoming, written = reader.submit(read, after), None
        while True:
            rows, ready, inputs, refused = upcoming.result()
            if not rows:
                break
            upcoming = reader.submit(read, rows[-1].id)
            vectors = (model.run_batched(np.stack(inputs))["embedding"] if inputs
                       else np.zeros((0, model.embedding_dim), np.float32))
            if written is not None:
                counted.step(written.result())
            written = writer.submit(write, ready, vectors, refused)
        if written is not None:
            counted.step(written.result())
    return tally(model, report, started)


class Counted:
    """``progress(done, total)`` after each batch, counted from the gallery every few
    seconds only: two counts of every kept row after each batch of 64 cost more than the
    batch at 100k entries (bench/gallery_migration.py); in between, this carrier's own."""

    EVERY_S = 2.0

    def __init__(self, table: CarryTable, progress: Callable[[int, int], None] | None) -> None:
        self.table, self.progress = table, progress
        self.counted_at, self.done, self.total = -float("inf"), 0, 0

    def step(self, carried: int) -> None:
        if self.progress is None:
            return
        if time.perf_counter() - self.counted_at >= self.EVERY_S:
            self.total, self.done = self.table.count()
            self.counted_at = time.perf_counter()
        else:
            self.done = min(self.total, self.done + carried)
        self.progress(self.done, self.total)


def tally(model, report: Carried, started: float) -> Carried:
    """``report`` completed from the gallery as it stands: kept and done, what could not
    be carried and why, and the seconds since ``started`` (``time.perf_counter``). The
    model's index is not built here (at 100k entries a trained IVF index: 12 s and a
    gigabyte): a server builds it before switching (``Lifecycle``), and the command that
    only carries never searches."""
    table = CarryTable(model.gallery.table)
    report.kept, report.done = table.count()
    report.uncarried = table.uncarried()
    report.nothing_kept = sorted({name for key, _, _ in table.galleries()
                                  if key != model.gallery.contract.key
                                  for name in table.nothing_kept(key)})
    report.seconds = time.perf_counter() - started
    return report


def gate(model, source_key: str | None = None) -> tuple[Verdict, str | None]:
    """The gate between the version whose gallery is ``source_key`` (default: the family's
    newest other gallery holding kept entries) and ``model``'s; returns the verdict and the
    source's key (None when there is none)."""
    table = CarryTable(model.gallery.table)
    mine = model.gallery.contract.key
    others = [(key, threshold) for key, _, threshold in table.galleries() if key != mine]
    if source_key is not None and source_key not in {k for k, _ in others}:
        raise LookupError(f"no gallery {source_key} of {model.gallery.contract.name}; "
                          f"it has {', '.join(k for k, _ in others) or 'no other'}")
    old, key = None, None
    for key, threshold in reversed(others):  # newest first; each read once, at most
        if source_key in (None, key):
            entries = table.kept_entries(key)
            if source_key is not None or len(entries[0]):
                old = (*entries, threshold)
                break
    new = (*table.kept_entries(mine), model.gallery.threshold)
    return compare(old, new), key if old is not None else None
