"""Each worker's part in the life of a deployment: answer with the version the shared state
names, and take a new one without dropping a request or a person.

A thread per worker reads the shared state (``state.py``) twice a second; when it names
another version, the worker loads and warms it beside the one answering, then switches
between requests (``answering.py``). A new version gets there by a migration, which one worker
runs while every worker keeps answering with the old version:

1. asked by ``POST /gallery/migrate`` (the admin), or, with ``ZOO_FOLLOW_ALIAS=true``, found
   by reading the alias every ``ZOO_FOLLOW_EVERY_S`` seconds (a version not exported yet is
   waited for, with one log line);
2. loaded and warmed; every entry the family's enrollments kept carried into its gallery, in
   batches at its batch size; the gate judges it on the enrolled people (``migration.py``);
3. passed (or forced): the state names it and every worker switches; entries enrolled with
   the old version meanwhile are carried once that version has answered its last request.
   Failed (to load, or the gate): it stays unserved, named in the state with the reason
   and a log line; the old version answers on. The alias following does not try it again
   until the alias moves; the admin can, by ``POST /gallery/migrate``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Protocol

from serving.errors import RequestError
from serving.gallery.carry import carry
from serving.lifecycle import state as shared
from serving.lifecycle.answering import Answering, pinned_uri
from serving.lifecycle.migration import WORKING_STAGES, Status, carry_and_gate
from serving.lifecycle.priority import run_nicer
from serving.model.served import ServedModel
from serving.settings import ServeSettings
from zoo.export.bundle import Bundle

log = logging.getLogger("serving")

POLL_S = 0.5  # how often a worker reads the shared state
PUBLISH_EVERY_S = 0.5  # how often a migration writes its progress there
DRAIN_S = 300.0  # the longest a replaced version waits for its last request (traffic timeout)


class Switchable(Protocol):
    """What the lifecycle asks of the worker's service: the version answering."""

    current: Answering


def starting_uri(settings: ServeSettings, family: str, pinned: str) -> str | None:
    """The version a starting worker answers with, where the shared state says another than
    ``ZOO_MODEL_URI`` does: when following the alias (the last version that passed, until
    the next migration), or when a worker of this same server restarts. None: the
    configured one."""
    state = shared.read(settings.gallery_path(family))
    if state.configured != settings.model_uri or state.serving in (None, pinned):
        return None
    if settings.follow_alias or state.server == os.getppid():
        return state.serving
    return None


class Lifecycle:
    """One worker's thread that follows the shared state, and the migrations it runs."""

    def __init__(self, service: Switchable, settings: ServeSettings,
                 fetch: Callable[[str], Bundle] | None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.service, self.settings, self.fetch, self.on_batch = (service, settings, fetch,
                                                                  on_batch)
        self.family = service.current.model.info.name
        self.folder = settings.gallery_path(self.family)
        self.following = settings.follow_alias and fetch is not None
        if settings.follow_alias and fetch is None:
            log.warning("ZOO_FOLLOW_ALIAS is ignored: a Bento answers with the model it holds")
        here = service.current.pinned_uri

        def begin(state: shared.State) -> None:
            if state.configured != settings.model_uri:  # another deployment's: start afresh
                state.refused, state.migration = {}, None
            elif self.following or state.server == os.getppid():
                state.serving = state.serving or here
                return
            state.configured, state.serving, state.server = settings.model_uri, here, os.getppid()

        shared.update(self.folder, begin)
        self._seen = shared.stamp(self.folder)
        self._waiting: set[str] = set()  # versions whose export is awaited (logged once)
        # one switch at a time: the state's reader and a migration's end never cross
        self._switching = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-lifecycle", daemon=True)
        self._thread.start()

    # --- the worker's thread ---------------------------------------------------------

    def _run(self) -> None:
        next_check = time.monotonic()
        while not self._stop.wait(POLL_S):
            try:
                self._follow_state()
                if self.following and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.settings.follow_every_s
                    self._check_alias()
            except Exception:  # the thread outlives any one failure
                log.exception("lifecycle: an error while following the deployment's state")

    def _follow_state(self) -> None:
        """Load and switch to the version the shared state names, when it is not ours."""
        stamp = shared.stamp(self.folder)
        if stamp == self._seen:
            return
        with self._switching:
            self._seen = stamp
            serving = shared.read(self.folder).serving
            if serving is None or serving == self.service.current.pinned_uri:
                return
            if self.fetch is None:
                log.error("the deployment now answers with %s, but a Bento holds only its "
                          "own model: this worker answers on with %s", serving,
                          self.service.current.pinned_uri)
                return
            answering = self._load(self.fetch(serving))
            old = self._swap(answering)
        self._drain(old, answering)

    def _check_alias(self) -> None:
        """Migrate to the version the alias names now, unless it answers, or was refused."""
        from mlflow_source.store import use_store
        from mlflow_source.uris import resolve_model

        use_store()
        target = resolve_model(self.settings.model_uri).load_uri
        state = shared.read(self.folder)
        if target in (self.service.current.pinned_uri, state.serving) or target in state.refused:
            return
        self._migrate(target, self.settings.model_uri, force=False, waits=True)

    def _load(self, bundle: Bundle) -> Answering:
        answering = Answering(ServedModel(bundle, self.settings, self.on_batch), self.settings)
        answering.warm()
        return answering

    def _swap(self, answering: Answering) -> Answering:
        """Answer with ``answering`` from the next request on; returns the old version,
        which answers those in flight."""
        old, self.service.current = self.service.current, answering
        log.warning("now answering with %s (was %s)", answering.pinned_uri, old.pinned_uri)
        old.retire()
        return old

    def _drain(self, old: Answering, answering: Answering) -> None:
        """What ``old`` enrolled while the migration ran, carried to ``answering`` once
        ``old`` has answered its last request."""
        if answering.model.sealer is not None:
            old.closed.wait(DRAIN_S)
            carried = carry(answering.model)
            if carried.added:
                log.info("carried %d entries enrolled during the switch", carried.added)

    # --- migrations ----------------------------------------------------------------

    def _migrate(self, target: str, asked: str, force: bool, waits: bool = False) -> None:
        """One migration to ``target`` (a pinned URI), as asked by ``asked``; ``waits``: a
        version not exported yet is waited for (the alias), not failed (the admin)."""
        status = Status(to=asked, force=force)
        answering: Answering | None = None
        try:
            with shared.migrating(self.folder):
                try:
                    bundle = self.fetch(target)  # type: ignore[misc]
                except LookupError as exc:
                    if not waits:
                        raise
                    if target not in self._waiting:
                        self._waiting.add(target)
                        log.warning("waiting for %s: %s", target, exc)
                    status.stage, status.error = "waiting", str(exc)
                    self._publish(status, target)
                    return
                self._waiting.discard(target)
                status.version = bundle.info.version
                log.warning("migrating the gallery to %s (asked: %s)", target, asked)
                self._publish(status, target)
                answering = self._load(bundle)

                def stage(name: str) -> None:
                    status.stage = name
                    self._publish(status, target)
                outcome = run_nicer(self.settings.migration_nice, carry_and_gate,
                                    answering.model, progress=self._progress(status, target),
                                    stage=stage)
                status.gate = outcome.verdict.to_dict()
                status.uncarried = (len(outcome.carried.uncarried)
                                    + len(outcome.carried.nothing_kept))
                status.finished_at = time.time()
                if outcome.verdict.passed or force:
                    # its index is built now, while the old version answers, not by the
                    # first request it would answer
                    answering.model.gallery.refresh()
                    status.stage = "switched"
                    with self._switching:
                        self._publish(status, target, serving=True)
                        old = self._swap(answering)
                    self._drain(old, answering)
                    return
                status.stage = "refused"
                log.warning("%s stays unserved: the gate refused it: %s", target,
                            outcome.verdict.reason)
                self._publish(status, target, refused=f"the gate: {outcome.verdict.reason}")
                answering.model.close()
        except shared.Busy:  # another worker migrates: its verdict reaches this one
            if not waits:
                log.warning("not migrating to %s: another migration of this gallery runs",
                            target)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the old version answering
            log.error("%s stays unserved: %s: %s", target, type(exc).__name__, exc)
            status.stage, status.error, status.finished_at = "failed", str(exc), time.time()
            self._publish(status, target, refused=f"failed: {exc}")
            if answering is not None:
                answering.model.close()

    def _progress(self, status: Status, target: str) -> Callable[[int, int], None]:
        since, first, last = time.time(), [-1], [0.0]

        def progress(done: int, total: int) -> None:
            if first[0] < 0:
                first[0] = done
            status.progress(done, total, since, first[0])
            if time.monotonic() - last[0] >= PUBLISH_EVERY_S or done == total:
                last[0] = time.monotonic()
                self._publish(status, target)
        return progress

    def _publish(self, status: Status, target: str, serving: bool = False,
                 refused: str | None = None) -> None:
        """The migration's status into the shared state; ``serving``: ``target`` answers
        from now on; ``refused``: it stays unserved, for this reason."""
        def change(state: shared.State) -> None:
            state.migration = status.to_dict()
            if serving:
                state.serving = target
                state.refused.pop(target, None)
            if refused is not None:
                state.refused[target] = refused[:2000]
        shared.update(self.folder, change)

    # --- what the HTTP routes ask ------------------------------------------------------

    def start(self, uri: str, force: bool = False) -> dict[str, Any]:
        """``POST /gallery/migrate``: check the request, then migrate in the background."""
        if self.fetch is None:
            raise RequestError("a Bento answers with the model it holds; migrate where the "
                               "MLflow store is (python -m serving.migrate), then build the "
                               "new version's Bento", 409)
        if self.following:
            raise RequestError(f"this server follows {self.settings.model_uri} "
                               "(ZOO_FOLLOW_ALIAS): move the alias to the version instead", 409)
        from mlflow_source.store import use_store
        from mlflow_source.uris import resolve_model

        use_store()
        try:
            source = resolve_model(uri)
        except LookupError as exc:
            raise RequestError(str(exc), 404) from None
        name = source.version.name if source.version is not None else None
        if name != self.family:
            raise RequestError(f"{uri} is not a version of {self.family}, whose people this "
                               "gallery holds: a migration carries them between versions of "
                               "one registered model")
        target = source.load_uri
        if target == self.service.current.pinned_uri:
            raise RequestError(f"{target} answers already", 409)
        if shared.migration_running(self.folder):
            raise RequestError("a migration of this gallery is running: see GET "
                               "/gallery/migration", 409)
        threading.Thread(target=self._migrate, args=(target, uri, force), daemon=True,
                         name="zoo-migration").start()
        return {"started": True, "to": uri, "version": str(source.version.version),
                "force": force}

    def status(self) -> dict[str, Any]:
        """``GET /gallery/migration``: the version answering, the latest migration (its
        stage, progress, ETA and gate figures) and the versions refused."""
        state = shared.read(self.folder)
        running = shared.migration_running(self.folder)
        migration = state.migration
        # a migration's worker died (resumable); one waiting for an export holds no lock
        if migration and migration.get("stage") in WORKING_STAGES and not running:
            migration = {**migration, "stage": "interrupted"}
        current = self.service.current
        return {"answering": {"uri": current.pinned_uri, "version": current.version},
                "serving": state.serving, "running": running, "migration": migration,
                "refused": state.refused,
                "follow": ({"alias": self.settings.model_uri,
                            "every_s": self.settings.follow_every_s}
                           if self.following else None)}

    def close(self) -> None:
        self._stop.set()


__all__ = ["Lifecycle", "starting_uri", "pinned_uri"]
