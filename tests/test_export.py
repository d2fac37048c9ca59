"""Export to ONNX, TorchScript and .pt2: parity on real inputs, metadata, failures named,
and the MLflow side (files on the run, tags on the version) against a real store."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import training.pipeline.export
from mlflow_source.fetch import fetch_bundle
from zoo.export.bundle import Bundle
from tests.conftest import REPO, temporary_store
from training.config import TrainConfig
from training.pipeline.export import ExportConfig, export_model, save_rebuildable
from training.pipeline.run import train
from training.tracking.registration import register_best, runs_of_experiment
from zoo import names
from zoo.data import load_data, split_data
from zoo.export import (
    FORMATS, ExportFailure, ParityThresholds, export_format, load_exported, measure_parity,
    onnx_providers,
)
from zoo.export.formats import eager_runner
from zoo.export.onnx_format import read_metadata
from zoo.export.parity import reference_outputs
from zoo.gallery import Gallery
from zoo.models import EmbeddingModel, create_model
from zoo.record import ModelRecord


@pytest.fixture(scope="module")
def real_inputs() -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Preprocessed test inputs of real data: digits images and emitter pulse features."""
    out = {}
    for kind, data in (("image", "digits"), ("tabular", "emitters")):
        splits = split_data(load_data(data, image_size=32), seed=0, val_fraction=0.1,
                            test_fraction=0.2)
        out[kind] = (splits.test.x[:50], splits.class_names, splits.preprocessing)
    return out


@pytest.mark.parametrize("name, options, formats", [
    *((name, {}, FORMATS) for name in ("resnet18", "convnext_atto", "mobilenetv3_small_100",
                                       "residual_mlp", "ft_transformer")),
    ("timm/vgg11_bn", {"stage": 2, "grid": 2, "parts": True}, FORMATS),  # a stage on a grid
    # ConvNeXt-V2 + SwinV2: its ONNX export alone takes 30 s here; .pt2 (12 s more) is the
    # same torch.export graph ONNX is built from
    ("hybrid", {}, ("onnx", "torchscript")),
])
def test_every_format_answers_like_eager(name: str, options: dict, formats: tuple[str, ...],
                                         real_inputs, tmp_path: Path) -> None:
    kind = "tabular" if name in ("residual_mlp", "ft_transformer") else "image"
    x, classes, pre = real_inputs[kind]
    torch.manual_seed(0)
    model = create_model(name, len(classes), 32, image_size=32, num_features=x.shape[1],
                         **options).eval()
    model.record = model.record.with_(preprocessing=pre, loss="arcface")
    reference = reference_outputs(eager_runner(model), x, batch_size=32)
    for fmt in formats:
        exported = export_format(fmt, model, x[:2], tmp_path)
        runner = load_exported(fmt, exported.path)
        # batches of 32 over 50 inputs: a full and a partial batch through the dynamic axis
        parity = measure_parity(fmt, runner, x, reference, batch_size=32)
        assert parity.failures(ParityThresholds()) == [], (fmt, parity)
        assert parity.samples == 50 and parity.top1_agreement == 1.0
        assert runner.record == model.record  # each format carries the model's record
        assert runner.record.class_names == classes
        assert runner(x[:1].numpy())["embedding"].shape == (1, 32)  # batch 1 works too
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["embedding", "logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["class_names"] == classes and meta["preprocessing"] == pre.to_dict()


def test_parity_catches_a_deviant_export(real_inputs) -> None:
    x, _, _ = real_inputs["tabular"]
    model = create_model("residual_mlp", 5, 16, num_features=x.shape[1]).eval()
    reference = reference_outputs(eager_runner(model), x)

    def shifted(batch: np.ndarray) -> dict[str, np.ndarray]:
        out = eager_runner(model)(batch)
        return {"embedding": out["embedding"] + 1e-3, "logits": -out["logits"]}

    parity = measure_parity("fake", shifted, x, reference)
    problems = parity.failures(ParityThresholds())
    assert parity.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert len(problems) == 2 and "embeddings differ" in problems[0] and "top-1" in problems[1]


class _Kth(nn.Module):
    """kthvalue has no ONNX translation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.kthvalue(x, 2, dim=1)[0][:, None] * x


class _Branch(nn.Module):
    """A branch on a tensor's value cannot be exported as one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.mean() > 0 else x


def _toy(bad: nn.Module) -> EmbeddingModel:
    backbone = nn.Sequential(nn.Linear(12, 32), nn.Sequential(nn.ReLU(), bad), nn.Linear(32, 32))
    return EmbeddingModel(backbone, 32, 16, num_classes=3, name="toy").eval()


@pytest.mark.parametrize("bad, fmt, operator", [
    (_Kth(), "onnx", "aten.kthvalue"), (_Branch(), "pt2", None), (_Branch(), "onnx", None),
])
def test_unexportable_model_names_the_module_and_operator(bad, fmt, operator, tmp_path) -> None:
    with pytest.raises(ExportFailure) as caught:
        export_format(fmt, _toy(bad), torch.randn(4, 12), tmp_path)
    message = str(caught.value)
    assert f"in module backbone.1.1 ({type(bad).__name__})" in message
    assert message.startswith(f"{fmt} export failed")
    if operator:
        assert caught.value.operator.startswith(operator) and operator in message
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_onnx_runtime_asks_for_cuda_only_with_a_gpu() -> None:
    if torch.cuda.is_available():
        assert onnx_providers("auto")[0][0] == "CUDAExecutionProvider"
        return
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="no CUDA device"):
        onnx_providers("cuda")
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_export_config_checks() -> None:
    cfg = ExportConfig.from_dict({"formats": "onnx, pt2", "opset": "21", "data": ""})
    assert cfg.format_list == ["onnx", "pt2"] and cfg.opset == 21
    with pytest.raises(ValueError, match="choose from onnx, torchscript, pt2"):
        ExportConfig(formats="onnx,tflite")
    with pytest.raises(ValueError, match="opset must be 18 or newer"):
        ExportConfig(opset=17)
    with pytest.raises(ValueError, match="unknown export parameter"):
        ExportConfig.from_dict({"model": "x"})


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real (tiny) training run on emitters, registered as zoo-emitters@champion, trained
    once per module: the store's folder, and a copy of it as it was."""
    folder = tmp_path_factory.mktemp("champion")
    with pytest.MonkeyPatch.context() as monkeypatch, temporary_store(folder, monkeypatch):
        train(TrainConfig.of(model="residual_mlp", loss="arcface", data="emitters", epochs=1,
                             batch_size=64, embedding_dim=16, experiment="zoo-emitters"))
        register_best(runs_of_experiment("zoo-emitters"), "test_precision_at_1")
    snapshot = tmp_path_factory.mktemp("champion-as-trained")
    _copy_store(folder, snapshot)
    return folder, snapshot


def _copy_store(source: Path, target: Path) -> None:
    """``target`` made equal to the store in ``source``: its files, and its database through
    SQLite's backup (connections MLflow keeps open to ``target`` then read the copy)."""
    for item in target.iterdir():
        if not item.name.startswith("mlflow.db"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.copytree(source, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("mlflow.db*"))
    with contextlib.closing(sqlite3.connect(source / "mlflow.db")) as src, \
            contextlib.closing(sqlite3.connect(target / "mlflow.db")) as dst:
        src.backup(dst)


@pytest.fixture
def champion(champion_store: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[str]:
    """zoo-emitters@champion in a store as training left it, set for this test and its
    children: the module's copy put back in place (the store names its files by path)."""
    folder, snapshot = champion_store
    _copy_store(snapshot, folder)
    with temporary_store(folder, monkeypatch):
        yield "models:/zoo-emitters@champion"


def test_the_model_carries_its_recipe(champion: str) -> None:
    """Export, evaluate and distill rebuild a model's inputs and split from what the model
    records, read from its MLmodel metadata without loading weights; the run's parameters
    are only the fallback for models logged before they carried a recipe."""
    from types import SimpleNamespace

    from training.tracking.model_source import model_record, resolve_model, training_config

    source = resolve_model(champion)
    run = mlflow.MlflowClient().get_run(source.run_id)
    record = model_record(source)
    recipe = record.recipe
    assert (record.model, record.loss, record.dataset, record.run_id) == (
        "residual_mlp", "arcface", "emitters", source.run_id)
    assert (recipe["data"], recipe["model"], recipe["embedding_dim"]) == ("emitters",
                                                                          "residual_mlp", 16)
    assert (recipe["seed"], recipe["val_fraction"], recipe["test_fraction"],
            recipe["open_set"]) == (0, 0.15, 0.2, 0.0)
    expected = TrainConfig.of(model="residual_mlp", loss="arcface", data="emitters", epochs=1,
                              batch_size=64, embedding_dim=16, experiment="zoo-emitters")
    assert recipe == expected.params()
    no_run = SimpleNamespace(data=SimpleNamespace(params={}, tags={}))
    assert training_config(source, no_run) == expected  # the run is not needed
    legacy = SimpleNamespace()  # a module without a record: logged before models carried one
    assert training_config(source, run, legacy) == TrainConfig.from_run(run.data.params,
                                                                        run.data.tags)


def eager_classes(uri: str) -> list[str]:
    return mlflow.pytorch.load_model(uri).record.class_names


def _env(uri: str) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent  # MLproject commands call `python` from PATH
    return {**os.environ, "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_export_logs_files_and_tags_and_fails_loudly(
    champion: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("zoo-emitters", "champion")
    before = client.get_run(version.run_id).info

    result = export_model(ExportConfig(model_uri=champion))
    assert result.ok and "onnx model: models:/m-" in capsys.readouterr().out
    run = client.get_run(version.run_id)
    assert (run.info.status, run.info.end_time) == ("FINISHED", before.end_time)
    for fmt in FORMATS:
        assert run.data.metrics[f"export_{fmt}_max_abs_diff"] <= 1e-4
        assert run.data.metrics[f"export_{fmt}_top1_agreement"] >= 0.999
        assert run.data.metrics[f"export_{fmt}_mean_cosine"] > 0.9999
    files = {a.path for a in client.list_artifacts(version.run_id, "export")}
    assert files == {"export/model.onnx", "export/model.torchscript.pt", "export/model.pt2",
                     "export/parity.json", "export/gallery", "export/weights"}
    # The default gallery: the training split's embeddings, with the run's FAR 1e-3 threshold.
    gallery = Gallery.load(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{version.run_id}/{names.EXPORT_DIR}/{names.GALLERY_DIR}")))
    assert len(gallery) == int(run.data.params["train_samples"])
    assert gallery.threshold == run.data.metrics["test_threshold_at_far_1e-3"]
    assert set(gallery.identities) <= set(eager_classes(champion))
    tags = client.get_model_version("zoo-emitters", version.version).tags
    assert tags[names.EXPORTED_TAG] == "true" and float(tags["export_onnx_max_abs_diff"]) <= 1e-4

    # The logged ONNX model loads with mlflow.onnx and as pyfunc, and answers like PyTorch.
    onnx_uri = tags[names.ONNX_MODEL_URI_TAG]
    assert {p.key for p in mlflow.onnx.load_model(onnx_uri).metadata_props} >= {
        "preprocessing", "class_names"}
    eager = mlflow.pytorch.load_model(champion).eval()
    x = torch.randn(5, 12)
    predicted = mlflow.pyfunc.load_model(onnx_uri).predict(x.numpy())
    with torch.no_grad():
        expected = eager(x)
    assert np.abs(predicted["embedding"] - expected["embedding"].numpy()).max() < 1e-4
    assert (predicted["logits"].argmax(1) == expected["logits"].numpy().argmax(1)).all()

    # An export whose ONNX answers differ fails: non-zero, version no longer "exported".
    real_load = training.pipeline.export.load_exported

    def deviant(fmt, path, *args, **kwargs):
        runner = real_load(fmt, path, *args, **kwargs)
        if fmt != "onnx":
            return runner
        return lambda b: {k: v + 1e-3 for k, v in runner(b).items()}

    monkeypatch.setattr(training.pipeline.export, "load_exported", deviant)
    with pytest.raises(RuntimeError, match="onnx: embeddings differ by up to 0.001"):
        export_model(ExportConfig(model_uri=champion))
    tags = client.get_model_version("zoo-emitters", version.version).tags
    assert names.EXPORTED_TAG not in tags and "embeddings differ" in tags[names.EXPORT_ERROR_TAG]
    assert client.get_run(version.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_mlflow_run_export_entry_point(champion: str, tmp_path: Path) -> None:
    tracking_uri = mlflow.get_tracking_uri()
    ok = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "export",
         "--env-manager", "local", "--experiment-name", "exports", "-P", f"model_uri={champion}",
         "-P", "formats=onnx", "-P", "time_runtimes=false"],  # timed in test_the_faster_runtime_*
        cwd=tmp_path, env=_env(tracking_uri), capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "export of zoo-emitters @champion = v1" in ok.stdout
    runs = mlflow.search_runs(experiment_names=["exports"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["export_onnx_top1_agreement"] >= 0.999
    assert mlflow.MlflowClient().get_model_version("zoo-emitters", "1").tags[
        names.EXPORT_FORMATS_TAG] == "onnx"

    miss = subprocess.run(
        [sys.executable, "-m", "training.commands.export", "--model_uri",
         "models:/zoo-emitters@nope"],
        cwd=tmp_path, env=_env(tracking_uri), capture_output=True, text=True, timeout=300)
    assert miss.returncode == 1
    assert "registered model 'zoo-emitters' has no alias @nope" in miss.stderr
    assert "mlflow run . -e sweep" in miss.stderr and "@champion" in miss.stderr


@pytest.fixture
def parts_champion(tracking_uri: str, tmp_path: Path) -> str:
    """A tiny part-based image model (the shape of faces-small, on resnet18 because it builds
    faster than vgg11_bn: read at stage 2 on a 2x2 grid, one embedding and one cosine head
    per cell, grey input), trained for one epoch on 36 small images of 3 classes, registered."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "shapes" / f"c{c}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 60, (32, 32)) + 150 * (np.arange(32) // 11 == c)[None, :]
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "shapes" / f"c{c}/{i}.png")
    cfg = TrainConfig.of(model="resnet18", stage=2, grid=2, parts=True, channels=1,
                         loss="arcface", data=str(tmp_path / "shapes"), image_size=32, epochs=1,
                         batch_size=16, embedding_dim=16, experiment="zoo-shapes", plots=False,
                         val_fraction=0.2, test_fraction=0.25, monitor="none")
    train(cfg)
    register_best(runs_of_experiment("zoo-shapes"), "test_precision_at_1")
    (model,) = mlflow.MlflowClient().search_registered_models()
    return f"models:/{model.name}@champion"


def test_export_saves_weights_the_server_rebuilds_without_unpickling(
    parts_champion: str, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = export_model(ExportConfig(model_uri=parts_champion, formats="onnx"))
    assert result.ok and result.weights_saved and result.weights_error is None
    run_id = result.source.run_id
    client = mlflow.MlflowClient()
    folder = f"{names.EXPORT_DIR}/{names.WEIGHTS_DIR}"
    files = {a.path for a in client.list_artifacts(run_id, folder)}
    assert files == {f"{folder}/{names.WEIGHTS_FILE}", f"{folder}/{names.RECIPE_FILE}"}
    recipe = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/{folder}/{names.RECIPE_FILE}")).read_text())
    assert recipe["build"]["name"] == "resnet18"
    assert recipe["build"]["kwargs"]["parts"] is True and recipe["head"]["type"] == "parts"
    assert ModelRecord.from_dict(recipe[names.RECORD_KEY]).input_size == (1, 32, 32)

    # The server's path: nothing is unpickled (pickled modules and torch.load both refuse).
    bundle = fetch_bundle(parts_champion, tmp_path / "cache")
    assert (bundle.weights_path / names.WEIGHTS_FILE).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the serving path unpickled something")

    with monkeypatch.context() as patched:
        patched.setattr(mlflow.pytorch, "load_model", refuse)
        patched.setattr(torch, "load", refuse)
        module = bundle.load_pytorch()
    assert not module.training and module.record == bundle.info.record
    assert module.record.model == "resnet18" and module.record.loss == "arcface"
    assert not (bundle.path / "pytorch").exists()  # the pickled module is not fetched
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = module(x)
    onnx_out = load_exported("onnx", bundle.onnx_path)(x.numpy())
    assert np.abs(out["embedding"].numpy() - onnx_out["embedding"]).max() < 1e-4
    assert np.abs(out["logits"].numpy() - onnx_out["logits"]).max() < 1e-3
    eager = mlflow.pytorch.load_model(parts_champion).eval()  # the test may unpickle
    with torch.no_grad():
        expected = eager(x)
    assert torch.equal(out["embedding"], expected["embedding"])
    assert torch.equal(out["logits"], expected["logits"])

    # A bundle fetched before the weights were exported: GradCAM says how to export again,
    # and the next fetch adds them once the version has them.
    shutil.rmtree(bundle.weights_path)
    with pytest.raises(LookupError, match="exported without PyTorch weights") as miss:
        Bundle.open(bundle.path).load_pytorch()
    assert f"mlflow run . -e export --env-manager local -P model_uri={parts_champion}" in str(
        miss.value)
    again = fetch_bundle(parts_champion, tmp_path / "cache")
    assert again.path == bundle.path and (again.weights_path / names.WEIGHTS_FILE).is_file()


def test_weights_are_skipped_not_fatal_when_a_rebuild_differs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, 16, image_size=32).eval()
    example = torch.randn(2, 3, 32, 32)
    assert save_rebuildable(model, example, tmp_path / "ok") is None
    assert {p.name for p in (tmp_path / "ok").iterdir()} == {names.WEIGHTS_FILE, names.RECIPE_FILE}

    build = json.loads(json.dumps(model.record.build))
    misfit = {**build, "kwargs": {**build["kwargs"], "grid": 2}}  # no longer fits the weights
    model.record = model.record.with_(build=misfit)
    reason = save_rebuildable(model, example, tmp_path / "bad")
    assert reason is not None and "cannot rebuild" in reason and not (tmp_path / "bad").exists()
    model.record = model.record.with_(build=None)
    assert "no build recipe" in save_rebuildable(model, example, tmp_path / "none")
    # a model logged before recipes: the recipe comes from its run's config instead
    assert save_rebuildable(model, example, tmp_path / "old", lambda: build) is None
    assert json.loads((tmp_path / "old" / names.RECIPE_FILE).read_text())["build"] == build
    # tabular models too: the PyTorch runtime serves from these weights
    assert save_rebuildable(create_model("residual_mlp", 3, 8, num_features=4),
                            torch.randn(2, 4), tmp_path / "tab") is None


def test_the_faster_runtime_is_timed_tagged_and_served(
        champion: str, tmp_path: Path) -> None:
    """The export times ONNX Runtime against PyTorch and tags the faster on the version; a
    server runs it unless ZOO_RUNTIME says otherwise, and both answer alike; `retime` times
    again and a server started afterwards follows the new tag."""
    from serving.model.served import ServedModel
    from serving.settings import ServeSettings
    from training.pipeline.retime import RetimeConfig, retime
    from zoo.export.runtime_timing import RUNTIMES, RuntimeTiming
    from zoo.names import RUNTIME_TAG, TIMING_TAG

    result = export_model(ExportConfig(model_uri=champion, formats="onnx"))
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("zoo-emitters", "champion")
    timing = RuntimeTiming.from_json(version.tags[TIMING_TAG])
    assert timing == result.timing and version.tags[RUNTIME_TAG] == timing.faster
    assert set(timing.ms) == set(RUNTIMES)
    assert all(set(ms) == {"1", "64"} and min(ms.values()) > 0 for ms in timing.ms.values())
    assert timing.threads >= 1 and timing.speedup() >= 1.0
    assert client.get_run(version.run_id).data.tags[RUNTIME_TAG] == timing.faster

    x = emitters_rows(8)

    def served(runtime: str, cache: str = "cache") -> tuple[str, dict]:
        bundle = fetch_bundle(champion, tmp_path / cache)
        threads = torch.get_num_threads()  # a served model sets torch's threads for its process
        model = ServedModel(bundle, ServeSettings(runtime=runtime, threads=1, workers=1,
                                                  gallery_dir=str(tmp_path / "gallery")))
        try:
            assert model.describe()["runtime"] == model.runtime.name
            return model.runtime.name, model.run(x)
        finally:
            model.close()
            torch.set_num_threads(threads)

    (ort_name, by_ort), (torch_name, by_torch) = served("onnxruntime"), served("pytorch")
    assert (ort_name, torch_name) == ("onnxruntime", "pytorch")
    for key in ("embedding", "logits"):
        assert np.abs(by_ort[key] - by_torch[key]).max() < 1e-4
    assert served("auto")[0] == timing.faster
    with pytest.raises(ValueError, match="ZOO_RUNTIME='tensorrt'"):
        ServeSettings(runtime="tensorrt").check()

    other = next(r for r in RUNTIMES if r != timing.faster)  # as if timed on other hardware
    client.set_model_version_tag("zoo-emitters", version.version, RUNTIME_TAG, other)
    assert served("auto")[0] == other  # the cached bundle follows the version's tag
    again = retime(RetimeConfig(model_uri=champion, threads=1))
    tags = client.get_model_version("zoo-emitters", version.version).tags
    assert tags[RUNTIME_TAG] == again.faster and RuntimeTiming.from_json(tags[TIMING_TAG]) == again
    assert served("auto")[0] == again.faster


def emitters_rows(n: int) -> np.ndarray:
    """Standardised rows of the emitters' width (what the served model takes)."""
    return np.random.default_rng(0).standard_normal((n, 12)).astype(np.float32)
