"""Transfer learning without a network: timm weights from a hub cache and from files the tests
save themselves, zoo models as starting points, the fine-tuning controls, zero-shot
evaluation, and choosing on validation."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from tests.conftest import REPO
from training.pipeline.evaluate import EvaluateConfig, evaluate_models
from training.pipeline.sweep import SweepConfig, run_sweep
from training.pipeline.tune import TuneConfig, run_tune
from training.config import TrainConfig
from training.engine.param_groups import param_groups
from training.pipeline.run import train
from zoo import names
from zoo.data import load_data
from zoo.losses import create_loss
from zoo.models import CURATED_IMAGE_MODELS, MORE_IMAGE_MODELS, create_model
from zoo.models.pretrained import PretrainedError, WeightsPreprocessing, resolve_weights

TINY = dict(epochs=1, embedding_dim=16, plots=False, checkpoint=False)
FROM_INIT = dict(epochs=1, plots=False, checkpoint=False)  # the width is the init model's
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache holding ``model.safetensors`` of ``repo``, laid out as
    ``huggingface_hub`` lays it out (refs/main names the snapshot)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


# --- pretrained=<file> through timm --------------------------------------------------------

def test_the_weights_preprocessing_is_typed_from_timms_config() -> None:
    cfg = timm.models.get_pretrained_cfg("mobilenetv3_small_100.lamb_in1k")
    pre = WeightsPreprocessing.from_pretrained_cfg(cfg.to_dict())
    assert (pre.mean, pre.std, pre.interpolation) == (cfg.mean, cfg.std, cfg.interpolation)
    assert WeightsPreprocessing.from_pretrained_cfg({}) == WeightsPreprocessing()  # unset: defaults
    grey = pre.for_channels(1)
    assert grey.mean == pytest.approx((sum(cfg.mean) / 3,)) and len(grey.std) == 1
    assert pre.for_channels(3) is pre
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.mean = (0.5,)  # type: ignore[misc]


def test_checkpoint_files_load_through_timm_adapted_to_grey(tmp_path: Path) -> None:
    source = timm.create_model("resnet18", num_classes=1000).eval()
    state = source.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": state, "epoch": 9, "arch": "resnet18"}, tmp_path / "train.pth.tar")
    torch.save({"model": state}, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.pth", "train.pth.tar", "w.bin"):
        weights = resolve_weights("resnet18", str(tmp_path / name), in_chans=1, image_size=32)
        model = create_model("resnet18", 3, 16, in_chans=1, image_size=32, weights=weights)
        backbone = model.backbone.state_dict()
        assert torch.equal(backbone["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
        assert torch.equal(backbone["bn1.running_var"], state["bn1.running_var"])
        # the grey first conv is timm's adaptation of the colour one
        assert torch.allclose(backbone["conv1.weight"], adapt_input_conv(1, state["conv1.weight"]))
        report = weights.report.to_dict()
        assert sorted(report["classifier_dropped"]) == ["fc.bias", "fc.weight"]
        assert report["input_conv_adapted"] == ["conv1.weight"] and report["fraction"] == 1.0
        assert weights.sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert weights.preprocessing_for(1).interpolation == "bicubic"  # resnet18.a1_in1k's
    # a stage read-out (features_only) gets the same weights
    model = create_model("resnet18", 3, 16, stage=2, grid=2, weights=resolve_weights(
        "resnet18", str(tmp_path / "w.pth")))
    assert torch.equal(model.backbone.body.features.layer2[1].conv1.weight,
                       state["layer2.1.conv1.weight"])


def test_a_file_made_for_another_model_is_refused_naming_that_model(tmp_path: Path) -> None:
    save_file(timm.create_model("mobilenetv3_small_100").state_dict(), tmp_path / "m.safetensors")
    with pytest.raises(PretrainedError, match=r"fills \d of 120 tensors of resnet18 .*looks made "
                                              r"for mobilenetv3_small_100"):
        resolve_weights("resnet18", str(tmp_path / "m.safetensors"),
                        candidates=(*CURATED_IMAGE_MODELS, *MORE_IMAGE_MODELS))
    partial = {k: v for i, (k, v) in enumerate(timm.create_model("resnet18").state_dict().items())
               if i % 3 == 0}
    partial["extra.weight"] = torch.zeros(2)
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(PretrainedError, match="less than 50%"):
        resolve_weights("resnet18", str(tmp_path / "partial.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="not a checkpoint timm can read"):
        resolve_weights("resnet18", str(tmp_path / "junk.pth"))
    with pytest.raises(PretrainedError, match="timm has no pretrained tag 'nope' for resnet18"):
        resolve_weights("resnet18.nope", "true")


# --- pretrained=true: the hub cache, offline ---------------------------------------------

def test_an_unreachable_hub_fails_at_once_and_a_cached_file_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline without HF_HUB_OFFLINE, huggingface_hub retries for 23 s per file name (62 s
    for timm's two) before it gives up; one connection attempt decides instead."""
    import socket
    import time

    from huggingface_hub import constants

    from zoo.models.pretrained import hub_file

    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    name = "mobilenetv3_small_100.lamb_in1k"
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    started = time.perf_counter()
    with pytest.raises(PretrainedError, match=f"the hub \\(127.0.0.1:{port}\\) cannot be "
                                              "reached: run once online"):
        hub_file(name, cfg)
    assert time.perf_counter() - started < 5
    file = hub_cache(tmp_path / "hub", f"timm/{name}", {"w": torch.zeros(1)})
    assert hub_file(name, cfg) == (f"hf-hub:timm/{name}", file)


@pytest.mark.slow
def test_hub_weights_from_the_cache_offline_and_a_clear_failure_without(
        tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import constants

    from training.commands.train import main

    cache = tmp_path / "hub"  # what HF_HUB_CACHE and HF_HUB_OFFLINE=1 set at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["--model", "timm/mobilenetv3_small_100.lamb_in1k", "--pretrained", "true",
            "--epochs", "2", "--embedding_dim", "16", "--image_size", "16", "--plots", "false",
            "--experiment", "hub"]
    assert main(args) == 1
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert "timm/mobilenetv3_small_100.lamb_in1k" in line and str(cache) in line
    assert "HF_HUB_OFFLINE=1" in line
    assert "run once online" in line and "pretrained=<file>" in line

    file = hub_cache(cache, "timm/mobilenetv3_small_100.lamb_in1k",
                     timm.create_model("mobilenetv3_small_100").state_dict())
    assert main(args) == 0

    failed, finished = sorted(mlflow.search_runs(experiment_names=["hub"], output_format="list"),
                              key=lambda r: r.info.start_time)
    assert failed.info.status == "FAILED"
    assert "no cached weights" in failed.data.tags[names.ERROR_TAG]
    tags = finished.data.tags
    assert finished.info.status == "FINISHED"
    assert tags[names.PRETRAINED_SOURCE_TAG] == "hf-hub:timm/mobilenetv3_small_100.lamb_in1k"
    assert tags[names.PRETRAINED_SHA256_TAG] == hashlib.sha256(file.read_bytes()).hexdigest()
    # the checkpoint's own preprocessing, recorded for export and serving
    cfg = timm.models.get_pretrained_cfg("mobilenetv3_small_100.lamb_in1k")
    mean = tags[names.resolved_tag("mean")]
    assert [float(v) for v in mean.split(",")] == pytest.approx(cfg.mean)
    assert tags[names.resolved_tag("interpolation")] == cfg.interpolation
    params = finished.data.params
    assert (params["freeze_epochs"], params["backbone_lr"]) == ("1", "0.1")  # fine-tuning defaults
    client = mlflow.MlflowClient()
    report = json.loads(Path(client.download_artifacts(
        finished.info.run_id, "pretrained/load_report.json", str(tmp_path))).read_text())
    assert report["fraction"] == 1.0 and report["missing"] == [] and report["unexpected"] == []
    assert report["classifier_dropped"]
    backbone_lr = [m.value for m in client.get_metric_history(finished.info.run_id, "lr_backbone")]
    assert backbone_lr[0] == 0.0 and backbone_lr[1] > 0  # frozen for one epoch, then trained
    model = mlflow.pytorch.load_model(tags[names.MODEL_URI_TAG])
    assert model.record.pre.interpolation == cfg.interpolation
    assert (model.record.lineage.pretrained, model.record.lineage.pretrained_sha256) == (
        tags[names.PRETRAINED_SOURCE_TAG],
        tags[names.PRETRAINED_SHA256_TAG])  # the record's lineage
    assert model.record.pre.mean == pytest.approx(list(cfg.mean))
    # export and evaluate rebuild the run's inputs from the recipe the model carries, and
    # the run's parameters with their resolved tags give the same config (the fallback)
    from training.pipeline.export import source_config
    from training.pipeline.run import config_splits, load_config_data
    from training.tracking.model_source import resolve_model

    rebuilt = source_config(resolve_model(tags[names.MODEL_URI_TAG]), finished, model)
    assert rebuilt == TrainConfig.from_run(finished.data.params, tags)
    splits = config_splits(rebuilt, load_config_data(rebuilt))
    assert splits.preprocessing.interpolation == cfg.interpolation
    assert splits.preprocessing.mean == pytest.approx(model.record.pre.mean)
    assert splits.preprocessing.std == pytest.approx(model.record.pre.std)


# --- init: a zoo model as the start --------------------------------------------------------

def emitter_tables(folder: Path) -> tuple[Path, Path]:
    """The emitters data as two CSV files of disjoint emitters (classes 0-4 and 5-9)."""
    data = load_data("emitters")
    frame = pd.DataFrame(data.x.numpy(), columns=data.feature_names)
    frame["label"] = [f"e{int(y)}" for y in data.y]
    first, second = folder / "first.csv", folder / "second.csv"
    frame[data.y.numpy() < 5].to_csv(first, index=False)
    frame[data.y.numpy() >= 5].to_csv(second, index=False)
    return first, second


@pytest.fixture(scope="module")
def source(module_tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tabular model trained on emitters 0-4 and registered as zoo-first@champion."""
    first, second = emitter_tables(tmp_path_factory.mktemp("tables"))
    result = train(TrainConfig.of(model="residual_mlp", loss="arcface", data=str(first), epochs=2,
                                  embedding_dim=24, experiment="first", plots=False))
    version = mlflow.register_model(result.model_uri, "zoo-first")
    mlflow.MlflowClient().set_registered_model_alias("zoo-first", "champion", version.version)
    return {"uri": "models:/zoo-first@champion", "result": result, "second": second,
            "first": first}


def test_init_carries_architecture_weights_and_preprocessing(source: dict) -> None:
    start = mlflow.pytorch.load_model(source["result"].model_uri)
    # the backbone frozen for the whole run: it must end exactly as the init model's
    result = train(TrainConfig.of(data=str(source["second"]), init=source["uri"], loss="softmax",
                                  epochs=2, freeze_epochs=2, experiment="second", plots=False))
    run = mlflow.MlflowClient().get_run(result.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags[names.INIT_TAG] == source["uri"] and tags[names.INIT_VERSION_TAG] == "zoo-first/1"
    assert tags[names.INIT_RUN_TAG] == source["result"].run_id
    assert (params["model"], params["embedding_dim"]) == ("residual_mlp", "24")  # from init
    assert [i.model_id for i in run.inputs.model_inputs] == [  # MLflow's lineage
        source["result"].model_uri.removeprefix("models:/")]
    tuned = mlflow.pytorch.load_model(result.model_uri)
    assert tuned.num_classes == 5 and tuned.record.loss == "softmax"  # a new head
    assert tuned.record.lineage.init == source["uri"]
    before, after = start.state_dict(), tuned.state_dict()
    for key in before:
        if key.startswith("backbone."):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["neck.fc.weight"], after["neck.fc.weight"])  # the neck trained
    # the init model's normalisation, not statistics of the new data
    assert tuned.record.pre.mean == pytest.approx(
        start.record.pre.mean, rel=1e-5)

    with pytest.raises(ValueError, match=r"init=models:/zoo-first@champion is a residual_mlp "
                                         r"model; it cannot start a run with model='ft_trans"):
        train(TrainConfig.of(data=str(source["second"]), init=source["uri"], model="ft_transformer",
                             **FROM_INIT))
    with pytest.raises(LookupError, match="registered model 'zoo-first' has no alias @nope"):
        train(TrainConfig.of(data=str(source["second"]), init="models:/zoo-first@nope",
                             **FROM_INIT))


@pytest.mark.slow
def test_a_per_loss_entry_point_starts_from_init_and_exports(source: dict, tmp_path: Path) -> None:
    """Under `mlflow run` the parameters hold the defaults mlflow passed; what init made of
    them is in zoo.resolved.* tags, so export rebuilds the right model and split."""
    from training.pipeline.export import ExportConfig, export_model
    from training.tracking.registration import register_best, runs_of_experiment

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(bin_dir / "mlflow"), "run", str(REPO), "-e", "softmax", "--env-manager", "local",
         "--experiment-name", "entry-init", "-P", f"init={source['uri']}", "-P",
         f"data={source['second']}", "-P", "epochs=2", "-P", "plots=false",
         "-P", "embedding_dim=128"],  # the default, logged by mlflow run as given
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = mlflow.search_runs(experiment_names=["entry-init"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["model"] == "resnet18"
    assert run.data.tags[names.resolved_tag("model")] == "residual_mlp"
    assert run.data.tags[names.resolved_tag("embedding_dim")] == "24"
    assert run.data.tags[names.INIT_TAG] == source["uri"]
    result = register_best(runs_of_experiment("entry-init"))
    version = mlflow.MlflowClient().get_model_version(result.name, result.champion_version)
    assert f"Started from {source['uri']}" in version.description
    assert version.tags[names.INIT_TAG] == source["uri"]
    exported = export_model(ExportConfig(model_uri=f"models:/{result.name}/{version.version}",
                                         formats="onnx"))
    assert exported.ok and exported.parities[0].samples > 0


def test_sweep_children_start_from_init_and_other_models_are_refused(
        source: dict, capsys: pytest.CaptureFixture) -> None:
    outcomes = run_sweep(SweepConfig.of(data=str(source["second"]), init=source["uri"],
                                        models="residual_mlp,ft_transformer",
                                        losses="softmax,supcon", workers=1, register=False,
                                        experiment="sweep-init", **FROM_INIT))
    assert sorted(str(o.job) for o in outcomes) == ["residual_mlp-softmax", "residual_mlp-supcon"]
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("ft_transformer: refused")] == [
        "ft_transformer: refused: init=models:/zoo-first@champion is a residual_mlp model, "
        "whose weights ft_transformer cannot start from"]
    for o in outcomes:
        assert mlflow.MlflowClient().get_run(o.run_id).data.tags[names.INIT_TAG] == source["uri"]


def test_tune_trials_start_from_init_and_keep_its_width(source: dict) -> None:
    study = run_tune(TuneConfig.of(data=str(source["second"]), init=source["uri"], loss="cosface",
                                   trials=2, pruner="none", experiment="tune-init", **FROM_INIT))
    assert set(study.trials[0].params) == {"margin", "scale", "lr"}  # no embedding_dim
    trials = mlflow.search_runs(experiment_names=["tune-init"], output_format="list",
                                filter_string=f"tags.`{names.TRIAL_TAG}` != ''")
    assert len(trials) == 2
    assert {(r.data.tags[names.INIT_TAG], r.data.params["embedding_dim"]) for r in trials} == {
        (source["uri"], "24")}
    with pytest.raises(ValueError, match="fixes embedding_dim"):
        TuneConfig.of(data=str(source["second"]), init=source["uri"],
                      search="embedding_dim").space()


@pytest.mark.slow
def test_init_under_two_processes(source: dict, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.commands.train", "--data", str(source["second"]), "--init",
         source["uri"], "--loss", "softmax", "--epochs", "2", "--nproc", "2", "--plots", "false",
         "--experiment", "ddp-init"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = mlflow.search_runs(experiment_names=["ddp-init"], output_format="list")
    assert run.data.tags[names.INIT_TAG] == source["uri"] and run.data.params["world_size"] == "2"
    digests = run.data.tags[names.DDP_CHECKSUMS_TAG].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]


def test_zero_shot_evaluation_scores_every_sample_as_unseen(source: dict) -> None:
    metrics = evaluate_models(EvaluateConfig(model_uri=source["uri"], data=str(source["second"])))
    [run] = mlflow.search_runs(experiment_names=["zoo-second"], output_format="list",
                               filter_string=f"tags.`{names.EVALUATION_TAG}` = 'zero-shot'")
    assert run.data.tags[names.MEMBERS_TAG] == source["uri"]
    assert run.data.tags[names.DATASET_TAG] == "second"
    assert run.data.tags[names.TRAINED_ON_TAG] == "first"
    assert run.data.params["data"] == str(source["second"])
    assert not [k for k in metrics if k.startswith("test_")]
    # every sample of the new data, read with the model's own preprocessing
    from training.engine.evaluation import embed
    from zoo.data.preprocessing import normalise
    from zoo.metrics import evaluate

    model = mlflow.pytorch.load_model(source["uri"])
    pre = model.record.pre
    data = load_data(str(source["second"]))
    raw = torch.from_numpy(data.x.frame.to_numpy(np.float32))  # all numeric, complete
    emb, _ = embed(model, normalise(raw, pre.mean, pre.std), torch.device("cpu"))
    expected = evaluate(emb, data.y, None, prefix="open_")
    for key in ("open_precision_at_1", "open_map_at_r", "open_nmi", "open_roc_auc"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key


# --- fine-tuning controls ----------------------------------------------------------------

def test_backbone_and_layer_learning_rates() -> None:
    model = create_model("resnet18", 4, 16)
    loss = create_loss("arcface", 4, 16)
    groups = param_groups(model, loss, 0.05, 1e-3, backbone_lr=0.1)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        inside = {id(p) in backbone for p in group["params"]}
        assert len(inside) == 1  # a group is all backbone or all new layers
        assert group["lr"] == pytest.approx(1e-4 if inside == {True} else 1e-3)
    assert groups[0]["lr"] == 1e-3  # the logged lr is the new layers'
    assert sum(len(g["params"]) for g in groups) == len([*model.parameters(), *loss.parameters()])

    # timm's layer-wise decay: the stem learns slowest, the last stage fastest
    for kw in ({}, {"stage": 2, "grid": 2}):
        model = create_model("resnet18", 4, 16, **kw)
        groups = param_groups(model, loss, 0.05, 1e-3, backbone_lr=0.5, lr_decay=0.7)
        lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
        body = model.backbone if not kw else model.backbone.body.features
        stem, deep = lr_of[id(body.conv1.weight)], lr_of[id(body.layer2[1].conv2.weight)]
        assert stem < deep <= 5e-4
        assert stem == pytest.approx(deep * 0.7 ** round(np.log(stem / deep) / np.log(0.7)))
    with pytest.raises(ValueError, match="lr_decay groups the layers of a timm backbone"):
        param_groups(create_model("residual_mlp", 4, 16, num_features=5), loss, 0.05, 1e-3,
                     lr_decay=0.7)


def test_fine_tuning_defaults_and_checks() -> None:
    scratch, tuned = TrainConfig(), TrainConfig.of(pretrained="true")
    assert (scratch.optim.freeze_epochs, scratch.optim.backbone_lr,
            scratch.optim.lr_decay) == (0, 1.0, 1.0)
    assert (tuned.optim.freeze_epochs, tuned.optim.backbone_lr,
            tuned.optim.lr_decay) == (1, 0.1, 1.0)
    assert TrainConfig.of(init="models:/x@y", backbone_lr=0.5).optim.backbone_lr == 0.5
    assert TrainConfig.from_dict({"pretrained": "false"}).model.pretrained is None
    for bad, match in ((dict(lr_decay=1.5), "lr_decay must be in"),
                       (dict(pretrained="true", init="models:/x@y"), "give one"),
                       (dict(mean="0.5,0.5,0.5"), "set mean and std together"),
                       (dict(mean="a,b", std="1,1"), "not a comma list"),
                       (dict(interpolation="cubic"), "interpolation='cubic' is not one of"),
                       (dict(pretrained="true", width_multiplier=0.5), "own width")):
        with pytest.raises(ValueError, match=match):
            TrainConfig.of(**bad)


# --- choose on validation, report on test -------------------------------------------------

def test_sweep_chooses_on_validation_and_says_when_it_used_test(tracking_uri: str) -> None:
    client = mlflow.MlflowClient()
    common = dict(models="residual_mlp", losses="softmax,supcon", data="emitters", workers=1,
                  export=False, **TINY)
    run_sweep(SweepConfig.of(experiment="val", **common))
    version = client.get_model_version_by_alias("zoo-emitters", "champion")
    run = client.get_run(version.run_id)
    assert version.tags[names.METRIC_TAG] == "best_val_map_at_r"
    assert version.tags[names.SELECTED_ON_TAG] == "validation"
    assert run.data.metrics["best_val_map_at_r"] == client.get_metric_history(
        run.info.run_id, "val_map_at_r")[int(run.data.metrics["best_epoch"]) - 1].value
    assert "on the validation split" in version.description
    assert "test_map_at_r" in version.tags  # the honest estimate stays on the version

    run_sweep(SweepConfig.of(experiment="no-val", val_fraction=0.0, monitor="none", force=True,
                             **common))
    version = client.get_model_version_by_alias("zoo-emitters", "champion")
    assert version.tags[names.METRIC_TAG] == "test_map_at_r"
    assert "on the test split" in version.description and "optimistic" in version.description
    [parent] = mlflow.search_runs(experiment_names=["no-val"], output_format="list",
                                  filter_string=f"tags.`{names.SWEEP_TAG}` = 'parent'")
    table = Path(client.download_artifacts(parent.info.run_id, "comparison/comparison.md"))
    assert "Ranked by test_map_at_r: chosen by test_map_at_r, on the test split" in \
        table.read_text()
