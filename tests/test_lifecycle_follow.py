"""A worker's lifecycle (serving/lifecycle/): what it does with a version that passes, one the
gate refuses, one that fails to load and one not exported yet; a replaced version closed
only after its last request; and which version a starting worker answers with. Versions here
are stand-ins (no model is run); the served path is tested end to end in test_serving.py."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.gallery.carry import Carried
from serving.gallery.gate import Figures, Verdict
from serving.lifecycle import follow
from serving.lifecycle import state as shared
from serving.lifecycle.answering import Answering
from serving.lifecycle.follow import Lifecycle, starting_uri
from serving.lifecycle.migration import Outcome
from serving.settings import ServeSettings

ALIAS = "models:/zoo-rows@champion"


class Version:
    """What ``Answering`` reads of a served model, and whether it was closed."""

    def __init__(self, version: str) -> None:
        self.info = SimpleNamespace(name="zoo-rows", version=version, run_id="r" * 32,
                                    uri=f"models:/zoo-rows/{version}")
        self.pre = SimpleNamespace(kind="tabular", feature_names=["a"])
        self.faces, self.sealer, self.closed, self.indexed = None, None, False, False
        self.gallery = SimpleNamespace(refresh=lambda: setattr(self, "indexed", True))

    def close(self) -> None:
        self.closed = True


def answering(version: str, settings: ServeSettings) -> Answering:
    made = Answering(Version(version), settings)  # type: ignore[arg-type]
    made.warm = lambda: None  # type: ignore[method-assign]
    return made


def verdict(passed: bool) -> Verdict:
    figures = Figures(5, 10, 1.0 if passed else 0.5, 0.0, 0.4)
    return Verdict(passed, True, "better" if passed else "worse", figures, figures)


@pytest.fixture
def settings(tmp_path: Path) -> ServeSettings:
    return ServeSettings(model_uri=ALIAS, gallery_dir=str(tmp_path / "gallery"),
                         follow_alias=True)


@pytest.fixture
def worker(settings: ServeSettings, monkeypatch):
    """A lifecycle on a service answering with v1, whose migrations load stand-ins and whose
    gate says ``worker.passes``."""
    service = SimpleNamespace(current=answering("1", settings))
    loaded: list[Answering] = []
    monkeypatch.setattr(Lifecycle, "_load", lambda self, bundle: loaded.append(
        answering(bundle.info.version, settings)) or loaded[-1])
    outcome = SimpleNamespace(passes=True, published=[])

    def carry_and_gate(model, progress=None, stage=None) -> Outcome:
        outcome.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for name in ("carrying", "gating"):  # each stage is published as it begins
            stage(name)
            outcome.published.append(shared.read(Path(settings.gallery_dir)).migration["stage"])
        return Outcome(Carried(added=3, done=3, kept=3), verdict(outcome.passes), "v1", None)
    monkeypatch.setattr(follow, "carry_and_gate", carry_and_gate)

    def fetch(uri: str) -> SimpleNamespace:
        if uri.endswith("/9"):
            raise LookupError("zoo-rows v9 is registered but not exported")
        if uri.endswith("/8"):
            raise RuntimeError("the ONNX file is damaged")
        return SimpleNamespace(info=SimpleNamespace(version=uri.rsplit("/", 1)[1]))

    lifecycle = Lifecycle(service, settings, fetch)  # type: ignore[arg-type]
    yield SimpleNamespace(lifecycle=lifecycle, service=service, loaded=loaded, outcome=outcome,
                          folder=Path(settings.gallery_dir))
    lifecycle.close()


def test_a_version_that_passes_answers_and_the_old_one_closes_after_its_last_request(
        worker) -> None:
    old = worker.service.current.enter()  # a request in flight on v1
    worker.lifecycle._migrate("models:/zoo-rows/2", ALIAS, force=False)
    assert worker.service.current.version == "2"
    assert not old.model.closed  # its request still runs on it
    old.leave()
    assert old.model.closed and old.closed.is_set()
    state = shared.read(worker.folder)
    assert state.serving == "models:/zoo-rows/2" and state.migration["stage"] == "switched"
    assert state.migration["gate"]["passed"] and state.configured == ALIAS
    assert worker.outcome.published == ["carrying", "gating"]
    # carried on a thread nicer than the requests' (ZOO_MIGRATION_NICE), this one unchanged
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert worker.outcome.nice == min(19, mine + 10)
    assert worker.service.current.model.indexed  # its index built before it answered


def test_a_version_the_gate_refuses_stays_unserved_and_is_not_tried_again(worker, caplog,
                                                                          monkeypatch) -> None:
    worker.outcome.passes = False
    with caplog.at_level(logging.WARNING, logger="serving"):
        worker.lifecycle._migrate("models:/zoo-rows/2", ALIAS, force=False)
    assert worker.service.current.version == "1" and worker.loaded[0].model.closed
    state = shared.read(worker.folder)
    assert state.serving == "models:/zoo-rows/1" and state.migration["stage"] == "refused"
    assert "the gate: worse" in state.refused["models:/zoo-rows/2"]
    assert "models:/zoo-rows/2 stays unserved: the gate refused it: worse" in caplog.text
    # the alias still names v2: the follower leaves it be
    monkeypatch.setattr("mlflow_source.store.use_store", lambda: None)
    monkeypatch.setattr("mlflow_source.uris.resolve_model",
                        lambda uri: SimpleNamespace(load_uri="models:/zoo-rows/2"))
    worker.lifecycle._check_alias()
    assert len(worker.loaded) == 1
    # forced, it answers
    worker.lifecycle._migrate("models:/zoo-rows/2", ALIAS, force=True)
    assert worker.service.current.version == "2"
    assert "models:/zoo-rows/2" not in shared.read(worker.folder).refused


def test_a_version_that_fails_to_load_or_is_not_exported_leaves_the_old_one_answering(
        worker, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="serving"):
        worker.lifecycle._migrate("models:/zoo-rows/9", ALIAS, force=False, waits=True)
        worker.lifecycle._migrate("models:/zoo-rows/9", ALIAS, force=False, waits=True)
    assert caplog.text.count("waiting for models:/zoo-rows/9") == 1  # one line, not one a try
    state = shared.read(worker.folder)
    assert state.migration["stage"] == "waiting" and not state.refused
    worker.lifecycle._migrate("models:/zoo-rows/8", ALIAS, force=False)
    state = shared.read(worker.folder)
    assert state.migration["stage"] == "failed" and "damaged" in state.migration["error"]
    assert "damaged" in state.refused["models:/zoo-rows/8"]
    assert worker.service.current.version == "1"


def test_every_worker_switches_to_the_version_the_state_names(worker, settings) -> None:
    """Another worker's migration passed: this one sees the state change and follows it."""
    other = SimpleNamespace(current=answering("1", settings))
    second = Lifecycle(other, settings, worker.lifecycle.fetch)  # type: ignore[arg-type]
    try:
        worker.lifecycle._migrate("models:/zoo-rows/2", ALIAS, force=False)
        deadline = time.monotonic() + 10
        while other.current.version != "2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert other.current.version == "2"
    finally:
        second.close()


def test_a_migration_running_elsewhere_is_not_started_twice(worker) -> None:
    with shared.migrating(worker.folder):
        assert shared.migration_running(worker.folder)
        worker.lifecycle._migrate("models:/zoo-rows/2", ALIAS, force=False, waits=True)
        assert not worker.loaded and worker.service.current.version == "1"
        status = worker.lifecycle.status()
        assert status["running"] and status["answering"]["version"] == "1"
    assert not shared.migration_running(worker.folder)


def test_a_starting_worker_answers_with_the_version_the_deployment_moved_to(
        settings, tmp_path: Path) -> None:
    folder = Path(settings.gallery_dir)
    shared.update(folder, lambda s: (setattr(s, "configured", ALIAS),
                                     setattr(s, "serving", "models:/zoo-rows/2"),
                                     setattr(s, "server", -1)))
    assert starting_uri(settings, "zoo-rows", "models:/zoo-rows/3") == "models:/zoo-rows/2"
    assert starting_uri(settings, "zoo-rows", "models:/zoo-rows/2") is None
    # not following: a new server answers with ZOO_MODEL_URI; a restarted worker of the
    # same server (the same parent) with what the server answers with
    fixed = ServeSettings(model_uri=ALIAS, gallery_dir=settings.gallery_dir)
    assert starting_uri(fixed, "zoo-rows", "models:/zoo-rows/3") is None
    shared.update(folder, lambda s: setattr(s, "server", os.getppid()))
    assert starting_uri(fixed, "zoo-rows", "models:/zoo-rows/3") == "models:/zoo-rows/2"
    # another ZOO_MODEL_URI: another deployment's state
    other = ServeSettings(model_uri="models:/zoo-rows/3", gallery_dir=settings.gallery_dir)
    assert starting_uri(other, "zoo-rows", "models:/zoo-rows/3") is None


def test_following_needs_an_alias() -> None:
    with pytest.raises(ValueError, match="ZOO_FOLLOW_ALIAS=true follows an alias"):
        ServeSettings.from_env({"ZOO_FOLLOW_ALIAS": "true", "ZOO_MODEL_URI": "models:/x/3"})
    with pytest.raises(ValueError, match="ZOO_FOLLOW_EVERY_S"):
        ServeSettings.from_env({"ZOO_FOLLOW_EVERY_S": "0"})


def test_work_runs_nicer_on_a_thread_of_its_own_and_its_failure_comes_back() -> None:
    from serving.lifecycle.priority import run_nicer

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = niceness()
    assert run_nicer(5, niceness) == min(19, mine + 5)
    assert run_nicer(0, niceness) == mine and niceness() == mine
    with pytest.raises(ZeroDivisionError):
        run_nicer(3, lambda: 1 / 0)
