"""What each part of the faces-small recipe adds, on ORL faces with half the people unseen.

    python bench/orl_faces.py                      # every row, split seeds 0-4 (about 1 h here)
    python bench/orl_faces.py --rows plain,recipe --seeds 0,1,2

Every row is a sweep (``training.commands.sweep``) over the same splits: 20 of the 40 people never
seen in training (``open_set=0.5``), 8 images of each of the other 20 to train on and 2 to
test. A row changes one thing from the row above it, or from the recipe for the rows after
it. The table gives the open-set retrieval metrics (the unseen people's 200 images, each
against the other 199) as mean ± std over the split seeds, and the training time of one run.
The baselines (raw pixels, PCA eigenfaces) are measured on the same splits. The runs go to
the experiment ``--experiment`` of the store ``MLFLOW_TRACKING_URI`` (default: the embedded
one), one parent run per row.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.pipeline.sweep import SweepConfig, run_sweep  # noqa: E402
from training.presets import PRESETS  # noqa: E402

ORL = REPO.parent / "shared" / "data" / "orl_faces"
METRICS = ("open_map_at_r", "open_r_precision", "open_precision_at_1")
RECIPE = dict(PRESETS["faces-small"].values)
#: what every row shares: the recipe's data handling and schedule
COMMON = {k: RECIPE[k] for k in ("channels", "image_size", "epochs", "batch_size", "lr",
                                 "augment", "hflip", "tta", "val_fraction", "monitor")}
WHOLE = dict(stage=None, grid=1, parts=False, embedding_dim=128)


@dataclass
class Row:
    name: str
    change: str
    params: dict[str, Any]
    losses: str = "arcface"


#: the ablation rows after the recipe change one thing of the part model trained with ArcFace
PARTS = dict(RECIPE, loss="arcface")

ROWS = [
    Row("plain", "resnet18, whole network, global average (the usual recipe)",
        dict(model="resnet18", **WHOLE)),
    Row("vgg", "VGG-11 instead: its last stage (stride 32), global average",
        dict(model="timm/vgg11_bn", **{**WHOLE, "stage": -1})),
    Row("stage", "read at stage 2 (stride 4), global average",
        dict(model="timm/vgg11_bn", stage=2, grid=1, parts=False, embedding_dim=128)),
    Row("grid", "stage 2 on a 2x2 grid, one neck",
        dict(model="timm/vgg11_bn", stage=2, grid=2, parts=False, embedding_dim=128)),
    Row("parts", "one 64-d part per cell, an ArcFace loss each", PARTS),
    Row("recipe", "CosFace instead of ArcFace (= preset faces-small)", dict(RECIPE),
        losses=RECIPE["loss"]),
    Row("no-tta", "parts without flip TTA", dict(PARTS, tta="none")),
    Row("no-flip", "parts without flips (training or TTA)", dict(PARTS, hflip=False, tta="none")),
    Row("supcon", "parts with SupCon instead", dict(PARTS), losses="supcon"),
    Row("ema", "parts + EMA of weights (0.995)", dict(PARTS, ema_decay=0.995)),
    Row("sam", "parts + SAM (rho 0.05)", dict(PARTS, sam_rho=0.05)),
]


def run_row(row: Row, seeds: str, experiment: str, workers: int) -> dict[str, dict]:
    """The row's sweep; mean and std of each metric per loss, and the baselines."""
    params = {**COMMON, **row.params}
    params.pop("loss", None)
    model = params.pop("model")
    cfg = SweepConfig.of(data=str(ORL), open_set=0.5, seeds=seeds, models=model, losses=row.losses,
                         experiment=experiment, workers=workers, register=False,
                         metric="open_map_at_r", **params)
    outcomes = run_sweep(cfg)
    by_loss: dict[str, dict[str, list[float]]] = {}
    for outcome in outcomes:
        if outcome.error:
            raise RuntimeError(f"{row.name}: {outcome.loss} seed {outcome.job.seed} failed: "
                               f"{outcome.error}")
        values = by_loss.setdefault(outcome.loss, {k: [] for k in (*METRICS, "train_time_s")})
        for key in values:
            values[key].append(outcome.metrics[key])
    return by_loss


def cell(values: list[float], digits: int = 3) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "—"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rows", default="all", help="comma list of row names, or all")
    parser.add_argument("--experiment", default="orl-faces-ablation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--members", type=int, default=3, help="ensemble size of the last row")
    args = parser.parse_args()
    if not ORL.is_dir():
        print(f"ORL faces not found at {ORL}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    wanted = None if args.rows == "all" else set(args.rows.split(","))
    rows = [r for r in ROWS if wanted is None or r.name in wanted]
    lines = ["| row | change | loss | open MAP@R | open R-precision | open P@1 | train s/run |",
             "|---|---|---|---:|---:|---:|---:|"]
    baselines_done = False
    for row in rows:
        by_loss = run_row(row, args.seeds, args.experiment, args.workers)
        for loss, values in by_loss.items():
            lines.append(f"| {row.name} | {row.change} | {loss} | "
                         + " | ".join(cell(values[k]) for k in METRICS)
                         + f" | {np.mean(values['train_time_s']):.0f} |")
        if not baselines_done:
            lines[2:2] = baseline_lines(args.seeds)
            baselines_done = True
        print("\n".join(lines), flush=True)
    if wanted is None or "ensemble" in wanted:
        values = ensemble_row(args.seeds, args.experiment, args.members)
        lines.append(f"| ensemble | {args.members} recipe models of other initialisations, "
                     f"embeddings concatenated (training.commands.evaluate) | {RECIPE['loss']} | "
                     + " | ".join(cell(values[k]) for k in METRICS)
                     + f" | {np.mean(values['train_time_s']):.0f} |")
        print("\n".join(lines), flush=True)
    print(f"\nsplit seeds {args.seeds}; mean ± std over them")
    return 0


def ensemble_row(seeds: str, experiment: str, members: int) -> dict[str, list[float]]:
    """Per split seed: ``members`` recipe runs that differ only in ``init_seed``, evaluated
    together. The time is the sum of the members' training times."""
    from training.config import TrainConfig
    from training.pipeline.evaluate import EvaluateConfig, evaluate_models
    from training.pipeline.run import train

    values: dict[str, list[float]] = {k: [] for k in (*METRICS, "train_time_s")}
    for seed in (int(s) for s in seeds.split(",")):
        results = [train(TrainConfig.of(data=str(ORL), open_set=0.5, seed=seed, init_seed=100 + i,
                                        experiment=experiment, **RECIPE))
                   for i in range(members)]
        metrics = evaluate_models(EvaluateConfig(
            model_uri=",".join(r.model_uri for r in results), tta=RECIPE["tta"],
            experiment=experiment))
        for key in METRICS:
            values[key].append(metrics[key])
        values["train_time_s"].append(sum(r.metrics["train_time_s"] for r in results))
    return values


def baseline_lines(seeds: str) -> list[str]:
    """Pixels and PCA on the same splits (as each sweep's table has them)."""
    from training.pipeline.baselines import baseline_metrics
    from training.config import TrainConfig
    from training.pipeline.run import config_splits, load_config_data

    values: dict[str, dict[str, list[float]]] = {}
    for seed in (int(s) for s in seeds.split(",")):
        cfg = TrainConfig.of(data=str(ORL), open_set=0.5, seed=seed,
                             **{k: COMMON[k] for k in ("channels", "image_size", "val_fraction")})
        splits = config_splits(cfg, load_config_data(cfg))
        for name in ("pixels", "pca"):
            metrics = baseline_metrics(splits, name)
            for key in METRICS:
                values.setdefault(name, {}).setdefault(key, []).append(metrics[key])
    return [f"| {name} | no learning | - | " + " | ".join(cell(v[k]) for k in METRICS) + " | 0 |"
            for name, v in values.items()]


if __name__ == "__main__":
    sys.exit(main())
