"""Refresh the README pictures from the latest sweep in a store.

Copies the sweep's heatmap and takes a headless-Chromium screenshot of the real MLflow UI
comparing the sweep's children. Needs Chromium (`apt-get install chromium`).

    python docs/screenshots.py [--store sqlite:///mlruns/mlflow.db] [--out docs/img]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.*
from support.mlflow_process import mlflow_process

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def screenshot(url: str, path: Path, size: str = "1600,900") -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             "--virtual-time-budget=20000", f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--out", default="docs/img", type=Path)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.store)
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="tags.`zoo.sweep` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SystemExit(f"no sweep in {args.store}: run `mlflow run . -e sweep` first")
    parent = parents[0]
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id], output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                      "and attributes.status = 'FINISHED'",
        order_by=["metrics.test_precision_at_1 DESC"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    heatmap = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                  artifact_path="comparison/heatmap.png")
    shutil.copy(heatmap, args.out / "sweep_heatmap.png")
    ids = json.dumps([r.info.run_id for r in children[:12]])
    query = urllib.parse.urlencode({"runs": ids,
                                    "experiments": json.dumps([parent.info.experiment_id])})
    with mlflow_process("ui", "--backend-store-uri", args.store) as url:
        screenshot(f"{url}/#/compare-runs?{query}", args.out / "mlflow_compare.png", "1600,1100")
        order = urllib.parse.urlencode({"orderByKey": "metrics.`test_precision_at_1`",
                                        "searchFilter": "tags.`zoo.sweep` = "
                                                        f"'{parent.info.run_id}'",
                                        "orderByAsc": "false", "isComparingRuns": "false"})
        screenshot(f"{url}/#/experiments/{parent.info.experiment_id}/runs?{order}",
                   args.out / "mlflow_runs.png", "1800,1000")
    print(f"wrote {args.out}/sweep_heatmap.png, mlflow_compare.png, mlflow_runs.png")


if __name__ == "__main__":
    main()
