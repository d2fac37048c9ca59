"""Search one loss's hyperparameters with Optuna.

Every trial is a nested run of one parent run (``zoo.tune``), trained like ``-e train`` with
the values Optuna's TPE sampler suggests for the loss's margin, scale or temperature, the
embedding size and the learning rate. Trials are compared on the validation ``monitor``
(never the test split, which stays an unbiased estimate of the winner), reported every epoch
so that Optuna's median pruner stops trials that fall behind the earlier ones; a pruned
trial's run ends KILLED with ``zoo.trial_state=pruned``. The best trial's parameters are
printed and logged on the parent as ``best_<name>`` parameters, with a table of all trials.

The command is ``python -m training.commands.tune`` (the MLproject ``tune``).
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import optuna
import pandas as pd

from training.config import FlatParams, TrainConfig, one_process_per_run, option, part
from training.pipeline.run import check_names, dataset_name, load_config_data, train
from training.pipeline.transfer import apply_init
from training.tracking.store import configure_tracking, log_params_once, training_run
from zoo import names
from zoo.data import LoadedData
from zoo.losses import check_loss, loss_parameters
from zoo.metrics import higher_is_better
from zoo.values import format_value

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Knob:
    """One searchable parameter: a range (log-uniform when ``log``), or a set of choices."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[int, ...] = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Optuna's suggestion; floats to 3 significant digits, so the parameters a trial
        logs are ones a person can type (``-P lr=0.00213``)."""
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        return float(f"{trial.suggest_float(name, self.low, self.high, log=self.log):.3g}")


#: What ``search`` may name, and the range searched. Margins are in radians for the angular
#: losses, a cosine offset for CosFace and a similarity gap for triplet.
KNOBS: dict[str, Knob] = {
    "margin": Knob(0.2, 0.7),
    "scale": Knob(16.0, 64.0),
    "temperature": Knob(0.03, 0.5, log=True),
    "embedding_dim": Knob(choices=(32, 64, 128, 256)),
    "lr": Knob(1e-4, 1e-2, log=True),
    "weight_decay": Knob(1e-3, 0.2, log=True),
    "dropout": Knob(0.0, 0.5),
}
MARGIN_RANGES = {"cosface": Knob(0.1, 0.5), "triplet": Knob(0.02, 0.5)}
#: The loss parameters ``search=auto`` tunes when the loss takes them.
LOSS_KNOBS = ("margin", "scale", "temperature")


@dataclass
class TuneConfig(FlatParams):
    """A hyperparameter search of one model × loss: ``train`` is each trial's starting
    point."""

    WHAT = "tune"

    #: Trials are compared on a validation split, which a preset may give up (faces-small
    #: trains on everything and keeps the last epoch): tuning keeps one.
    train: TrainConfig = part(TrainConfig, preset_skip=("monitor", "val_fraction"))

    trials: int = option(20, "trials (each one training run)")
    search: str = option("auto", "comma list of parameters to search among margin, scale, "
                             "temperature, embedding_dim, lr, weight_decay, dropout (auto: the "
                             "loss's margin, scale or temperature, embedding_dim and lr)")
    pruner: str = option("median", "stop a trial whose monitor is below the median of earlier "
                               "trials at the same epoch (none: train every trial to the end)",
                     ("median", "none"))
    prune_after: int = option(2, "epochs a trial always trains before it may be pruned")
    startup_trials: int = option(3, "trials that are never pruned and sampled at random, before "
                                "TPE takes over")
    timeout_s: float = option(0.0, "stop starting trials after this many seconds (0: no limit)")

    def __post_init__(self) -> None:
        one_process_per_run(self.train, "tune trains one trial at a time, in one process")
        if self.trials < 1:
            raise ValueError(f"trials must be at least 1, got {self.trials}")
        if self.train.optim.monitor == "none":
            raise ValueError("tune compares trials on the validation monitor: set monitor to a "
                             "val_ metric (e.g. val_map_at_r), not none")

    def space(self) -> dict[str, Knob]:
        """The parameters searched and their ranges."""
        takes = loss_parameters(self.train.loss.name)
        # a run from an init model keeps that model's embedding width
        names = ([k for k in LOSS_KNOBS if k in takes]
                 + (["lr"] if self.train.model.init else ["embedding_dim", "lr"])
                 if self.search.strip().lower() in ("", "auto")
                 else [s.strip() for s in self.search.split(",") if s.strip()])
        if self.train.model.init and "embedding_dim" in names:
            raise ValueError(f"search={self.search!r}: init={self.train.model.init} fixes "
                             "embedding_dim (the init model's width); leave it out of the search")
        unknown = [n for n in names if n not in KNOBS]
        if unknown:
            raise ValueError(f"search={self.search!r}: cannot search {', '.join(unknown)}; "
                             f"choose among {', '.join(KNOBS)}")
        missing = [n for n in names if n in LOSS_KNOBS and n not in takes]
        if missing:
            own = [k for k in LOSS_KNOBS if k in takes]
            raise ValueError(f"loss {self.train.loss.name!r} has no {', '.join(missing)} to search "
                             f"(its own: {', '.join(own) or 'none'})")
        first = check_loss(self.train.loss.name)[0][0]
        return {n: MARGIN_RANGES.get(first, KNOBS[n]) if n == "margin" else KNOBS[n]
                for n in names}

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """One trial's ``TrainConfig``: this config with the suggested ``values``; trials are
        not resumable, so they write no checkpoints."""
        changes = dict(values)
        if self.train.model.parts and "embedding_dim" in changes:  # each part keeps an equal share
            cells = self.train.model.grid * self.train.model.grid
            changes["embedding_dim"] = max(cells, changes["embedding_dim"] // cells * cells)
        return self.train.replace(**changes, checkpoint=False)


class TrialPruned(optuna.TrialPruned):
    """Optuna stopped the trial; its run ends KILLED (it did not fail)."""

    run_status = "KILLED"


def run_tune(cfg: TuneConfig) -> optuna.Study:
    """Search, one nested run per trial; returns the Optuna study."""
    configure_tracking()
    check_names(cfg.train)
    _, from_init = apply_init(cfg.train)  # trials start from the init model's architecture
    space = cfg.space()
    name = dataset_name(cfg.train.data.source)
    data = load_config_data(cfg.train)
    tags = {names.TUNE_TAG: "parent", names.DATASET_TAG: name,
            names.MODEL_TAG: cfg.train.model.name,
            names.LOSS_TAG: cfg.train.loss.name, names.METRIC_TAG: cfg.train.optim.monitor}
    with training_run(f"tune-{cfg.train.model.name}-{cfg.train.loss.name}",
                      cfg.train.tracking.experiment or f"zoo-{name}", tags) as parent:
        parent_id = parent.info.run_id
        log_params_once({**cfg.to_params(), "searched": ",".join(space)},
                        resolved_keys=(*cfg.preset_changed, *from_init))
        direction = "maximize" if higher_is_better(cfg.train.optim.monitor) else "minimize"
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                              n_warmup_steps=cfg.prune_after)
                  if cfg.pruner == "median" else optuna.pruners.NopPruner())
        study = optuna.create_study(
            direction=direction, pruner=pruner, study_name=f"tune-{parent_id}",
            sampler=optuna.samplers.TPESampler(seed=cfg.train.data.seed,
                                               n_startup_trials=cfg.startup_trials))
        study.optimize(_objective(cfg, space, parent_id, data), n_trials=cfg.trials,
                       timeout=cfg.timeout_s or None, catch=(Exception,),
                       show_progress_bar=True)
        _report(cfg, study)
        return study


def _objective(cfg: TuneConfig, space: dict[str, Knob], parent_id: str,
               data: LoadedData) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        values = {n: knob.suggest(trial, n) for n, knob in space.items()}
        child = cfg.trial_config(values)
        trial.set_user_attr("values", values)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            if epoch == 1:
                trial.set_user_attr("run_id", mlflow.active_run().info.run_id)
            value = metrics.get(cfg.train.optim.monitor, math.nan)
            if not math.isnan(value):
                trial.report(value, epoch)
            if epoch < child.optim.epochs and trial.should_prune():  # the last epoch is done anyway
                mlflow.set_tag(names.TRIAL_STATE_TAG, "pruned")
                raise TrialPruned(f"pruned after epoch {epoch}: "
                                  f"{cfg.train.optim.monitor}={value:.4f} "
                                  "is below the median of the earlier trials")

        result = train(child, parent_run_id=parent_id, data=data,
                       run_name=f"trial-{trial.number}", on_epoch=report,
                       tags={names.TUNE_TAG: parent_id, names.TRIAL_TAG: str(trial.number),
                             names.TRIAL_STATE_TAG: "complete"})
        return result.history.best_value

    return objective


def _report(cfg: TuneConfig, study: optuna.Study) -> None:
    """The trials table and the best trial, printed and logged on the parent run."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "user_attrs"))
    values = pd.DataFrame([t.user_attrs.get("values", {}) for t in study.trials])
    frame = pd.concat([frame.drop(columns=["user_attrs_values"], errors="ignore"), values],
                      axis=1).rename(columns={"user_attrs_run_id": "run_id"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / names.TRIALS_FILE
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=names.TUNE_DIR)
    states = [t.state for t in study.trials]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if s in states}
    mlflow.log_metrics({f"trials_{k}": float(v) for k, v in counts.items()})
    print(f"\n{len(study.trials)} trials: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(frame.to_string(index=False))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"no trial of {len(study.trials)} completed; see the trial runs' "
                           f"{names.ERROR_TAG} tags")
    best = study.best_trial
    chosen = best.user_attrs["values"]  # what the trial trained with (rounded)
    mlflow.log_params({f"best_{k}": format_value(v) for k, v in chosen.items()})
    mlflow.log_metric(f"best_{cfg.train.optim.monitor}", float(best.value))
    mlflow.set_tags({names.BEST_TRIAL_TAG: str(best.number),
                     names.BEST_RUN_TAG: str(best.user_attrs.get("run_id", ""))})
    flags = " ".join(f"-P {k}={format_value(v)}" for k, v in chosen.items())
    print(f"\nbest: trial {best.number} (run {best.user_attrs.get('run_id')}), "
          f"{cfg.train.optim.monitor}={best.value:.4f}\n  {flags}\n"
          f"train it: mlflow run . -e train --env-manager local -P model={cfg.train.model.name} "
          f"-P loss={cfg.train.loss.name} -P data={cfg.train.data.source} {flags}")
