"""Distillation from a registered teacher and (ensemble) evaluation, in a real MLflow store."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

import training.pipeline.evaluate as evaluating
from tests.conftest import REPO
from training.pipeline.distill import DistillConfig, Distiller, distill
from training.pipeline.evaluate import EvaluateConfig, evaluate_models
from training.config import TrainConfig
from training.pipeline.run import train
from zoo import names
from zoo.data import Preprocessing, load_data, split_data
from zoo.record import ModelRecord

TEACHER = "models:/zoo-emitters@champion"


@pytest.fixture(scope="module")
def teacher(module_tracking_uri: str):
    """A registered tabular teacher (residual MLP, ArcFace, 64-d, open-set split), shared by
    the module's tests in one store."""
    result = train(TrainConfig.of(model="residual_mlp", loss="arcface", data="emitters", epochs=2,
                                  embedding_dim=64, open_set=0.3, seed=1))
    version = mlflow.register_model(result.model_uri, "zoo-emitters")
    mlflow.MlflowClient().set_registered_model_alias("zoo-emitters", "champion", version.version)
    return result


def test_student_learns_from_the_teacher_and_records_it(teacher) -> None:
    student = distill(DistillConfig.of(model="residual_mlp", teacher=TEACHER, epochs=3,
                                       embedding_dim=32, kd_weight=1.0, embedding_weight=2.0))
    client = mlflow.MlflowClient()
    run = client.get_run(student.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags[names.TEACHER_TAG] == TEACHER and tags[names.TEACHER_VERSION_TAG] == "1"
    assert tags[names.TEACHER_RUN_TAG] == teacher.run_id
    assert run.info.run_name == "residual_mlp-arcface-distilled"
    # data and split come from the teacher's run
    assert (params["data"], params["open_set"], params["seed"]) == ("emitters", "0.3", "1")
    assert params["kd_weight"] == "1.0" and params["kd_temperature"] == "4.0"
    kd = [m.value for m in client.get_metric_history(student.run_id, "train_loss_kd")]
    emb = [m.value for m in client.get_metric_history(student.run_id, "train_loss_embedding")]
    assert len(kd) == len(emb) == 3
    assert kd[-1] < kd[0] and emb[-1] < emb[0]  # the student moves towards its teacher
    assert run.data.metrics["test_accuracy"] > 0.3  # 10 classes


def test_distiller_projects_and_matches_the_teachers_preprocessing(teacher) -> None:
    model = mlflow.pytorch.load_model(teacher.model_uri)
    pre = model.record.pre
    student_pre = dataclasses.replace(pre, mean=[m + 1.0 for m in pre.mean],
                                      std=[s * 2 for s in pre.std])
    cfg = DistillConfig.of(embedding_dim=16, kd_weight=0.0)
    from zoo.losses import create_loss

    distiller = Distiller(model, create_loss("arcface", 10, 16), 16, cfg, student_pre, pre)
    assert distiller.weights == {"embedding": 1.0}
    assert distiller.project.weight.shape == (64, 16)  # student 16-d → teacher 64-d
    raw = torch.randn(4, len(pre.mean))
    as_student = (raw - torch.tensor(student_pre.mean)) / torch.tensor(student_pre.std)
    as_teacher = (raw - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(distiller.teacher_view(as_student), as_teacher, atol=1e-5)


def test_distill_refuses_a_teacher_of_other_classes(teacher) -> None:
    with pytest.raises(ValueError, match="teacher was trained on classes"):
        distill(DistillConfig.of(model="residual_mlp", teacher=TEACHER, open_set=0.5, epochs=1))
    with pytest.raises(ValueError, match="takes tabular data but 'digits' is image data"):
        distill(DistillConfig.of(model="residual_mlp", teacher=TEACHER, data="digits", epochs=1))
    with pytest.raises(LookupError, match="@nope"):
        distill(DistillConfig.of(teacher="models:/zoo-emitters@nope"))


@pytest.mark.slow
def test_mlflow_run_distill_entry_point(teacher, module_tracking_uri: str, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": module_tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(bin_dir / "mlflow"), "run", str(REPO), "-e", "distill", "--env-manager", "local",
         "--experiment-name", "distill", "-P", f"teacher={TEACHER}", "-P", "model=residual_mlp",
         "-P", "data=auto",
         "-P", "epochs=1", "-P", "embedding_dim=32"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = mlflow.search_runs(experiment_names=["distill"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TEACHER_VERSION_TAG] == "1"
    assert run.data.params["data"] == "auto"  # as mlflow run logged it ...
    assert run.data.tags[names.resolved_tag("data")] == "emitters"  # ... and what auto became
    assert "train_loss_kd" in run.data.metrics


def test_evaluate_reproduces_a_run_and_scores_an_ensemble(teacher) -> None:
    alone = evaluate_models(EvaluateConfig(model_uri=TEACHER))
    for key in ("test_precision_at_1", "test_map_at_r", "test_accuracy", "open_map_at_r"):
        assert alone[key] == pytest.approx(teacher.metrics[key], abs=1e-6), key
    other = train(TrainConfig.of(model="residual_mlp", loss="softmax", data="emitters", epochs=2,
                                 embedding_dim=32, open_set=0.3, seed=1, experiment="other"))
    both = evaluate_models(EvaluateConfig(model_uri=f"{TEACHER},{other.model_uri}"))
    runs = mlflow.search_runs(experiment_names=["zoo-emitters"], output_format="list",
                              filter_string=f"tags.`{names.EVALUATION_TAG}` = 'ensemble'")
    assert len(runs) == 1 and runs[0].data.tags[names.MEMBERS_TAG] == f"{TEACHER},{other.model_uri}"
    training_only = {"best_epoch", "train_time_s", "classifier_scale",
                     *(k for k in teacher.metrics if k.startswith("best_val_"))}
    assert set(teacher.metrics) - training_only <= set(both)
    # the ensemble's similarity is the mean of the members': it ranks between or above them
    worst = min(teacher.metrics["test_map_at_r"], other.metrics["test_map_at_r"])
    assert both["test_map_at_r"] >= worst - 0.02


def test_evaluate_reads_images_as_the_models_record_says(monkeypatch) -> None:
    """Size, channels, resize filter, mean and std come from the record (as the server reads
    them), not from what the recipe would give; the recipe still says which data and split."""
    recipe = TrainConfig.of(model="resnet18", loss="softmax", data="digits", image_size=32,
                            channels=3, seed=3)
    pre = Preprocessing(kind="image", input_size=(1, 16, 16), mean=[0.3], std=[0.2],
                        class_names=[str(d) for d in range(10)], interpolation="bicubic")
    model = torch.nn.Module()
    model.record = ModelRecord(model="resnet18", embedding_dim=8, preprocessing=pre,
                               recipe=recipe.params())
    run = SimpleNamespace(info=SimpleNamespace(experiment_id="0"))
    monkeypatch.setattr(evaluating, "load_source",
                        lambda uri: (SimpleNamespace(version=None, run_id="r"), run, model))
    member = evaluating.load_member("models:/m-recorded", "")
    read = load_data("digits", image_size=16, channels=1, interpolation="bicubic", seed=3)
    expected = split_data(read, seed=3, val_fraction=recipe.data.val_fraction,
                          test_fraction=recipe.data.test_fraction, mean=[0.3], std=[0.2])
    assert member.test.x.shape[1:] == (1, 16, 16)
    assert torch.equal(member.test.x[:], expected.test.x[:])


def test_evaluate_normalises_rows_with_the_records_statistics(teacher, monkeypatch) -> None:
    """A record whose mean and std differ from its training split's is honoured."""
    as_trained = evaluating.load_member(TEACHER, "")
    pre = as_trained.model.record.pre
    shifted = dataclasses.replace(pre, mean=[m + 1.0 for m in pre.mean],
                                  std=[s * 2 for s in pre.std])
    load_source = evaluating.load_source

    def load_shifted(uri: str):
        source, run, model = load_source(uri)
        model.record = model.record.with_(preprocessing=shifted)
        return source, run, model

    monkeypatch.setattr(evaluating, "load_source", load_shifted)
    member = evaluating.load_member(TEACHER, "")
    raw = as_trained.test.x * torch.tensor(pre.std) + torch.tensor(pre.mean)
    expected = (raw - torch.tensor(shifted.mean)) / torch.tensor(shifted.std)
    assert torch.allclose(member.test.x, expected, atol=1e-5)


def test_ensemble_needs_one_split(teacher) -> None:
    other = train(TrainConfig.of(model="residual_mlp", loss="softmax", data="emitters", epochs=1,
                                 embedding_dim=32, open_set=0.3, seed=2, experiment="other",
                                 log_model=True))
    with pytest.raises(ValueError, match="seed=1.*seed=2"):
        evaluate_models(EvaluateConfig(model_uri=f"{TEACHER},{other.model_uri}"))
