"""Promote the best training runs to the MLflow model registry.

One registered model per data set (``zoo-<dataset>``), one version per registered run. The
alias ``champion`` names the best version by the chosen metric and ``<loss>-best`` the best
of each loss, so ``models:/zoo-digits@champion`` and ``models:/zoo-digits@triplet-best``
are stable URIs for serving and export. An alias only moves to a version that strictly
beats the one it names (ties keep it) unless forced, so re-running registration on an old
or partial sweep never demotes a better model, and a run that already backs a version is
reused rather than registered again (registration is idempotent).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Run, RunStatus, ViewType
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode,
)
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS, MLFLOW_PARENT_RUN_ID

from training.tracking.ranking import broken_by, rank_key
from training.tracking.store import registry_lock
from zoo import names
from zoo.metrics import higher_is_better

log = logging.getLogger(__name__)

CHAMPION = "champion"
#: Rank by the validation figures of each run's kept epoch (``best_<monitor>``), so that the
#: test split stays an honest estimate of the winner; runs without a validation split are
#: ranked by the monitor's test counterpart, and everything that reports it says so.
DEFAULT_METRIC = "auto"
FALLBACK_METRIC = "test_map_at_r"
# Run metrics copied onto every version as tags, so the registry alone compares versions.
VERSION_METRIC_PREFIXES = ("test_", "open_")
# A metric is minimised when one of these is a word of its name (``test_ece``, ``train_loss``).
_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9A-Za-z]+)$")


def registered_name(dataset: str) -> str:
    """``zoo-<dataset>``, lowercase, every character outside ``[a-z0-9]`` turned into ``-``
    (``orl_faces`` → ``zoo-orl-faces``), so the name is valid in any registry and URI."""
    if not dataset:
        raise ValueError("cannot name a registered model for an empty data set name")
    return "zoo-" + re.sub(r"[^a-z0-9]", "-", dataset.lower())


def loss_alias(loss: str) -> str:
    """``<loss>-best``; MLflow aliases allow only letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^\w-]", "-", loss) + "-best"


def lower_is_better(metric: str) -> bool:
    """The opposite of ``zoo.metrics.higher_is_better`` (the one definition)."""
    return not higher_is_better(metric)


def metric_for(monitor: str, has_validation: bool) -> str:
    """The ranking metric ``auto`` stands for: ``best_<monitor>`` (the kept epoch's
    validation value) with a validation split, else the monitor's test counterpart."""
    if has_validation:
        return f"best_{monitor}" if monitor.startswith("val_") else "best_val_map_at_r"
    return f"test_{monitor[len('val_'):]}" if monitor.startswith("val_") else FALLBACK_METRIC


def uses_test(metric: str) -> bool:
    """Whether ranking by ``metric`` chooses on the test split (optimistic figures)."""
    return metric.startswith(("test_", "open_"))


def selection_note(metric: str) -> str:
    """One sentence on what ranking by ``metric`` means for the winner's test figures."""
    if uses_test(metric):
        return (f"chosen by {metric}, on the test split (these runs have no validation "
                "split): the winner's test figures are optimistic")
    return (f"chosen by {metric}, on the validation split: the test figures are an honest "
            "estimate")


def selection_metric(runs: list[Run]) -> str:
    """``auto`` for these runs: ``best_<monitor>`` where every finished run with a model has
    it (they all kept a validated epoch), else the monitor's test counterpart."""
    monitors = [r.data.tags.get(names.resolved_tag("monitor")) or r.data.params.get("monitor", "")
                for r in runs]
    monitor = max(set(monitors), key=monitors.count) if monitors else ""
    finished = [r for r in runs if r.info.status == RunStatus.to_string(RunStatus.FINISHED)
                and r.data.tags.get(names.MODEL_URI_TAG)]
    validated = metric_for(monitor, True)
    if finished and all(_metric(r, validated) is not None for r in finished):
        return validated
    return metric_for(monitor, False)


def beats(candidate: float, incumbent: float, metric: str) -> bool:
    """Strictly better in the metric's direction: a tie keeps the incumbent."""
    return candidate < incumbent if lower_is_better(metric) else candidate > incumbent


@dataclass(frozen=True)
class AliasOutcome:
    """Where one alias points after registration, and why."""

    alias: str
    version: str  # the version the alias names now
    value: float | None  # that version's value of the metric (None if it has none)
    moved: bool
    candidate_version: str  # the version of the best eligible run
    candidate_value: float
    candidate_run_name: str
    previous_version: str | None = None  # where the alias pointed before (None: it was new)
    previous_value: float | None = None
    forced: bool = False

    def describe(self, metric: str) -> str:
        """One line for the summary."""
        if self.moved:
            was = ("new" if self.previous_version is None else
                   f"was v{self.previous_version} at {_fmt(self.previous_value)}")
            how = ", forced" if self.forced else ""
            return (f"{self.alias} -> v{self.version} ({self.candidate_run_name}, {metric} = "
                    f"{_fmt(self.value)}; {was}{how})")
        if self.candidate_version == self.version:
            return (f"{self.alias} stays v{self.version} ({self.candidate_run_name}, {metric} = "
                    f"{_fmt(self.value)}; already the best)")
        return (f"{self.alias} stays v{self.version} ({metric} = {_fmt(self.value)}; best "
                f"candidate v{self.candidate_version} {self.candidate_run_name} at "
                f"{_fmt(self.candidate_value)} does not beat it)")


@dataclass
class RegistrationResult:
    """What ``register_best`` did: the champion, the per-loss aliases, the new versions."""

    name: str
    metric: str
    champion: AliasOutcome
    loss_aliases: dict[str, AliasOutcome] = field(default_factory=dict)  # loss → outcome
    new_versions: list[str] = field(default_factory=list)
    reused_versions: list[str] = field(default_factory=list)

    @property
    def champion_version(self) -> str:
        return self.champion.version

    @property
    def champion_moved(self) -> bool:
        return self.champion.moved

    @property
    def previous_champion_version(self) -> str | None:
        return self.champion.previous_version

    @property
    def previous_champion_value(self) -> float | None:
        return self.champion.previous_value

    def summary(self) -> str:
        """A few lines for people: what was registered and where each alias points."""
        new = ", ".join(f"v{v}" for v in self.new_versions) or "none"
        reused = ", ".join(f"v{v}" for v in self.reused_versions) or "none"
        lines = [
            f"registered model {self.name} (by {self.metric}, "
            f"{'lower' if lower_is_better(self.metric) else 'higher'} is better; "
            f"{selection_note(self.metric)})",
            f"  new versions: {new}; reused: {reused}",
            f"  {self.champion.describe(self.metric)}",
        ]
        lines += [f"  {self.loss_aliases[loss].describe(self.metric)}"
                  for loss in sorted(self.loss_aliases)]
        lines.append(f'  load: mlflow.pytorch.load_model("models:/{self.name}@{CHAMPION}")')
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- which runs -------------------------------------------------------------------------

def _search_all(client: mlflow.MlflowClient, experiment_ids: list[str],
                filter_string: str = "") -> list[Run]:
    """Every active run matching the filter, following page tokens (stores cap a page)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def runs_of_experiment(experiment_name: str, client: mlflow.MlflowClient | None = None
                       ) -> list[Run]:
    """``experiment_runs`` without the line that says where they were found."""
    return experiment_runs(experiment_name, client)[0]


def names_dataset(name: str, dataset: str) -> bool:
    """Whether ``name`` is the data set's experiment (``zoo-<dataset>``, as training names
    it) or registered model (``registered_name``)."""
    return bool(dataset) and name in (f"zoo-{dataset}", registered_name(dataset))


def experiment_runs(name: str, client: mlflow.MlflowClient | None = None
                    ) -> tuple[list[Run], str]:
    """The active runs of experiment ``name`` (sweep parents and children included) and,
    where ``name`` is a data set's (``zoo-digits``), that data set's runs in every other
    experiment, with a line that says where they were found. ``mlflow run`` makes its run
    before the entry point starts, in the experiment it is given: ``Default`` without
    ``--experiment-name``, so a data set's runs are found by their ``zoo.dataset`` tag too.
    No run anywhere is an error that says so."""
    client = client or mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    own = _search_all(client, [experiment.experiment_id]) if experiment is not None else []
    others = [i for i in _experiment_ids(client)
              if experiment is None or i != experiment.experiment_id]
    elsewhere = []
    if name.startswith("zoo-") and others:
        tagged = _search_all(client, others, f"tags.`{names.DATASET_TAG}` LIKE '%'")
        elsewhere = [r for r in tagged if names_dataset(name, r.data.tags[names.DATASET_TAG])]
    if not own and not elsewhere:
        where = (f"experiment {name!r} not found" if experiment is None
                 else f"experiment {name!r} has no runs")
        also = (f", and no run of another experiment is of the data set {name[4:]!r}"
                if name.startswith("zoo-") else "")
        raise ValueError(f"{where} in {mlflow.get_tracking_uri()}{also}")
    found = [f"{len(own)} run(s) in experiment {name!r}"] if own else []
    by_experiment: dict[str, int] = {}
    for run in elsewhere:
        by_experiment[run.info.experiment_id] = by_experiment.get(run.info.experiment_id, 0) + 1
    for experiment_id, count in sorted(by_experiment.items()):
        datasets = sorted({r.data.tags[names.DATASET_TAG] for r in elsewhere
                           if r.info.experiment_id == experiment_id})
        found.append(f"{count} run(s) of data set {', '.join(datasets)} in experiment "
                     f"{client.get_experiment(experiment_id).name!r}")
    return own + elsewhere, "; ".join(found)


def runs_of_sweep(parent_run_id: str, client: mlflow.MlflowClient | None = None) -> list[Run]:
    """The children of a sweep's parent run (``mlflow.parentRunId`` = the parent).

    Children normally share the parent's experiment; if none are found there, all
    experiments are searched, since a child may have been started under another one.
    """
    client = client or mlflow.MlflowClient()
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as exc:
        raise ValueError(f"sweep run {parent_run_id!r} not found: {exc.message}") from None
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    children = _search_all(client, [parent.info.experiment_id], query)
    if not children:
        children = _search_all(client, _experiment_ids(client), query)
    if not children:
        raise ValueError(f"run {parent_run_id} has no child runs; is it a sweep's parent run?")
    return children


def _metric(run: Run, metric: str) -> float | None:
    value = run.data.metrics.get(metric)
    return value if value is not None and math.isfinite(value) else None


def eligible_runs(runs: list[Run], metric: str) -> list[Run]:
    """FINISHED runs with a logged model and a finite value of ``metric``; an error that
    says why each other run was left out when none is left."""
    why: dict[str, int] = {}
    kept: list[Run] = []
    for run in runs:
        if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
            reason = f"{run.info.status.lower()}"
        elif not run.data.tags.get(names.MODEL_URI_TAG):
            reason = f"without a logged model (tag {names.MODEL_URI_TAG})"
        elif not run.data.tags.get(names.DATASET_TAG):
            reason = f"without a {names.DATASET_TAG} tag"
        elif _metric(run, metric) is None:
            reason = f"without {metric}"
        else:
            kept.append(run)
            continue
        why[reason] = why.get(reason, 0) + 1
    if not kept:
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(why.items()))
        raise ValueError(f"no FINISHED run with a logged model has metric {metric} "
                         f"({len(runs)} run(s) given" + (f": {detail})" if detail else ")"))
    return kept


def best_run(runs: list[Run], metric: str) -> Run:
    """The best run by ``metric``; a tie is broken by a second validation figure, then by the
    loss (``training.tracking.ranking``), and only a full tie by the earliest start (stable
    re-runs)."""
    order = sorted(runs, key=lambda r: (rank_key(r.data.metrics, metric),
                                        r.info.start_time or 0, r.info.run_id))
    if len(order) > 1:
        why = broken_by(order[0].data.metrics, order[1].data.metrics, metric)
        if why is not None:
            log.info("%s ties at %s; %s decided for %s", metric,
                     _fmt(_metric(order[0], metric)), why,
                     order[0].info.run_name or order[0].info.run_id)
    return order[0]


# --- registry ---------------------------------------------------------------------------

def _ensure_registered_model(client: mlflow.MlflowClient, name: str, dataset: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    description = (
        f"Metric-learning models trained on the {dataset} data set; one version per "
        f"registered training run. Alias '{CHAMPION}' names the best by the chosen metric, "
        "'<loss>-best' the best of each loss. Each version's tags hold its test metrics, "
        "model, loss and source run."
    )
    try:
        client.create_registered_model(name, tags={names.DATASET_TAG: dataset},
                                       description=description)
        log.info("created registered model %s", name)
    except MlflowException as exc:  # another process created it meanwhile
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _versions(client: mlflow.MlflowClient, name: str) -> list[ModelVersion]:
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _version_tags(run: Run, metric: str) -> dict[str, str]:
    tags = {k: str(v) for k, v in run.data.metrics.items()
            if k.startswith(VERSION_METRIC_PREFIXES)}
    tags[metric] = str(run.data.metrics[metric])
    for key in (names.MODEL_TAG, names.LOSS_TAG, names.DATASET_TAG):
        tags[key] = run.data.tags.get(key, "")
    tags.update({names.METRIC_TAG: metric, names.RUN_ID_TAG: run.info.run_id,
                 names.SELECTED_ON_TAG: "test" if uses_test(metric) else "validation"})
    tags.update({k: run.data.tags[k] for k in (names.INIT_TAG, names.PRETRAINED_SOURCE_TAG,
                                                names.PRETRAINED_SHA256_TAG,
                                                names.PRETRAINED_LICENCE_TAG)
                 if k in run.data.tags})
    return tags


def _version_description(run: Run, metric: str) -> str:
    tags = run.data.tags
    test = {k: run.data.metrics[k] for k in ("test_precision_at_1", "test_map_at_r")
            if k in run.data.metrics}
    started = (f" Started from {tags[names.INIT_TAG]} (run {tags.get(names.INIT_RUN_TAG, '?')})."
               if tags.get(names.INIT_TAG) else
               f" Started from pretrained weights {tags[names.PRETRAINED_SOURCE_TAG]} (sha256 "
               f"{tags.get(names.PRETRAINED_SHA256_TAG, '?')[:12]})."
               if tags.get(names.PRETRAINED_SOURCE_TAG) else "")
    if tags.get(names.PRETRAINED_LICENCE_TAG):
        started += f" Weights licence: {tags[names.PRETRAINED_LICENCE_TAG]}."
    return (f"{tags.get(names.MODEL_TAG, '?')} trained with {tags.get(names.LOSS_TAG, '?')} on "
            f"{tags.get(names.DATASET_TAG, '?')}: {metric} = {run.data.metrics[metric]:.4f} "
            f"(run {run.info.run_id}); {selection_note(metric)}"
            + (f" ({', '.join(f'{k} = {v:.4f}' for k, v in test.items())})" if test and
               not uses_test(metric) else "") + f".{started}")


def _link_logged_model(client: mlflow.MlflowClient, model_id: str, mv: ModelVersion) -> None:
    """Record the version on the logged model, as ``mlflow.register_model`` does, so the
    UI links the two. Best effort: the version is what matters."""
    try:
        model = client.get_logged_model(model_id)
        links = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        links.append({"name": mv.name, "version": mv.version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(links)})
    except Exception as exc:  # noqa: BLE001 - linking is cosmetic
        log.debug("could not link logged model %s to %s v%s: %s", model_id, mv.name,
                  mv.version, exc)


class _Versions:
    """The versions of one registered model by source run, creating them on demand."""

    def __init__(self, client: mlflow.MlflowClient, name: str, metric: str) -> None:
        self.client, self.name, self.metric = client, name, metric
        # Stores disagree on the type of ``version`` (SQL: int, REST: str); str throughout.
        self.by_run: dict[tuple[str, str], ModelVersion] = {}
        for mv in sorted(_versions(client, name), key=lambda v: int(v.version), reverse=True):
            self.by_run[(mv.run_id or "", mv.source)] = mv  # the oldest wins
        self.created: list[str] = []
        self.reused: list[str] = []

    def of(self, run: Run) -> ModelVersion:
        """The version whose source is this run's model, registering it if there is none."""
        uri = run.data.tags[names.MODEL_URI_TAG]
        key = (run.info.run_id, uri)
        if key in self.by_run:
            mv = self.by_run[key]
            version = str(mv.version)
            if version not in self.reused and version not in self.created:
                self.reused.append(version)
                log.info("run %s is already %s v%s", run.info.run_id, self.name, version)
            return mv
        match = _LOGGED_MODEL_URI.match(uri)
        mv = self.client.create_model_version(
            self.name, source=uri, run_id=run.info.run_id, tags=_version_tags(run, self.metric),
            description=_version_description(run, self.metric),
            model_id=match.group(1) if match else None,
        )
        if match:
            _link_logged_model(self.client, match.group(1), mv)
        log.info("registered run %s (%s) as %s v%s", run.info.run_id, run.info.run_name,
                 self.name, mv.version)
        self.by_run[key] = mv
        self.created.append(str(mv.version))
        return mv


def _version_value(client: mlflow.MlflowClient, mv: ModelVersion, metric: str) -> float | None:
    """The version's value of ``metric``: its tag, else its source run's metric."""
    text = (mv.tags or {}).get(metric)
    if text is not None:
        try:
            value = float(text)
            return value if math.isfinite(value) else None
        except ValueError:
            log.warning("%s v%s: tag %s=%r is not a number", mv.name, mv.version, metric, text)
    if mv.run_id:
        try:
            return _metric(client.get_run(mv.run_id), metric)
        except MlflowException as exc:
            log.warning("%s v%s: source run %s unreadable: %s", mv.name, mv.version, mv.run_id,
                        exc.message)
    return None


def _place_alias(client: mlflow.MlflowClient, name: str, alias: str, current: str | None,
                 candidate: ModelVersion, run: Run, metric: str, force: bool) -> AliasOutcome:
    """Point ``alias`` at ``candidate`` if it strictly beats the version it names now.

    An incumbent with no value of this metric (aliased by hand, or by another metric whose
    runs lack this one) cannot be compared: the measured candidate replaces it.
    """
    value = _metric(run, metric)
    version = str(candidate.version)
    outcome = dict(alias=alias, candidate_version=version, candidate_value=value,
                   candidate_run_name=run.info.run_name or run.info.run_id)
    if current == version:
        return AliasOutcome(version=current, value=value, moved=False, previous_version=current,
                            previous_value=value, **outcome)
    previous_value = None
    if current is not None:
        previous_value = _version_value(client, client.get_model_version(name, current), metric)
        if previous_value is None:
            log.warning("%s@%s (v%s) has no %s; moving it to v%s", name, alias, current, metric,
                        version)
        elif not force and not beats(value, previous_value, metric):
            return AliasOutcome(version=current, value=previous_value, moved=False,
                                previous_version=current, previous_value=previous_value,
                                **outcome)
    client.set_registered_model_alias(name, alias, version)
    log.info("%s@%s -> v%s (%s = %s, was %s)", name, alias, version, metric,
             _fmt(value), "none" if current is None else f"v{current} at {_fmt(previous_value)}")
    forced = (force and current is not None and previous_value is not None
              and not beats(value, previous_value, metric))
    return AliasOutcome(version=version, value=value, moved=True,
                        previous_version=current, previous_value=previous_value, forced=forced,
                        **outcome)


def register_best(runs: list[Run], metric: str = DEFAULT_METRIC, *, force: bool = False,
                  client: mlflow.MlflowClient | None = None) -> RegistrationResult:
    """Register the best run (and the best of each loss) of one data set; move the aliases.

    ``force`` moves ``champion`` and ``<loss>-best`` to this batch's best even when the
    current holder is better (to roll back, or after changing the metric's meaning).
    """
    client = client or mlflow.MlflowClient()
    if metric == DEFAULT_METRIC:
        metric = selection_metric(runs)
    candidates = eligible_runs(runs, metric)
    datasets = sorted({r.data.tags[names.DATASET_TAG] for r in candidates})
    if len(datasets) > 1:
        raise ValueError(f"runs of {len(datasets)} data sets ({', '.join(datasets)}): register "
                         "one data set at a time (one experiment or sweep per data set)")
    dataset = datasets[0]
    with registry_lock(client.tracking_uri):
        return _register_locked(client, candidates, dataset, metric, force)


def _register_locked(client: mlflow.MlflowClient, candidates: list[Run], dataset: str,
                     metric: str, force: bool) -> RegistrationResult:
    """``register_best`` while holding the registry lock: the aliases read here are the ones
    compared against, and no other registration moves them in between."""
    name = registered_name(dataset)
    _ensure_registered_model(client, name, dataset)
    versions = _Versions(client, name, metric)
    aliases = {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}

    best = best_run(candidates, metric)
    champion = _place_alias(client, name, CHAMPION, aliases.get(CHAMPION), versions.of(best),
                            best, metric, force)

    by_loss: dict[str, list[Run]] = {}
    for run in candidates:
        if loss := run.data.tags.get(names.LOSS_TAG):
            by_loss.setdefault(loss, []).append(run)
    loss_outcomes: dict[str, AliasOutcome] = {}
    for loss, loss_runs in sorted(by_loss.items()):
        top = best_run(loss_runs, metric)
        alias = loss_alias(loss)
        loss_outcomes[loss] = _place_alias(client, name, alias, aliases.get(alias),
                                           versions.of(top), top, metric, force)
    return RegistrationResult(name, metric, champion, loss_outcomes, versions.created,
                              versions.reused)
