"""Promote the best run of an experiment or sweep.

Registers the best run by ``--metric`` as a version of ``zoo-<dataset>`` and moves the
``champion`` and ``<loss>-best`` aliases when the new version beats them (see
``training.tracking.registration``). Empty values count as absent, so the MLproject entry point can
pass every parameter.

The command is ``python -m training.commands.register`` (the MLproject ``register``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from training.config import FlatParams, option
from training.tracking.registration import (
    DEFAULT_METRIC, RegistrationResult, experiment_runs, register_best, runs_of_sweep,
)
from training.tracking.store import configure_tracking

log = logging.getLogger(__name__)


@dataclass
class RegisterConfig(FlatParams):
    """What to register: the runs of one experiment or one sweep, ranked by one metric."""

    WHAT = "register"

    experiment: Optional[str] = option(None, "register from every run of this experiment; "
                                             "zoo-<data>: also that data set's runs in other "
                                             "experiments (mlflow run puts its runs in "
                                             "Default unless given --experiment-name)")
    sweep: Optional[str] = option(None, "register from the child runs of this sweep's parent "
                                        "run id")
    metric: str = field(default=DEFAULT_METRIC, metadata={
        "help": "metric that ranks runs (auto: each run's validation monitor at its kept "
                "epoch, best_val_map_at_r by default, or its test counterpart for runs "
                "without a validation split); lower is better when a word of its name is "
                "loss, ece or error"})
    force: bool = field(default=False, metadata={
        "help": "move champion and <loss>-best even to a worse model"})


    def __post_init__(self) -> None:
        self.experiment = (self.experiment or "").strip() or None
        self.sweep = (self.sweep or "").strip() or None
        self.metric = self.metric.strip() or DEFAULT_METRIC
        if bool(self.experiment) == bool(self.sweep):
            raise ValueError("give exactly one of --experiment NAME or --sweep RUN_ID")


def register(cfg: RegisterConfig) -> RegistrationResult:
    """Register from the configured runs and print the summary."""
    configure_tracking()
    if cfg.experiment:
        runs, where = experiment_runs(cfg.experiment)
    else:
        runs = runs_of_sweep(cfg.sweep)
        where = f"{len(runs)} run(s) of sweep {cfg.sweep}"
    print(f"registering from {where}")
    result = register_best(runs, cfg.metric, force=cfg.force)
    print(result.summary())
    return result
