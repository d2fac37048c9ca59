"""The sweep: nested runs, comparison artifacts, failures, resume, registration."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import training.pipeline.run
from training.pipeline.sweep import SweepConfig, run_sweep
from zoo import names

TINY = dict(data="emitters", epochs=1, batch_size=64, embedding_dim=16, log_model=True,
            plots=False)


def _children(parent_id: str) -> list:
    return mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
    )


def _parent(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`{names.SWEEP_TAG}` = 'parent'")
    assert len(runs) == 1
    return runs[0]


def test_grid_defaults_follow_the_data_kind() -> None:
    cfg = SweepConfig()
    image = cfg.combinations("image")
    assert {m for m, _ in image} == {"resnet18", "convnext_atto", "mobilenetv3_small_100"}
    assert len(image) == 3 * 11  # the reconstruction losses are left out for images
    tabular = cfg.combinations("tabular")
    assert {m for m, _ in tabular} == {"residual_mlp", "ft_transformer", "vae", "sae"}
    assert len(tabular) == 2 * 11 + 2 + 1  # vae: elbo, sparse_recon; sae: sparse_recon
    picked = SweepConfig.of(models="resnet18", losses="arcface, triplet").combinations("image")
    assert picked == [("resnet18", "arcface"), ("resnet18", "triplet")]


def test_failure_is_recorded_and_resume_runs_only_what_is_missing(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_fit = training.pipeline.run.fit

    def flaky_fit(model, loss_fn, *args, **kwargs):
        if type(loss_fn).__name__ == "ClassifierLoss" or "softmax" in repr(loss_fn).lower():
            raise RuntimeError("injected failure")
        return real_fit(model, loss_fn, *args, **kwargs)

    monkeypatch.setattr(training.pipeline.run, "fit", flaky_fit)
    # workers=1: the injected failure is patched into this process.
    cfg = SweepConfig.of(models="residual_mlp", losses="softmax,arcface,supcon",
                         experiment="sweep-test", workers=1, **TINY)
    first = run_sweep(cfg)
    out = capsys.readouterr().out
    failed = [o for o in first if o.error]
    assert [(o.model, o.loss) for o in failed] == [("residual_mlp", "softmax")]
    assert "injected failure" in failed[0].error
    assert "1 of 3 combinations failed" in out and "residual_mlp-softmax" in out

    parent = _parent("sweep-test")
    children = _children(parent.info.run_id)
    status = {r.data.tags[names.LOSS_TAG]: r.info.status for r in children}
    assert status == {"softmax": "FAILED", "arcface": "FINISHED", "supcon": "FINISHED"}
    failed_run = next(r for r in children if r.info.status == "FAILED")
    assert "injected failure" in failed_run.data.tags[names.ERROR_TAG]
    for child in children:
        assert child.data.tags[names.SWEEP_TAG] == parent.info.run_id
        assert child.info.run_name == f"residual_mlp-{child.data.tags[names.LOSS_TAG]}"
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison.md",
            "comparison/heatmap.png"} <= artifacts
    # The sweep's last step exported the new champion, with its parity figures.
    champion = client.get_model_version_by_alias("zoo-emitters", "champion")
    assert champion.tags[names.EXPORTED_TAG] == "true"
    assert float(champion.tags["export_onnx_max_abs_diff"]) <= 1e-4
    assert "export of zoo-emitters @champion" in out
    table = Path(client.download_artifacts(parent.info.run_id, "comparison/comparison.csv"))
    text = table.read_text()
    assert "pixels" in text and "pca" in text and "FAILED" in text

    # Resume: only the failed combination runs again; the finished ones are kept.
    monkeypatch.setattr(training.pipeline.run, "fit", real_fit)
    second = run_sweep(cfg.replace(resume=parent.info.run_id))
    assert not [o for o in second if o.error]
    children = _children(parent.info.run_id)
    assert len(children) == 4  # the old FAILED softmax run stays, one new FINISHED one
    assert sorted(r.data.tags[names.LOSS_TAG] for r in children
                  if r.info.status == "FINISHED") == ["arcface", "softmax", "supcon"]
    version = client.get_model_version_by_alias("zoo-emitters", "champion")
    assert version.run_id in {r.info.run_id for r in children}
    assert client.get_model_version_by_alias("zoo-emitters", "supcon-best")


def test_seeds_train_each_combination_per_split_and_the_table_averages_them(
    tracking_uri: str, capsys: pytest.CaptureFixture
) -> None:
    cfg = SweepConfig.of(models="residual_mlp", losses="softmax", seeds="0,1", experiment="seeds",
                         workers=1, register=False, **TINY)
    first = run_sweep(cfg)
    assert sorted(o.job.seed for o in first) == [0, 1]
    parent = _parent("seeds")
    children = _children(parent.info.run_id)
    assert sorted(r.info.run_name for r in children) == ["residual_mlp-softmax-seed0",
                                                          "residual_mlp-softmax-seed1"]
    values = [r.data.metrics["test_precision_at_1"] for r in children]
    client = mlflow.MlflowClient()
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison/comparison.csv"))
    row = table[table["model"] == "residual_mlp"].iloc[0]
    assert row["runs"] == 2
    assert row["test_precision_at_1"] == pytest.approx(np.mean(values))
    assert row["test_precision_at_1_std"] == pytest.approx(np.std(values))
    pixels = table[table["model"] == "pixels"].iloc[0]
    assert pixels["runs"] == 2  # the baselines are measured on both splits too
    assert parent.data.params["seeds"] == "0,1"
    assert "mean ± std over seeds 0,1" in capsys.readouterr().out

    # a resume is the sweep it resumes: another list of seeds is another sweep
    with pytest.raises(ValueError, match=f"resume={parent.info.run_id} is the sweep of "
                                         "seeds=0,1, not seeds=0,1,2"):
        run_sweep(cfg.replace(seeds="0,1,2", resume=parent.info.run_id))
    assert len(_children(parent.info.run_id)) == 2


def test_resume_continues_a_killed_child_from_its_checkpoint(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fit = training.pipeline.run.fit

    def interrupted_fit(*args, on_checkpoint=None, **kwargs):
        def save_then_stop(state):
            on_checkpoint(state)
            if state["epoch"] == 1:
                raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint
        return real_fit(*args, on_checkpoint=save_then_stop, **kwargs)

    monkeypatch.setattr(training.pipeline.run, "fit", interrupted_fit)
    cfg = SweepConfig.of(models="residual_mlp", losses="arcface", experiment="killed", workers=1,
                         register=False, **{**TINY, "epochs": 3})
    with pytest.raises(KeyboardInterrupt, match="resume it with: mlflow run . -e sweep "
                                                "--env-manager local -P resume=") as stopped:
        run_sweep(cfg)
    parent = mlflow.search_runs(experiment_names=["killed"], output_format="list",
                                filter_string=f"tags.`{names.SWEEP_TAG}` = 'parent'")[0]
    assert str(stopped.value).endswith(f"-P resume={parent.info.run_id}")
    assert parent.info.status == "KILLED"
    [child] = _children(parent.info.run_id)
    assert child.info.status == "KILLED"

    monkeypatch.setattr(training.pipeline.run, "fit", real_fit)
    [outcome] = run_sweep(cfg.replace(resume=parent.info.run_id))
    assert outcome.run_id == child.info.run_id and not outcome.error
    [again] = _children(parent.info.run_id)  # the same run went on; no second child
    assert again.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def _mlflow_run_sweep(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                      **params: object) -> tuple[int, str, str]:
    """What ``mlflow run . -e sweep --env-manager local -P name=value ...`` does, in this
    process: a run in Default with the parameters logged as MLflow logs them (each declared
    one, its default when not given, and those given; shell-quoted), then the entry point's
    command, as MLflow composes it, in that run (``MLFLOW_RUN_ID``)."""
    import shlex

    import yaml
    from mlflow.utils.string_utils import quote

    from tests.conftest import REPO
    from training.commands.sweep import main

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["sweep"]
    declared = {k: str(params.get(k, v["default"])) for k, v in entry["parameters"].items()}
    extra = {k: str(v) for k, v in params.items() if k not in declared}
    client = mlflow.MlflowClient()
    run = client.create_run("0")
    for key, value in {**declared, **extra}.items():
        client.log_param(run.info.run_id, key, quote(value))
    command = entry["command"].format(**{k: quote(v) for k, v in declared.items()})
    command += "".join(f" --{k} {quote(v)}" for k, v in extra.items())
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    try:
        code = main(shlex.split(command)[3:])  # after python -m training.commands.sweep
    finally:
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # mlflow.end_run drops it
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_a_resume_is_the_sweep_it_resumes(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Through ``mlflow run``'s command line: a 2 x 2 sweep, resumed with nothing but
    ``-P resume``, trains no new child (the grid, epochs and the rest are the parent's, not
    the entry point's defaults); a ``-P`` that differs from the parent's is refused naming
    both values; after one child fails, exactly that one trains again, as the parent did."""
    code, out, err = _mlflow_run_sweep(
        monkeypatch, capsys, models="residual_mlp,ft_transformer", losses="softmax,arcface",
        data="emitters", epochs=1, batch_size=64, embedding_dim=16, plots="false", workers=1,
        export="false")
    assert code == 0, err[-3000:]
    parent = _parent("Default")  # where mlflow run makes its run without --experiment-name
    pid = parent.info.run_id
    first = _children(pid)
    assert len(first) == 4 and {r.info.status for r in first} == {"FINISHED"}
    assert "parameter " not in err  # no parameter disagrees with what mlflow run logged
    assert "seeds" not in parent.data.params or parent.data.params["seeds"] != "''"

    code, out, err = _mlflow_run_sweep(monkeypatch, capsys, resume=pid)
    assert code == 0, err[-3000:]
    assert len(_children(pid)) == 4  # nothing missing or failed: nothing trained
    assert "4 runs on emitters, 4 already finished, 0 to train" in err

    code, out, err = _mlflow_run_sweep(monkeypatch, capsys, resume=pid, epochs=5, losses="all")
    assert code == 1 and out == ""
    [line] = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: resume={pid} is the sweep of epochs=1; losses=softmax,"
                           "arcface, not epochs=5; losses=all: a resume takes every parameter "
                           "from the sweep it resumes"), line
    # the parent's own values may be given, and how the sweep runs may change
    code, out, err = _mlflow_run_sweep(monkeypatch, capsys, resume=pid, epochs=1,
                                       losses="softmax, arcface", workers=2)
    assert code == 0, err[-3000:]
    assert len(_children(pid)) == 4

    failed = first[0]
    mlflow.MlflowClient().set_terminated(failed.info.run_id, "FAILED")
    code, out, err = _mlflow_run_sweep(monkeypatch, capsys, resume=pid)
    assert code == 0, err[-3000:]
    after = _children(pid)
    [new] = [r for r in after if r.info.run_id not in {c.info.run_id for c in first}]
    assert len(after) == 5 and new.info.status == "FINISHED"
    assert ((new.data.tags["zoo.model"], new.data.tags["zoo.loss"])
            == (failed.data.tags["zoo.model"], failed.data.tags["zoo.loss"]))
    assert (new.data.params["epochs"], new.data.params["embedding_dim"],
            new.data.params["batch_size"]) == ("1", "16", "64")  # the parent's, not defaults


def test_a_parent_logged_by_an_older_mlflow_run_reads_back_as_it_ran(tracking_uri: str) -> None:
    """Before the sweep declared only ``resume``, ``mlflow run`` logged every declared
    parameter, at its default when not given and shell-quoted (``''``, ``'my photos'``), and a
    preset's values disagreed with those defaults: the sweep they ran is still what a resume
    reads, and only a value given that differs from it is refused."""
    from training.pipeline.sweep import check_resume, parent_config, sweep_config

    client = mlflow.MlflowClient()
    run = client.create_run("0", tags={"zoo.sweep": "parent"})
    logged = {"models": "all", "losses": "cosface", "data": "'my photos'", "epochs": "5",
              "image_size": "32", "seeds": "''", "workers": "2", "backend": "local",
              "preset": "faces-small", "resume": "auto", "grid_size": "1"}
    for key, value in logged.items():
        client.log_param(run.info.run_id, key, value)
    parent = client.get_run(run.info.run_id)
    cfg = parent_config(parent)
    assert cfg.train.data.source == "my photos" and cfg.seeds is None
    assert cfg.train.optim.epochs == 60 and cfg.train.model.grid == 2  # as the preset set them
    assert (cfg.losses, cfg.resume) == ("cosface", run.info.run_id)
    resumed = sweep_config({"resume": run.info.run_id, "workers": "1"})
    check_resume(resumed, parent)  # how it runs may change
    assert resumed.workers == 1 and resumed.train.optim.epochs == 60
    with pytest.raises(ValueError, match="is the sweep of epochs=60, not epochs=5"):
        check_resume(sweep_config({"resume": run.info.run_id, "epochs": "5"}), parent)
    with pytest.raises(ValueError, match="is not a sweep's parent run"):
        sweep_config({"resume": client.create_run("0").info.run_id})
