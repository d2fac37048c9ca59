"""Time an exported version's runtimes again, here
(the MLproject ``retime``).

The export timed ONNX Runtime against PyTorch on the machine that exported, and tagged the
faster on the version (``zoo.runtime``); a server on other hardware (more cores, a GPU)
may find the other one faster. Run this where the server runs; servers started afterwards
use the new choice.

The command is ``python -m training.commands.retime`` (the MLproject ``retime``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

import mlflow

from training.config import FlatParams, option
from training.pipeline.export import runtime_tags
from training.tracking.model_source import DEFAULT_MODEL_URI, load_source
from training.tracking.store import configure_tracking
from zoo import names
from zoo.export.runtime_timing import RuntimeTiming, time_runtimes


@dataclass
class RetimeConfig(FlatParams):
    """Which exported version to time, and with how many threads."""

    WHAT = "retime"

    model_uri: str = option(DEFAULT_MODEL_URI, "models:/<name>@<alias> or "
                                               "models:/<name>/<version> of an exported model")
    threads: int = option(0, "intra-op threads (0: one server worker's share of the cores, as "
                             "`bentoml serve` gives it with ZOO_WORKERS unset)")

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (auto) or more, got {self.threads}")


def retime(cfg: RetimeConfig) -> RuntimeTiming:
    """Time the version's ONNX file and its PyTorch module on this machine; tag the result
    on the version and its run."""
    configure_tracking()
    source, _, model = load_source(cfg.model_uri)
    version = source.version
    client = mlflow.MlflowClient()
    if version is None or (version.tags or {}).get(names.EXPORTED_TAG) != "true":
        raise LookupError(f"{source.describe()} is not an exported model version: run `mlflow "
                          f"run . -e export --env-manager local -P model_uri={cfg.model_uri}`")
    weights = [a.path for a in client.list_artifacts(source.run_id, f"{names.EXPORT_DIR}/"
                                                                    f"{names.WEIGHTS_DIR}")]
    if not weights:
        raise LookupError(f"{source.describe()} was exported without PyTorch weights, so only "
                          "ONNX Runtime can serve it: export it again to time both")
    with tempfile.TemporaryDirectory(prefix="zoo-retime-") as tmp:
        onnx = mlflow.artifacts.download_artifacts(
            f"runs:/{source.run_id}/{names.EXPORT_DIR}/{names.ONNX_FILE}", dst_path=tmp)
        shape = model.record.input_size
        timing = time_runtimes(onnx, model, shape, cfg.threads or None)
    for key, value in runtime_tags(timing).items():
        client.set_model_version_tag(version.name, str(version.version), key, value)
    client.set_tag(source.run_id, names.RUNTIME_TAG, timing.faster)
    print(f"{source.describe()}\n{timing.summary()}\n"
          f"tagged {names.RUNTIME_TAG}={timing.faster}: servers started from now on run it "
          "(ZOO_RUNTIME overrides)")
    return timing
