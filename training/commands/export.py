"""``python -m training.commands.export``: export a registered version (the MLproject
``export``): ONNX, TorchScript and ``.pt2`` with a parity check, logged on the version.

The work is ``training.pipeline.export``; this command adds the run that ``mlflow run``
made, which records the export and ends FAILED when it fails.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from training.cli import run_cli
from training.pipeline.export import ExportConfig, ExportResult, export_model
from training.tracking.store import configure_tracking, log_params_once, training_run
from zoo import names


def export_entry(cfg: ExportConfig) -> ExportResult:
    """Under ``mlflow run`` the run it made records the export (FAILED if it fails)."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return export_model(cfg)
    configure_tracking()
    with training_run("export", "", {names.EXPORT_MODEL_URI_TAG: cfg.model_uri}):
        log_params_once({f.name: str(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        return export_model(cfg)


def main(argv: list[str] | None = None) -> int:
    """Any failure is one ``error: ...`` line on stderr and exit 1."""
    return run_cli(export_entry, ExportConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
