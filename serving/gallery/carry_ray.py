"""Carrying on a Ray cluster, when one machine is not enough (``python -m serving.migrate
--ray-address``): the kept entries a version's gallery still lacks are cut into parts of
about equal size (``CarryTable.split``), and each part is one Ray task that opens the version
itself and carries its part (``carry(model, ids=part)``) into the one gallery database.

As exact as a plain carry: the parts do not overlap, and ``CarryTable.add`` skips what another
carrier embedded meanwhile, so a task Ray runs again, or a second migration at once, adds
nothing twice; interrupted, the next run cuts what is still missing. An entry enrolled while
it runs falls in the last part, which has no upper bound.

Every node needs what the command needs on one machine: this project installed (the same
``pip install -e .``), the MLflow store (a tracking server, or the SQLite store on a disk
every node mounts at the same path) and the gallery database (PostgreSQL at
``ZOO_GALLERY_URI``, or ``ZOO_GALLERY_DIR`` on such a shared disk). The settings read where
the command runs travel to the tasks as their argument, with the gallery's key in them
(``ZOO_GALLERY_KEY``, or the ``gallery.key`` beside the gallery, read there), so every task
seals and opens with the key the database was sealed with. Ray's connections are not
encrypted unless the cluster runs with TLS (``RAY_USE_TLS``): carry people's data on a
cluster whose network you trust.

Ray is imported only here, when a carry runs on it (it takes a second or more).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from serving.gallery.carry import Carried, carry, check_keeping, tally
from serving.gallery.kept import KEY_FILE
from serving.gallery.table import CarryTable
from serving.settings import ServeSettings

log = logging.getLogger(__name__)

#: Seconds between two progress reports while the parts run.
POLL_S = 1.0
#: A part whose worker died is run again: it carries only what its first try left.
RETRIES = 2


@dataclass(frozen=True)
class FromBundle:
    """How a task opens the version by default: its bundle fetched from the MLflow store
    at ``tracking_uri`` (once per node, into the node's bundle cache), served with
    ``settings``."""

    model_uri: str
    settings: ServeSettings
    tracking_uri: str

    def __call__(self) -> Any:
        from mlflow_source.fetch import fetch_bundle
        from serving.model.served import ServedModel

        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return ServedModel(fetch_bundle(self.model_uri, self.settings.cache_path()),
                           self.settings)


def carry_part(factory: Callable[[], Any], ids: tuple[int, int | None]) -> Carried:
    """One Ray task: the version opened by ``factory()``, the kept entries with ids in
    ``ids`` carried into its gallery, the version closed."""
    model = factory()
    try:
        return carry(model, ids=ids)
    finally:
        close = getattr(model, "close", None) or model.gallery.close
        close()


def parts_of(bounds: list[int]) -> list[tuple[int, int | None]]:
    """``CarryTable.split``'s last ids as ``(after, until]`` parts, the last one open: what
    is enrolled while they run is carried too."""
    return list(zip([0, *bounds[:-1]], [*bounds[:-1], None]))


def _key(model: Any, settings: ServeSettings) -> str:
    """The gallery's key as the tasks need it: ``ZOO_GALLERY_KEY``, or the key file the
    version opened here read (a node without that file would make a key of its own)."""
    return settings.gallery_key or (model.gallery.folder / KEY_FILE).read_text().strip()


def carry_on_ray(model_uri: str, settings: ServeSettings, address: str,
                 parts: int | None = None,
                 progress: Callable[[int, int], None] | None = None, *,
                 model: Any = None, factory: Callable[[], Any] | None = None) -> Carried:
    """Carry every kept entry of ``model_uri``'s family into its gallery with Ray tasks.

    ``address``: the Ray cluster, as ``ray.init`` takes it: ``auto`` (the one running on this
    machine, or at ``RAY_ADDRESS``), ``ray://host:10001`` (a Ray client server), ``host:6379``,
    or ``local`` (start one on this machine for the run); a process connected to Ray already
    keeps its connection. ``parts``: how many tasks (default: the cluster's CPUs).
    ``progress(done, total)`` about every second. ``model``: the version opened here (the
    gallery split and tallied; default: opened from the bundle, closed at the end);
    ``factory``: a picklable callable by which each task opens it (default: ``FromBundle``).
    The report sums the parts' ``added``; the rest is read from the gallery at the end.
    """
    started = time.perf_counter()
    tracking = ""
    if factory is None or model is None:
        from mlflow_source.store import tracking_uri

        tracking = tracking_uri()
    opened_here = model is None
    if opened_here:
        model = FromBundle(model_uri, settings, tracking)()
    try:
        check_keeping(model)
        table = CarryTable(model.gallery.table)
        report = Carried()
        if not table.pending(0, 1):
            log.info("%s holds every kept entry already: nothing to carry", model.gallery.where)
            return tally(model, report, started)
        files = [model.gallery.where] if model.gallery.single else []
        if factory is None and tracking.startswith("sqlite"):
            files.append(tracking)

        def make(cpus: int) -> Callable[[], Any]:
            return factory or FromBundle(model_uri, replace(
                settings, gallery_key=_key(model, settings), threads=settings.threads or cpus),
                tracking)

        report.added = _run_parts(table, address, parts, progress, make, files)
        return tally(model, report, started)
    finally:
        if opened_here:
            model.close()


def _reason(exc: BaseException) -> str:
    """A task's failure in one line: the exception raised in it, or Ray's own."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _run_parts(table: CarryTable, address: str, parts: int | None,
               progress: Callable[[int, int], None] | None,
               make: Callable[[int], Callable[[], Any]], files: list[str]) -> int:
    """The parts as Ray tasks, waited for; returns the entries they added. ``make(cpus)``:
    the factory the tasks open the version with, given the CPUs each has; ``files``: the
    SQLite databases every node must reach at the same path."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, gRPC's...: all one
            raise RuntimeError(f"cannot reach Ray at {address!r}: {_reason(exc)} (auto, "
                               "ray://head:10001, head:6379 or local)") from None
    else:
        log.info("connected to Ray already: %s is not used", address)
    try:
        total = int(ray.cluster_resources().get("CPU", 1))
        nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
        if len(nodes) > 1 and files:
            log.warning("every node of the Ray cluster must reach %s at the same path (a shared "
                        "disk), or its tasks fail", " and ".join(files))
        cut = parts_of(table.split(parts or max(1, total)))
        cpus = max(1, min(max(nodes, default=1), total // len(cut)))
        factory = make(cpus)
        log.info("carrying into %s on Ray (%d CPUs): %d parts of %d CPU(s) each",
                 table.table.where, total, len(cut), cpus)
        task = ray.remote(num_cpus=cpus, max_retries=RETRIES)(carry_part)
        running = {task.remote(factory, ids): ids for ids in cut}
        added = 0
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    after, until = running.pop(ref)
                    try:
                        part = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise RuntimeError(
                            f"carrying the kept ids after {after}"
                            f"{'' if until is None else f' up to {until}'} failed: "
                            f"{_reason(exc)} (what the other parts carried stays: run it "
                            "again to continue)") from None
                    log.info("kept ids (%d, %s]: %d entries in %.1f s", after, until,
                             part.added, part.seconds)
                    added += part.added
                if progress is not None:
                    progress(*table.count()[::-1])
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
        return added
    finally:
        if started_here:
            ray.shutdown()
