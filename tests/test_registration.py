"""Registering the best runs, against a real SQLite store with real (tiny) logged models."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow.entities import Run

from tests.conftest import REPO
from training.pipeline.register import RegisterConfig
from training.tracking.model_logging import log_trained_model
from training.tracking.registration import (
    experiment_runs, lower_is_better, loss_alias, register_best, registered_name,
    runs_of_experiment, runs_of_sweep, selection_metric,
)
from training.tracking.store import log_params_once
from zoo import names
from zoo.data import Preprocessing
from zoo.models import create_model

EXPERIMENT = "zoo-reg"
P1 = "test_precision_at_1"


def make_run(p1: float, *, loss: str = "arcface", model: str = "residual_mlp",
             dataset: str = "digits", experiment: str = EXPERIMENT, nested: bool = False,
             tags: dict[str, str] | None = None, log_model: bool = True) -> Run:
    """A FINISHED run shaped like training.pipeline.run's: zoo.* tags, test metrics, a logged
    model."""
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{model}-{loss}", nested=nested) as run:
        mlflow.set_tags({names.MODEL_TAG: model, names.LOSS_TAG: loss, names.DATASET_TAG: dataset,
                         **(tags or {})})
        metrics = {P1: p1, "test_map_at_r": p1 / 2, "test_ece": 0.1, "train_loss": 1.0}
        mlflow.log_metrics(metrics)
        if log_model:
            net = create_model("residual_mlp", 3, 8, num_features=4)
            pre = Preprocessing(kind="tabular", input_size=(4,), mean=[0] * 4, std=[1] * 4,
                                class_names=["a", "b", "c"])
            record = net.record.with_(preprocessing=pre, loss=loss, dataset=dataset,
                                      run_id=run.info.run_id)
            info = log_trained_model(net, torch.randn(2, 4), record, metrics)
            mlflow.set_tag(names.MODEL_URI_TAG, info.model_uri)
    return mlflow.MlflowClient().get_run(run.info.run_id)


def test_names_and_direction() -> None:
    assert registered_name("digits") == "zoo-digits"
    assert registered_name("ORL_faces v2") == "zoo-orl-faces-v2"
    assert loss_alias("subcenter_arcface") == "subcenter_arcface-best"
    assert loss_alias("a.b") == "a-b-best"
    assert lower_is_better("test_ece") and lower_is_better("train_loss")
    assert lower_is_better("test_expected_calibration_error")
    assert not lower_is_better(P1) and not lower_is_better("test_precision_at_1")


def test_register_config_parses_mlproject_strings() -> None:
    cfg = RegisterConfig.from_dict({"experiment": "e", "sweep": "auto", "metric": "",
                                    "force": "true"})
    assert (cfg.experiment, cfg.sweep, cfg.metric, cfg.force) == ("e", None, "auto", True)
    assert RegisterConfig.from_dict({"experiment": "e", "sweep": ""}).sweep is None
    with pytest.raises(ValueError, match="exactly one of --experiment"):
        RegisterConfig.from_dict({"experiment": "", "sweep": "auto"})
    with pytest.raises(ValueError, match="exactly one of --experiment"):
        RegisterConfig.from_dict({"experiment": "e", "sweep": "abc"})
    with pytest.raises(ValueError, match="force='maybe' is not a valid bool"):
        RegisterConfig.from_dict({"sweep": "abc", "force": "maybe"})


def test_auto_ranks_by_the_monitor_the_run_resolved(tracking_uri: str) -> None:
    """Registration reads the tag the run wrote for what ``monitor=auto`` became (the run's
    own parameter still says ``auto``, which would rank by the fallback)."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as active:
        mlflow.log_param("monitor", "auto")  # as ``mlflow run`` logs -P values
        log_params_once({"monitor": "val_nmi"})
    run = mlflow.MlflowClient().get_run(active.info.run_id)
    assert run.data.tags[names.resolved_tag("monitor")] == "val_nmi"
    assert selection_metric([run]) == "test_nmi"


def test_best_run_registered_with_tags_description_and_champion(tracking_uri: str) -> None:
    make_run(0.80)
    best = make_run(0.90, loss="triplet")
    make_run(0.70, loss="triplet", log_model=False)  # no model: never registered

    result = register_best(runs_of_experiment(EXPERIMENT), P1)

    client = mlflow.MlflowClient()
    assert result.name == "zoo-digits" and result.champion_version == "1"
    assert result.champion_moved and result.previous_champion_version is None
    mv = client.get_model_version_by_alias("zoo-digits", "champion")
    assert str(mv.version) == "1" and mv.run_id == best.info.run_id
    assert mv.source == best.data.tags[names.MODEL_URI_TAG]
    assert mv.tags[P1] == "0.9" and mv.tags["test_map_at_r"] == "0.45"
    assert mv.tags["test_ece"] == "0.1" and "train_loss" not in mv.tags
    assert mv.tags[names.MODEL_TAG] == "residual_mlp" and mv.tags[names.LOSS_TAG] == "triplet"
    assert mv.tags[names.DATASET_TAG] == "digits" and mv.tags[names.METRIC_TAG] == P1
    assert mv.tags[names.RUN_ID_TAG] == best.info.run_id
    assert "residual_mlp" in mv.description and "triplet" in mv.description
    assert "digits" in mv.description and "0.9000" in mv.description
    assert "digits" in client.get_registered_model("zoo-digits").description

    loaded = mlflow.pytorch.load_model("models:/zoo-digits@champion")
    assert loaded.record.class_names == ["a", "b", "c"]
    assert loaded(torch.randn(2, 4))["embedding"].shape == (2, 8)
    assert "champion -> v1" in result.summary()


def test_champion_moves_only_when_beaten_or_forced(tracking_uri: str) -> None:
    client = mlflow.MlflowClient()
    first = make_run(0.80)
    register_best([first], P1)

    worse = make_run(0.70)
    result = register_best([worse], P1)
    assert not result.champion_moved and result.champion_version == "1"
    assert result.new_versions == ["2"]  # registered, but not promoted
    assert "does not beat" in result.summary()

    tie = make_run(0.80)
    assert not register_best([tie], P1).champion_moved

    better = make_run(0.95)
    result = register_best([better], P1)
    assert result.champion_moved and result.previous_champion_version == "1"
    assert result.previous_champion_value == pytest.approx(0.80)
    assert client.get_model_version_by_alias("zoo-digits", "champion").run_id == better.info.run_id

    result = register_best([worse], P1, force=True)  # reuses v2, moves back to it
    assert result.champion_moved and result.champion.forced
    assert result.new_versions == [] and result.reused_versions == ["2"]
    assert client.get_model_version_by_alias("zoo-digits", "champion").run_id == worse.info.run_id


def test_lower_is_better_metric(tracking_uri: str) -> None:
    client = mlflow.MlflowClient()
    a, b = make_run(0.9), make_run(0.8)
    client.log_metric(a.info.run_id, "test_ece", 0.30)
    client.log_metric(b.info.run_id, "test_ece", 0.05)
    result = register_best(runs_of_experiment(EXPERIMENT), "test_ece")
    mv = client.get_model_version(result.name, result.champion_version)
    assert mv.run_id == b.info.run_id


def test_champion_value_read_from_run_when_tag_missing(tracking_uri: str) -> None:
    """A version registered by hand (no metric tags) is compared through its source run."""
    client = mlflow.MlflowClient()
    strong = make_run(0.95)
    client.create_registered_model("zoo-digits")
    mv = client.create_model_version("zoo-digits", strong.data.tags[names.MODEL_URI_TAG],
                                     run_id=strong.info.run_id)
    client.set_registered_model_alias("zoo-digits", "champion", mv.version)
    result = register_best([make_run(0.90)], P1)
    assert not result.champion_moved and result.previous_champion_value == pytest.approx(0.95)


def test_per_loss_aliases_and_idempotent_rerun(tracking_uri: str) -> None:
    client = mlflow.MlflowClient()
    runs = {
        "arc_low": make_run(0.70, loss="arcface"),
        "arc_top": make_run(0.85, loss="arcface"),
        "tri_top": make_run(0.90, loss="triplet"),
        "tri_low": make_run(0.60, loss="triplet"),
        "sub_top": make_run(0.50, loss="subcenter_arcface"),
    }
    result = register_best(runs_of_experiment(EXPERIMENT), P1)

    def run_at(alias: str) -> str:
        return client.get_model_version_by_alias("zoo-digits", alias).run_id

    assert run_at("champion") == runs["tri_top"].info.run_id
    assert run_at("triplet-best") == runs["tri_top"].info.run_id  # same version as champion
    assert run_at("arcface-best") == runs["arc_top"].info.run_id
    assert run_at("subcenter_arcface-best") == runs["sub_top"].info.run_id
    assert sorted(result.new_versions) == ["1", "2", "3"]
    assert set(result.loss_aliases) == {"arcface", "triplet", "subcenter_arcface"}
    assert all(o.moved for o in result.loss_aliases.values())
    loaded = mlflow.pytorch.load_model("models:/zoo-digits@triplet-best")
    assert loaded.record.loss == "triplet"

    again = register_best(runs_of_experiment(EXPERIMENT), P1)
    assert again.new_versions == [] and sorted(again.reused_versions) == ["1", "2", "3"]
    assert not again.champion_moved and not any(o.moved for o in again.loss_aliases.values())
    assert len(client.search_model_versions("name = 'zoo-digits'")) == 3
    assert again.champion_version == result.champion_version


def test_sweep_children(tracking_uri: str) -> None:
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="sweep") as parent:
        pid = parent.info.run_id
        kids = [make_run(v, nested=True, tags={names.SWEEP_TAG: pid}) for v in (0.5, 0.6)]
    make_run(0.99)  # outside the sweep
    children = runs_of_sweep(pid)
    assert {r.info.run_id for r in children} == {k.info.run_id for k in kids}
    result = register_best(children, P1)
    mv = mlflow.MlflowClient().get_model_version(result.name, result.champion_version)
    assert mv.run_id == kids[1].info.run_id
    with pytest.raises(ValueError, match="no child runs"):
        runs_of_sweep(kids[0].info.run_id)


def test_clear_errors(tracking_uri: str) -> None:
    no_model = make_run(0.9, log_model=False)
    with pytest.raises(ValueError, match=f"no FINISHED run with a logged model has metric {P1}"):
        register_best([no_model], P1)
    with pytest.raises(ValueError, match="has metric test_unknown.*1 without test_unknown"):
        register_best([make_run(0.9)], "test_unknown")
    with pytest.raises(ValueError, match=r"data sets \(digits, faces\)"):
        register_best([make_run(0.9), make_run(0.8, dataset="faces")], P1)
    with pytest.raises(ValueError, match="experiment 'nope' not found"):
        runs_of_experiment("nope")


def test_a_data_sets_runs_are_found_in_every_experiment(tracking_uri: str) -> None:
    """``mlflow run . -e arcface`` without ``--experiment-name`` leaves its run in Default:
    ``experiment=zoo-digits`` finds the digits runs there too, and says where."""
    default = make_run(0.8, experiment="Default")
    make_run(0.9, experiment="Default", dataset="faces")
    with pytest.raises(ValueError, match="experiment 'zoo-emitters' not found in .*, and no "
                                         "run of another experiment is of the data set "
                                         "'emitters'"):
        experiment_runs("zoo-emitters")
    runs, where = experiment_runs("zoo-digits")
    assert [r.info.run_id for r in runs] == [default.info.run_id]
    assert where == "1 run(s) of data set digits in experiment 'Default'"
    own = make_run(0.7, experiment="zoo-digits")
    runs, where = experiment_runs("zoo-digits")
    assert {r.info.run_id for r in runs} == {own.info.run_id, default.info.run_id}
    assert where == ("1 run(s) in experiment 'zoo-digits'; 1 run(s) of data set digits in "
                     "experiment 'Default'")
    assert {r.data.tags["zoo.dataset"] for r in runs_of_experiment("Default")} == {"digits",
                                                                                   "faces"}
    mlflow.MlflowClient().create_experiment("empty")
    with pytest.raises(ValueError, match="^experiment 'empty' has no runs in sqlite:///[^,]*$"):
        experiment_runs("empty")
    result = register_best(experiment_runs("zoo-digits")[0], P1)
    assert mlflow.MlflowClient().get_model_version(
        result.name, result.champion_version).run_id == default.info.run_id


def test_cli_end_to_end(tracking_uri: str) -> None:
    make_run(0.8, loss="arcface")
    make_run(0.9, loss="triplet")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "training.commands.register"]
    ok = subprocess.run(cmd + ["--experiment", EXPERIMENT, "--sweep", "", "--metric", P1,
                               "--force", "false"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "registered model zoo-digits" in ok.stdout and "champion -> v1" in ok.stdout
    assert "triplet-best" in ok.stdout and "arcface-best" in ok.stdout
    assert mlflow.MlflowClient().get_model_version_by_alias("zoo-digits", "champion")

    bad = subprocess.run(cmd + ["--experiment", "no-such-experiment"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "no-such-experiment" in errors[0]


def _register_slowly(uri: str, run_id: str, delay: float) -> str:
    """Another process's registration whose reading of the champion and moving of it are
    ``delay`` seconds apart: wide enough for a concurrent registration to interleave."""
    import time

    import training.tracking.registration as registration

    mlflow.set_tracking_uri(uri)
    place = registration._place_alias

    def slow_place(*args, **kwargs):
        time.sleep(delay)
        return place(*args, **kwargs)

    registration._place_alias = slow_place
    result = registration.register_best([mlflow.MlflowClient().get_run(run_id)], P1)
    return result.champion_version


def test_two_registrations_at_once_leave_the_better_champion(tracking_uri: str) -> None:
    """Two sweeps finishing together: both read "no champion", both want to move it. Under the
    registry lock the second waits and compares against the first one's champion."""
    import multiprocessing

    better, worse = make_run(0.9), make_run(0.6)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        # the worse run's process reads first and writes last: without the lock it would win
        slow = pool.apply_async(_register_slowly, (tracking_uri, worse.info.run_id, 3.0))
        fast = pool.apply_async(_register_slowly, (tracking_uri, better.info.run_id, 0.5))
        slow.get(timeout=120), fast.get(timeout=120)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(registered_name("digits"), "champion")
    assert champion.run_id == better.info.run_id
    assert len(client.search_model_versions(f"name='{registered_name('digits')}'")) == 2
