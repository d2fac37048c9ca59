"""The training run, end to end against a real MLflow store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from tests.conftest import REPO
from training.config import TrainConfig
from training.pipeline.run import dataset_name, train
from zoo import names

FAST = dict(epochs=1, batch_size=32, embedding_dim=32, log_model=False)


def _only_run(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_dataset_name() -> None:
    assert dataset_name("digits") == "digits"
    assert dataset_name("../shared/data/orl_faces") == "orl_faces"
    assert dataset_name("some/dir/table.csv") == "table"
    assert dataset_name("folder:/x/y/faces") == "faces"


@pytest.mark.slow
def test_mlflow_run_arcface_entry_point_and_load_model(
        tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`mlflow run . -e arcface` for one epoch into a fresh store, as the README runs it (no
    --experiment-name: MLflow makes the run in Default); load the model back, and register
    it as the README's next step does, with experiment=zoo-digits."""
    bin_dir = Path(sys.executable).parent  # MLproject commands call `python` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    proc = subprocess.run(
        [str(mlflow_cli), "run", str(REPO), "-e", "arcface", "--env-manager", "local",
         "-P", "epochs=1", "-P", "embedding_dim=32"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run("Default")
    assert "parameter " not in proc.stderr  # no parameter disagrees with what mlflow logged
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resnet18-arcface"
    assert run.data.tags[names.MODEL_TAG] == "resnet18"
    assert run.data.tags[names.LOSS_TAG] == "arcface"
    assert run.data.tags[names.DATASET_TAG] == "digits"
    assert run.data.params["epochs"] == "1" and run.data.params["lr"] == "0.004"
    assert set(TrainConfig().to_params()) <= set(run.data.params)
    for key in ("test_accuracy", "test_top5_accuracy", "test_ece", "test_precision_at_1",
                "test_r_precision", "test_map_at_r", "test_nmi", "test_cluster_accuracy"):
        assert 0.0 <= run.data.metrics[key] <= 1.0, key
    client = mlflow.MlflowClient()
    for key in ("train_loss", "lr", "samples_per_s", "val_accuracy", "val_precision_at_1"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/curves.png", "plots/confusion_matrix.png", "plots/embeddings.png"} <= artifacts
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    model = mlflow.pytorch.load_model(run.data.tags[names.MODEL_URI_TAG]).eval()
    record = model.record
    assert record.class_names == [str(d) for d in range(10)]
    assert record.input_size == (3, 32, 32) and record.build["name"] == "resnet18"
    assert record.loss == "arcface" and record.dataset == "digits"
    assert record.run_id == run.info.run_id and record.recipe["epochs"] == 1
    assert model.zoo_meta["format"] == 1 and model.zoo_meta["preprocessing"]["input_size"] == [
        3, 32, 32]  # the dict form, as files and metadata hold it
    out = model(torch.randn(3, 3, 32, 32))
    assert out["embedding"].shape == (3, 32) and out["logits"].shape == (3, 10)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(3), atol=1e-5)
    logged = mlflow.models.get_model_info(run.data.tags[names.MODEL_URI_TAG])
    assert logged.signature is not None and logged.saved_input_example_info is not None

    from training.commands.register import main as register

    assert register(["--experiment", "zoo-digits", "--sweep", "auto"]) == 0
    out = capsys.readouterr().out
    assert "registering from 1 run(s) of data set digits in experiment 'Default'" in out
    champion = mlflow.MlflowClient().get_model_version_by_alias("zoo-digits", "champion")
    assert champion.run_id == run.info.run_id


def test_tabular_run_logs_open_set_metrics(tracking_uri: str) -> None:
    cfg = TrainConfig.of(model="residual_mlp", loss="supcon", data="emitters", open_set=0.3,
                         experiment="tab", **FAST)
    result = train(cfg)
    run = _only_run("tab")
    assert run.info.status == "FINISHED"
    assert {"open_precision_at_1", "open_map_at_r", "test_accuracy"} <= set(run.data.metrics)
    assert result.metrics["test_accuracy"] > 1 / 7  # better than chance after one epoch
    assert int(run.data.params["open_classes"]) >= 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(data="/no/such/folder"), "nor an existing file or folder"),
        (dict(loss="arcfce"), "unknown loss 'arcfce'"),
        (dict(model="resnet19"), "unknown model 'resnet19'"),
        (dict(model="resnet18", data="emitters"), "takes image data"),
    ],
)
def test_failed_run_is_marked_failed_with_error_tag(tracking_uri: str, overrides, message) -> None:
    with pytest.raises(Exception, match=message):
        train(TrainConfig.of(experiment="bad", **{**FAST, **overrides}))
    run = _only_run("bad")
    assert run.info.status == "FAILED"
    assert message in run.data.tags[names.ERROR_TAG]


def test_one_class_folder_fails_with_one_line(tracking_uri: str, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "only" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), i * 50).save(tmp_path / "only" / "a" / f"{i}.png")
    proc = subprocess.run(
        [sys.executable, "-m", "training.commands.train", "--data", str(tmp_path / "only"),
         "--experiment", "bad", "--epochs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "class" in last
    assert "Traceback" not in proc.stderr
    assert _only_run("bad").info.status == "FAILED"


def test_mlproject_is_generated_from_trainconfig() -> None:
    from training.mlproject import render

    assert (REPO / "MLproject").read_text() == render(), \
        "MLproject is stale: run `python -m training.mlproject > MLproject`"
    # mlflow run logs each declared default shell-quoted: an empty one would be the literal
    # '' on every run (and a warning of every sweep); an unset value is written auto
    assert 'default: ""' not in render()


def test_config_parsing() -> None:
    cfg = TrainConfig.from_dict({"epochs": "3", "margin": "", "hflip": "true", "lr": "1e-3"})
    assert (cfg.optim.epochs == 3 and cfg.loss.margin is None and cfg.data.hflip is True
            and cfg.optim.lr == 1e-3)
    with pytest.raises(ValueError, match=r"unknown training parameter\(s\): epoch \(did you mean "
                                         r"epochs\?\)"):
        TrainConfig.from_dict({"epoch": "3"})
    with pytest.raises(ValueError, match="epochs='x' is not a valid int"):
        TrainConfig.from_dict({"epochs": "x"})
    with pytest.raises(ValueError, match="schedule='linear' is not one of"):
        TrainConfig.of(schedule="linear")


def test_command_line_refuses_abbreviations_and_unknown_names(capsys) -> None:
    """argparse took ``--epoch`` for ``--epochs`` (and ``-P init=`` for ``--init_seed``
    before ``init`` existed); now each is refused with the name it most likely meant."""
    from training.cli import build_parser

    parser = build_parser(TrainConfig)
    assert parser.parse_args(["--epochs", "5", "--init_seed", "3"]).epochs == "5"
    for argv, message in ((["--epoch", "5"], "unknown parameter epoch; did you mean epochs?"),
                          (["--init_see=3"], "unknown parameter init_see; did you mean init_seed?"),
                          (["--wobble", "1"], "unknown parameter wobble (")):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_mlflow_run_refuses_an_unknown_parameter(tracking_uri: str, tmp_path: Path) -> None:
    """``mlflow run -P epoch=1`` (declared or not, MLflow hands it on as ``--epoch 1``) fails
    with the suggestion instead of training with ``epochs=1``."""
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "typo", "-P", "epoch=1"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
                                     "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0
    assert "error: unknown parameter epoch; did you mean epochs?" in proc.stderr
    assert _only_run("typo").info.status == "FAILED"


def test_orl_faces_folder_run(tracking_uri: str, orl_faces: Path) -> None:
    """A real folder-per-class tree of PGM files trains and reports the same metrics."""
    result = train(TrainConfig.of(data=str(orl_faces), experiment="orl", image_size=32, **FAST))
    run = _only_run("orl")
    assert run.data.tags[names.DATASET_TAG] == "orl_faces"
    assert run.data.params["num_classes"] == "40"
    for key in ("test_accuracy", "test_precision_at_1", "test_map_at_r", "test_nmi"):
        assert 0.0 <= result.metrics[key] <= 1.0
