"""Which model × loss to try first on a new data set.

Every sweep logs the probe embeddings of a sample of its data (``zoo.probe``; the probe is a
fixed function of the inputs, nothing trained). This embeds a sample of the new data with the
same probe, finds the swept data sets of the same kind that look most alike (Fréchet distance
between the probe embeddings, plus the log-ratio of the class counts), and prints the
combinations that won on them, with their scores, and a short sweep to start with instead
of the full grid. It reads the tracking store and writes nothing to it.

The command is ``python -m training.commands.recommend`` (the MLproject ``recommend``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import mlflow
import numpy as np
import pandas as pd

from training.config import FlatParams, option
from training.pipeline.run import dataset_name
from training.tracking.probe import probe_sample
from training.tracking.store import configure_tracking
from zoo import names
from zoo.data import LoadedData, load_data
from zoo.probe import PROBE_VERSION, dissimilarity

log = logging.getLogger(__name__)

@dataclass
class RecommendConfig(FlatParams):
    """The new data set, and how much of the store's experience to show."""

    WHAT = "recommend"

    data: str = option("digits", "the new data: a source name, a folder of images or a .csv file")
    label_column: str = option("label", "label column of a CSV or Parquet table")
    neighbours: int = option(2, "how many of the most similar swept data sets to show")
    top: int = option(3, "how many combinations of each to show")
    experiment: Optional[str] = option(None, "only sweeps of this experiment (auto: all)")


    def __post_init__(self) -> None:
        for name in ("neighbours", "top"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Neighbour:
    """A swept data set like the new one: how far, and what won there."""

    dataset: str
    distance: float
    sweep_id: str
    metric: str
    best: list[tuple[str, str, float]] = field(default_factory=list)  # model, loss, value


def _sweeps(experiment: str | None) -> list[mlflow.entities.Run]:
    """Finished sweep parents that logged a probe, the newest first."""
    filters = (f"tags.`{names.SWEEP_TAG}` = 'parent' and "
               f"tags.`{names.PROBE_TAG}` = '{PROBE_VERSION}'")
    kwargs: dict[str, Any] = ({"experiment_names": [experiment]} if experiment
                              else {"search_all_experiments": True})
    runs = mlflow.search_runs(filter_string=filters, output_format="list",
                              order_by=["attributes.start_time DESC"], **kwargs)
    return [r for r in runs if r.info.status == "FINISHED"]


def _winners(run: mlflow.entities.Run, top: int) -> tuple[str, list[tuple[str, str, float]]]:
    """The sweep's ranking metric and its best finished combinations (baselines left out)."""
    metric = run.data.tags.get(names.METRIC_TAG, "test_precision_at_1")
    path = mlflow.MlflowClient().download_artifacts(
        run.info.run_id, f"{names.COMPARISON_DIR}/{names.COMPARISON_CSV}")
    table = pd.read_csv(path)
    table = table[(table["status"] == "FINISHED") & table[metric].notna()]
    return metric, [(str(r["model"]), str(r["loss"]), float(r[metric]))
                    for _, r in table.head(top).iterrows()]


def recommend(cfg: RecommendConfig) -> list[Neighbour]:
    """The swept data sets most like ``cfg.data``, nearest first, with their winners."""
    configure_tracking()
    data = load_data(cfg.data, image_size=32, channels=1, label_column=cfg.label_column)
    mine = probe_sample(data)
    name = dataset_name(cfg.data)
    found: dict[str, Neighbour] = {}
    client = mlflow.MlflowClient()
    for run in _sweeps(cfg.experiment):
        dataset = run.data.tags.get(names.DATASET_TAG, "?")
        if dataset in found:
            continue  # the newest sweep of each data set speaks for it
        with np.load(client.download_artifacts(run.info.run_id, names.PROBE_ARTIFACT)) as stored:
            if str(stored["kind"]) != data.kind:
                continue
            distance = dissimilarity(mine, data.num_classes, stored["embeddings"],
                                     int(stored["num_classes"]))
        found[dataset] = Neighbour(dataset, distance, run.info.run_id, "")
    if not found:
        raise LookupError(f"no finished sweep of {data.kind} data with a probe in "
                          f"{mlflow.get_tracking_uri()}: run mlflow run . -e sweep on a data set "
                          "like this one first")
    nearest = sorted(found.values(), key=lambda n: n.distance)[:cfg.neighbours]
    for neighbour in nearest:
        neighbour.metric, neighbour.best = _winners(client.get_run(neighbour.sweep_id), cfg.top)
    _print(name, data, nearest, cfg)
    return nearest


def _print(name: str, data: LoadedData, nearest: list[Neighbour], cfg: RecommendConfig) -> None:
    print(f"swept data sets most like {name} ({data.kind}, {data.num_classes} classes, "
          f"{len(data)} samples), nearest first:")
    for rank, n in enumerate(nearest, 1):
        print(f"\n{rank}. {n.dataset}: distance {n.distance:.2f} (sweep {n.sweep_id}, "
              f"ranked by {n.metric})")
        for model, loss, value in n.best:
            print(f"     {model} + {loss}: {value:.4f}")
    best = nearest[0].best
    if best:
        models = ",".join(dict.fromkeys(m for m, _, _ in best))
        losses = ",".join(dict.fromkeys(loss for _, loss, _ in best))
        print(f"\nstart with: mlflow run . -e sweep --env-manager local -P data={cfg.data} "
              f"-P models={models} -P losses={losses}")
