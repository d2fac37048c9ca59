"""Crash safety of a training run: killed at any moment, it resumes to the result it would
have had; Ctrl-C and SIGTERM end it KILLED with a line saying how to resume."""
from __future__ import annotations

import copy
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from tests.conftest import REPO
from training.engine.checkpoint import (FORMAT, SLOTS, CheckpointError, RunCheckpoints,
                                 load_checkpoint, restore_rng, save_atomic, slot_name)
from zoo import names
from zoo.record import ModelRecord

# Every stateful part of the loop is on: EMA, Lookahead, mixing (its own generator),
# augmentation (torch's generator), the cosine schedule.
ARGS = ["--data", "digits", "--model", "mobilenetv3_small_100", "--image_size", "16",
        "--epochs", "3", "--embedding_dim", "32",
        "--ema_decay", "0.9", "--lookahead", "true", "--mix", "mixup", "--log_model", "false",
        "--plots", "false",
        "--experiment", "crash"]
COMPARED = ("test_accuracy", "test_precision_at_1", "test_map_at_r", "test_nmi", "best_epoch")
TOLERANCE = 1e-6  # the same arithmetic in the same order: equal up to float printing


def _env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "ZOO_LOG_LEVEL": "WARNING",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _train(tracking_uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.commands.train", *ARGS, *args],
                            cwd=REPO, env=_env(tracking_uri), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _runs() -> list:
    return mlflow.search_runs(experiment_names=["crash"], output_format="list",
                              order_by=["attributes.start_time ASC"])


def _wait_for_checkpoint(proc: subprocess.Popen, epoch: int, timeout: float = 300) -> str:
    """The id of the run ``proc`` trains, once its checkpoint of ``epoch`` is logged."""
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        running = [r for r in _runs() if r.info.status == "RUNNING"]
        if running:
            run_id = running[-1].info.run_id
            logged = {Path(a.path).name
                      for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR)}
            if slot_name(epoch) in logged:
                return run_id
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


@pytest.fixture(scope="module")
def reference(module_tracking_uri: str) -> dict[str, float]:
    """The uninterrupted run's final metrics."""
    proc = _train(module_tracking_uri)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    run = _runs()[-1]
    assert run.info.status == "FINISHED"
    # a finished run's checkpoints are deleted
    assert mlflow.MlflowClient().list_artifacts(run.info.run_id, names.CHECKPOINT_DIR) == []
    return run.data.metrics


@pytest.mark.slow
def test_a_run_killed_after_its_second_epoch_resumes_to_the_same_result(
        reference: dict[str, float], module_tracking_uri: str) -> None:
    proc = _train(module_tracking_uri)
    run_id = _wait_for_checkpoint(proc, epoch=2)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the run stays RUNNING
    proc.wait()
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"

    resumed = subprocess.run([sys.executable, "-m", "training.commands.train",
                              "--resume_run", run_id],
                             cwd=REPO, env=_env(module_tracking_uri), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "carries no model record" not in resumed.stderr  # the config came from the record
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in COMPARED:
        assert run.data.metrics[key] == pytest.approx(reference[key], abs=TOLERANCE), key
    # every epoch is in the history, each step once or (the epoch being killed) twice
    steps = {m.step for m in client.get_metric_history(run_id, "val_map_at_r")}
    assert steps == {1, 2, 3}
    assert client.list_artifacts(run_id, names.CHECKPOINT_DIR) == []


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_and_mlflow_run_resumes_it(
        reference: dict[str, float], module_tracking_uri: str, tmp_path: Path) -> None:
    proc = _train(module_tracking_uri)
    run_id = _wait_for_checkpoint(proc, epoch=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"error: interrupted: run {run_id} is KILLED; its checkpoint of epoch "
                         rf"(\d) is kept; resume it with: mlflow run \. -e train --env-manager "
                         rf"local -P resume_run={run_id}", last)
    assert match, last
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.list_artifacts(run_id, names.CHECKPOINT_DIR)

    mlflow_cli = Path(sys.executable).parent / "mlflow"
    resumed = subprocess.run(
        [str(mlflow_cli), "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "crash", "-P", f"resume_run={run_id}"],
        cwd=tmp_path, env=_env(module_tracking_uri), capture_output=True, text=True,
        timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in COMPARED:
        assert run.data.metrics[key] == pytest.approx(reference[key], abs=TOLERANCE), key
    wrapper = [r for r in _runs() if r.data.tags.get(names.RESUMED_TAG) == run_id]
    assert len(wrapper) == 1  # the run `mlflow run` made points to where the work went


def test_resume_refuses_finished_runs_and_names_bad_checkpoints(tracking_uri: str,
                                                                tmp_path: Path) -> None:
    from training.pipeline.run import resume_point

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("crash")
    finished = client.create_run(experiment)
    client.set_terminated(finished.info.run_id)
    with pytest.raises(ValueError, match="that run is FINISHED; there is nothing to resume"):
        resume_point(finished.info.run_id)
    with pytest.raises(ValueError, match="resume_run=nope: no such run"):
        resume_point("nope")

    stopped = client.create_run(experiment).info.run_id
    with pytest.raises(CheckpointError, match=f"run {stopped} has no checkpoint under "
                                              f"{names.CHECKPOINT_DIR}/"):
        RunCheckpoints(stopped).latest()
    # a truncated newest slot: the older one is used; both truncated: both named
    good = save_atomic({"format": FORMAT, "epoch": 1}, tmp_path / SLOTS[0])
    client.log_artifact(stopped, str(good), names.CHECKPOINT_DIR)
    torn = tmp_path / SLOTS[1]
    torn.write_bytes(good.read_bytes()[:40])
    client.log_artifact(stopped, str(torn), names.CHECKPOINT_DIR)
    assert RunCheckpoints(stopped).latest()["epoch"] == 1
    good.write_bytes(b"not a checkpoint")
    client.log_artifact(stopped, str(good), names.CHECKPOINT_DIR)
    with pytest.raises(CheckpointError, match=rf"checkpoint .*{SLOTS[0]} is unreadable.*; "
                                              rf"checkpoint .*{SLOTS[1]} is unreadable"):
        RunCheckpoints(stopped).latest()


def test_checkpoint_files_are_replaced_whole(tmp_path: Path) -> None:
    path = save_atomic({"format": FORMAT, "epoch": 3, "w": torch.ones(3)}, tmp_path / "c.pt")
    assert load_checkpoint(path)["epoch"] == 3 and not list(tmp_path.glob("*.tmp"))
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a model-zoo training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Planted:
    """Unpickled, it would run code: touch ``marker`` through ``how``."""

    def __init__(self, how: str, marker: Path) -> None:
        self.how, self.marker = how, marker

    def __reduce__(self) -> tuple:
        if self.how == "os.system":
            return os.system, (f"touch '{self.marker}'",)
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("how", ["os.system", "Path.touch"])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran"
    planted = {"format": FORMAT, "epoch": 1, "rng": {"numpy": _Planted(how, marker)}}
    path = tmp_path / SLOTS[0]
    torch.save(planted, path)
    with pytest.raises(CheckpointError, match=rf"checkpoint .*{SLOTS[0]} is not a model-zoo "
                                              r"training checkpoint .*refuses to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()
    # the payload is live: a full unpickling would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()

    # a checkpoint of format 1 (numpy's random state pickled as an array) is refused by name
    torch.save({"format": 1, "epoch": 1, "rng": {"numpy": np.random.get_state()}},
               tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=rf"old.pt is not a model-zoo training checkpoint "
                                              rf"\(format {FORMAT}\): .*numpy"):
        load_checkpoint(tmp_path / "old.pt")


def _assert_same(saved: object, loaded: object, where: str = "state") -> None:
    assert type(loaded) is type(saved), where
    if isinstance(saved, torch.Tensor):
        assert saved.dtype == loaded.dtype and torch.equal(saved, loaded), where
    elif isinstance(saved, dict):
        assert list(saved) == list(loaded), where
        for key in saved:
            _assert_same(saved[key], loaded[key], f"{where}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(loaded), where
        for i, (a, b) in enumerate(zip(saved, loaded)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(saved, float) and saved != saved:
        assert loaded != loaded, where  # NaN
    else:
        assert saved == loaded, where


def test_a_real_checkpoint_round_trips_weights_only(tracking_uri: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The state the loop saves (EMA, Lookahead, mixing, cosine schedule) is plain data: a
    weights-only load gives it back whole, and its random streams continue as they would."""
    from training.config import TrainConfig
    from training.pipeline.run import train

    states: list[dict] = []
    logged = RunCheckpoints.save

    def keep(self: RunCheckpoints, state: dict) -> None:
        states.append(copy.deepcopy(state))  # training goes on changing the live tensors
        logged(self, state)

    monkeypatch.setattr(RunCheckpoints, "save", keep)
    cfg = TrainConfig.of(model="residual_mlp", data="emitters", epochs=2, embedding_dim=8,
                         ema_decay=0.9, lookahead=True, mix="mixup", experiment="plain",
                         plots=False, log_model=False)
    train(cfg)
    assert [s["epoch"] for s in states] == [1, 2]
    # the model's record rides along: resume rebuilds the config from its training recipe
    record = ModelRecord.from_dict(states[-1]["record"])
    assert record.model == "residual_mlp" and record.dataset == "emitters"
    assert TrainConfig.from_recipe(record.recipe) == cfg
    state = states[-1]
    path = save_atomic(state, tmp_path / slot_name(2))
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    _assert_same(state, torch.load(path, map_location="cpu", weights_only=True))

    def draws(rng: dict) -> list:
        generator = np.random.default_rng(0)
        restore_rng(rng, generator)
        return [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(),
                generator.random(3).tolist()]

    assert draws(loaded["rng"]) == draws(state["rng"])


class _Payload:
    """What a tampered pickle holds: code that runs when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_damaged_model_and_gallery_files_are_named(tracking_uri: str, tmp_path: Path) -> None:
    """A model's files cut short give one line naming them, not a trace from inside torch or
    numpy; a model with safetensors weights is loaded from them, its pickle never run."""
    from training.config import TrainConfig
    from training.pipeline.run import train
    from training.tracking.model_source import (ModelFileError, artifact_location,
                                                load_pytorch_model, load_source)
    from zoo.gallery import META_FILE, VECTORS_FILE, Gallery

    result = train(TrainConfig.of(model="residual_mlp", data="emitters", epochs=1,
                                  embedding_dim=8, experiment="damaged", plots=False))
    model_id = result.model_uri.split("/")[-1]
    folder = Path(mlflow.MlflowClient().get_logged_model(model_id).artifact_location
                  .removeprefix("file://"))
    # a tampered pickle: init= and export load the safetensors weights, so it never runs
    marker = tmp_path / "the-payload-ran"
    torch.save(_Payload(marker), folder / "data" / "model.pth")
    source, _, model = load_source(result.model_uri)
    assert not marker.exists() and model.record.run_id == source.run_id

    weights = folder / names.WEIGHTS_DIR / names.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:500])
    proc = subprocess.run([sys.executable, "-m", "training.commands.export", "--model_uri",
                           result.model_uri], cwd=REPO, env=_env(tracking_uri),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the model of {result.model_uri}")
    assert f"its weights under file://{folder}/weights are damaged" in last
    assert not marker.exists()

    # a model logged before models had weights: its pickle is loaded; damaged, it is named
    shutil.rmtree(folder / names.WEIGHTS_DIR)
    (folder / "data" / "model.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ModelFileError, match=f"its files under file://{folder} are missing, "
                                             "damaged or not a model-zoo module"):
        load_pytorch_model(source.load_uri, "the model", artifact_location(source))

    gallery = Gallery(4)
    gallery.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
    gallery.save(tmp_path / "g")
    vectors = tmp_path / "g" / VECTORS_FILE
    vectors.write_bytes(vectors.read_bytes()[:30])
    with pytest.raises(ValueError, match=f"gallery file {vectors} is not a readable array"):
        Gallery.load(tmp_path / "g")
    (tmp_path / "g" / META_FILE).write_text("{ not json")
    with pytest.raises(ValueError, match=f"gallery file {tmp_path / 'g' / META_FILE} is damaged"):
        Gallery.load(tmp_path / "g")
