"""One migration: every kept entry carried to the new version, then the gate, then the
verdict on the version in MLflow. ``python -m serving.migrate``, ``POST /gallery/migrate``
and a server following its alias all run this, and report through ``Status``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from serving.gallery.carry import Carried, carry, gate
from serving.gallery.gate import Verdict
from serving.lifecycle.answering import pinned_uri
from zoo import names

log = logging.getLogger(__name__)

#: a migration's stages, in order; the last three end it
STAGES = ("waiting", "loading", "carrying", "gating", "switched", "refused", "failed")
WORKING_STAGES = STAGES[1:4]  # those that hold the migration lock


@dataclass
class Status:
    """A migration's progress as the page and ``GET /gallery/migration`` show it."""

    to: str  # the URI asked for
    version: str | None = None  # the version it resolved to
    stage: str = "loading"
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    gate: dict[str, Any] | None = None
    uncarried: int = 0
    error: str | None = None
    force: bool = False

    def progress(self, done: int, total: int, since: float, done_at_start: int) -> None:
        """After a batch: entries done of all, and the time left at the rate so far."""
        self.done, self.total = done, total
        rate = (done - done_at_start) / max(time.time() - since, 1e-6)
        self.eta_s = round((total - done) / rate, 1) if rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outcome:
    """What a migration did: carried, the gate's verdict, against which gallery, and the
    version tagged with it (None for an unregistered model)."""

    carried: Carried
    verdict: Verdict
    source: str | None
    tagged: str | None


def carry_and_gate(model: Any, source_key: str | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   carrier: Callable[..., Carried] = carry,
                   stage: Callable[[str], None] | None = None) -> Outcome:
    """Carry the family's kept entries to ``model`` (a ``ServedModel``), gate it against
    ``source_key`` (default: the newest other gallery holding kept entries), and record the
    verdict: the log, and ``zoo.gate.*`` tags on the version. ``stage(name)`` is told when
    each of the two stages begins ("carrying", then "gating")."""
    from mlflow_source.tags import tag_version

    tell = stage or (lambda name: None)
    tell("carrying")
    carried = carrier(model, progress=progress)
    tell("gating")
    verdict, source = gate(model, source_key)
    log.info("gate of %s against %s: %s", model.info.uri, source or "no earlier gallery",
             json.dumps(verdict.to_dict()))
    tagged = tag_version(pinned_uri(model), {
        names.GATE_PASSED_TAG: str(verdict.passed).lower(),
        names.GATE_REASON_TAG: verdict.reason[:5000],
        names.GATE_FIGURES_TAG: json.dumps(verdict.to_dict())})
    return Outcome(carried, verdict, source, tagged)
