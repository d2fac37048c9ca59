"""Hyperparameter search with Optuna: nested trial runs, pruning, the best trial on the parent."""
from __future__ import annotations

import mlflow
import pytest

from training.pipeline.tune import KNOBS, TuneConfig, run_tune
from training.config import TrainConfig
from zoo import names


def test_the_search_space_follows_the_loss() -> None:
    assert list(TuneConfig.of(loss="arcface").space()) == ["margin", "scale", "embedding_dim", "lr"]
    assert list(TuneConfig.of(loss="supcon").space()) == ["temperature", "embedding_dim", "lr"]
    assert list(TuneConfig.of(loss="softmax").space()) == ["embedding_dim", "lr"]
    assert TuneConfig.of(loss="cosface").space()["margin"].high == 0.5  # a cosine, not an angle
    assert list(TuneConfig.of(loss="triplet+center:0.3", search="margin,weight_decay").space()) \
        == ["margin", "weight_decay"]
    with pytest.raises(ValueError, match=r"loss 'supcon' has no margin to search \(its own: "
                                         r"temperature\)"):
        TuneConfig.of(loss="supcon", search="margin").space()
    with pytest.raises(ValueError, match="cannot search epochs; choose among margin"):
        TuneConfig.of(search="lr,epochs").space()
    with pytest.raises(ValueError, match="monitor to a val_ metric"):
        TuneConfig.of(monitor="none")


def test_a_trial_keeps_the_recipe_and_splits_part_embeddings_evenly() -> None:
    cfg = TuneConfig.of(preset="faces-small", epochs=7)
    child = cfg.trial_config({"embedding_dim": 32, "lr": 0.001})
    assert type(child) is TrainConfig and child.execution.checkpoint is False
    assert (child.optim.epochs, child.optim.lr, child.model.grid,
            child.model.parts) == (7, 0.001, 2, True)
    # trials are compared on validation data, which the recipe would have given up
    assert (child.optim.monitor, child.data.val_fraction) == ("val_map_at_r", 0.15)
    assert child.model.embedding_dim == 32  # 4 parts of 8
    assert cfg.trial_config({"embedding_dim": 2}).model.embedding_dim == 4  # at least one per part


@pytest.mark.slow
def test_trials_are_nested_runs_and_the_best_is_logged_on_the_parent(
        tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TuneConfig.of(model="residual_mlp", loss="arcface", data="emitters", epochs=3,
                        batch_size=64, trials=5, startup_trials=1, prune_after=1,
                        log_model=False, plots=False, experiment="tune")
    study = run_tune(cfg)
    [parent] = mlflow.search_runs(experiment_names=["tune"], output_format="list",
                                  filter_string=f"tags.`{names.TUNE_TAG}` = 'parent'")
    trials = mlflow.search_runs(experiment_names=["tune"], output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == len(study.trials) == 5 and parent.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    finished = {}
    for run in trials:
        state = run.data.tags[names.TRIAL_STATE_TAG]
        epochs = len(client.get_metric_history(run.info.run_id, "val_map_at_r"))
        if state == "pruned":  # stopped early, and not counted as a failure
            assert run.info.status == "KILLED" and epochs < cfg.train.optim.epochs
        else:
            assert state == "complete" and run.info.status == "FINISHED"
            assert epochs == cfg.train.optim.epochs
            finished[run.info.run_id] = run
        for name, knob in KNOBS.items():
            if name in ("margin", "scale", "lr"):
                assert knob.low <= float(run.data.params[name]) <= knob.high
        assert run.data.params["embedding_dim"] in {"32", "64", "128", "256"}
    assert any(r.data.tags[names.TRIAL_STATE_TAG] == "pruned" for r in trials)

    # the best trial: the finished one with the best validation MAP@R; its values on the parent
    best = max(finished.values(), key=lambda r: max(
        m.value for m in client.get_metric_history(r.info.run_id, "val_map_at_r")))
    assert parent.data.tags[names.BEST_RUN_TAG] == best.info.run_id
    for name in ("margin", "scale", "embedding_dim", "lr"):
        assert float(parent.data.params[f"best_{name}"]) == float(best.data.params[name])
    assert parent.data.metrics["best_val_map_at_r"] == pytest.approx(study.best_value)
    assert "tune/trials.csv" in [f.path for f in client.list_artifacts(parent.info.run_id, "tune")]
    out = capsys.readouterr().out
    assert f"best: trial {study.best_trial.number} (run {best.info.run_id})" in out
    assert f"-P lr={best.data.params['lr']}" in out
