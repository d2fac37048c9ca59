"""Export a registered model to ONNX, TorchScript and ``.pt2`` (``-e export``, and a sweep's
champion).

The model named by ``--model_uri`` (default ``models:/zoo-digits@champion``) is exported to
the three formats; each is loaded back and compared with the eager model on the held-out
test split of the run that trained it (rebuilt from that run's parameters). The files, an
MLflow ``onnx`` model, the parity figures and the default gallery for identification (the
training split's embeddings as a ``.npy`` array, with the run's threshold at FAR 1e-3) go to
that run; the figures and
``zoo.exported=true`` go to the version. Image models also get ``export/weights/``: the
state dict as safetensors and the JSON recipe that rebuilds the module, which is how a
server loads the eager model GradCAM needs without unpickling anything
(``zoo.models.rebuild``). Any failed export or parity check exits non-zero
and leaves the version without ``zoo.exported``. The command is
``training.commands.export``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import mlflow
import numpy as np
import torch

from training.config import FlatParams, TrainConfig, option
from training.pipeline.run import (build_model_and_loss, config_splits, load_config_data,
                                   load_recorded_data)
from training.tracking import export_artifacts
from training.tracking.model_source import (DEFAULT_MODEL_URI, ModelSource, load_source,
                                             training_config)
from training.tracking.store import configure_tracking
from zoo import names
from zoo.data import LoadedData, Splits
from zoo.export import (
    FORMATS, ExportFailure, ExportedFile, Parity, ParityThresholds, export_format,
    load_exported, measure_parity,
)
from zoo.export.formats import eager_runner, example_batch
from zoo.export.onnx_format import DEFAULT_OPSET, MIN_OPSET
from zoo.export.parity import reference_outputs
from zoo.export.program_format import export_program
from zoo.export.runtime_timing import (RuntimeTiming,
                                       time_runtimes)
from zoo.gallery import Gallery
from zoo.models import rebuild as rebuilding
from zoo.record import record_of

log = logging.getLogger(__name__)

GALLERY_FAR = 1e-3
GALLERY_THRESHOLD_METRIC = "test_threshold_at_far_1e-3"
THRESHOLD_METRIC_PREFIX = "test_threshold_at_far_"  # one a FAR the run measured


@dataclass
class ExportConfig(FlatParams):
    """Which model to export, to what, and how close the exports must stay to it."""

    WHAT = "export"

    model_uri: str = option(DEFAULT_MODEL_URI, "models:/<name>@<alias>, models:/<name>/<version>, "
                                           "models:/m-<id> or runs:/<run_id>/model")
    formats: str = option(",".join(FORMATS), f"comma list of {', '.join(FORMATS)}")
    opset: int = option(DEFAULT_OPSET, f"ONNX opset ({MIN_OPSET} or newer)")
    data: Optional[str] = option(None, "data of the parity check (auto: the training run's own "
                                       "data)")
    max_abs_diff: float = option(1e-4, "largest allowed difference of any embedding value")
    min_top1_agreement: float = option(0.999, "smallest allowed share of equal top-1 classes")
    batch_size: int = option(64, "batch size of the parity check")
    time_runtimes: bool = option(True, "time ONNX Runtime against PyTorch at batch 1 and 64 "
                                       "and tag the faster on the version (what a server "
                                       "here runs)")


    def __post_init__(self) -> None:
        self.model_uri = self.model_uri.strip() or DEFAULT_MODEL_URI
        unknown = [f for f in self.format_list if f not in FORMATS]
        if unknown or not self.format_list:
            raise ValueError(f"formats={self.formats!r}: choose from {', '.join(FORMATS)}")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be {MIN_OPSET} or newer, got {self.opset}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def format_list(self) -> list[str]:
        return [f.strip() for f in self.formats.split(",") if f.strip()]

    @property
    def thresholds(self) -> ParityThresholds:
        return ParityThresholds(self.max_abs_diff, self.min_top1_agreement)


@dataclass
class ExportResult:
    """What an export produced and measured."""

    source: ModelSource
    files: list[ExportedFile]
    parities: list[Parity]
    errors: list[str]
    onnx_model_uri: str | None = None
    weights_saved: bool = False  # export/weights/: what GradCAM and the PyTorch runtime load
    weights_error: str | None = None  # why the model has none
    timing: RuntimeTiming | None = None  # ONNX Runtime against PyTorch on this machine

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"export of {self.source.describe()}:",
                 f"  {'format':<12} {'max|Δ emb|':>11} {'mean cos':>10} {'top-1 agree':>12} "
                 f"{'size MB':>8} {'export s':>9}"]
        by_format = {f.format: f for f in self.files}
        for p in self.parities:
            f = by_format[p.format]
            agree = "n/a" if p.top1_agreement is None else f"{p.top1_agreement:.2%}"
            lines.append(f"  {p.format:<12} {p.max_abs_diff:>11.2e} {p.mean_cosine:>10.6f} "
                         f"{agree:>12} {f.size_mb:>8.1f} {f.seconds:>9.1f}")
        lines.append(f"  on {self.parities[0].samples if self.parities else 0} test samples")
        if self.ok:
            lines.append(f"  files: runs:/{self.source.run_id}/{names.EXPORT_DIR}/ "
                         f"(and {names.GALLERY_DIR}/: the training split as the "
                         "identification gallery)")
            if self.weights_saved:
                lines.append(f"  PyTorch weights: {names.EXPORT_DIR}/"
                             f"{names.WEIGHTS_DIR}/ (safetensors and recipe)")
            elif self.weights_error:
                lines.append(f"  no PyTorch weights (no GradCAM, no PyTorch runtime): "
                             f"{self.weights_error}")
            if self.timing is not None:
                lines.append("  " + self.timing.summary().replace("\n", "\n  "))
            if self.onnx_model_uri:
                lines.append(f"  onnx model: {self.onnx_model_uri} "
                             "(mlflow.onnx.load_model / mlflow.pyfunc.load_model)")
        for error in self.errors:
            lines.append(f"  FAILED: {error}")
        return "\n".join(lines)


def source_config(source: ModelSource, run: mlflow.entities.Run, model: Any = None,
                  data: str | None = None) -> TrainConfig:
    """The training config the model carries (``data`` overrides its data)."""
    cfg = training_config(source, run, model)
    return cfg.replace(data=data) if data else cfg


def source_splits(cfg: TrainConfig, model: torch.nn.Module, data: LoadedData | None = None,
                  recorded: bool = False) -> Splits:
    """The run's splits, checked to have the classes the model was trained on; ``recorded``:
    read and normalised as the model's record says (``load_recorded_data``), not the config."""
    record = record_of(model)
    if data is None:
        try:
            data = load_recorded_data(cfg, record) if recorded else load_config_data(cfg)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; the training run read "
                                    f"data={cfg.data.source!r} relative to "
                                    "its working directory: pass --data with where it is now "
                                    "(-P data=... under mlflow run)") from None
    splits = config_splits(cfg, data, record.pre if recorded else None)
    trained = record.class_names if record is not None and record.preprocessing else None
    if trained is not None and trained != list(splits.class_names):
        raise ValueError(f"data {cfg.data.source!r} has classes {splits.class_names[:5]}... "
                         f"but the model was trained on {trained[:5]}...: not the data it was "
                         "trained on")
    return splits


def build_gallery(model: torch.nn.Module, splits: Splits, run: mlflow.entities.Run,
                  batch_size: int) -> Gallery:
    """The training split's embeddings under their class names, with the verification
    thresholds the run's evaluation chose on its test split: the one at a false accept rate of
    1e-3 (what a server applies unless asked), and those at every other rate measured."""
    embeddings = reference_outputs(eager_runner(model), splits.train.x, batch_size)["embedding"]
    threshold = run.data.metrics.get(GALLERY_THRESHOLD_METRIC)
    thresholds = {key[len(THRESHOLD_METRIC_PREFIX):]: value
                  for key, value in run.data.metrics.items()
                  if key.startswith(THRESHOLD_METRIC_PREFIX) and math.isfinite(value)}
    gallery = Gallery(embeddings.shape[1], threshold,
                      GALLERY_FAR if threshold is not None else None, thresholds)
    gallery.add(embeddings, [splits.class_names[int(y)] for y in splits.train.y])
    return gallery


def export_model(cfg: ExportConfig, data: LoadedData | None = None) -> ExportResult:
    """Export, check parity, log; raise if any format failed (after logging what is known)."""
    configure_tracking()
    source, run, model = load_source(cfg.model_uri)
    log.info("exporting %s", source.describe())
    train_cfg = source_config(source, run, model, cfg.data)
    splits = source_splits(train_cfg, model, data)
    split = splits.test
    example = example_batch(split.x[torch.arange(min(2, len(split)))])
    reference = reference_outputs(eager_runner(model), split.x, cfg.batch_size)

    files, parities, errors = [], [], []
    with tempfile.TemporaryDirectory(prefix="zoo-export-") as tmp:
        program = _program(model, example, cfg.format_list)
        for fmt in cfg.format_list:
            try:
                exported = export_format(fmt, model, example, Path(tmp), opset=cfg.opset,
                                         program=program)
            except ExportFailure as exc:
                errors.append(str(exc))
                continue
            parity = measure_parity(fmt, load_exported(fmt, exported.path), split.x, reference,
                                    cfg.batch_size)
            files.append(exported)
            parities.append(parity)
            errors += [f"{fmt}: {problem}" for problem in parity.failures(cfg.thresholds)]
        result = ExportResult(source, files, parities, errors)
        gallery_dir = Path(tmp) / names.GALLERY_DIR
        weights_dir = Path(tmp) / names.WEIGHTS_DIR
        if result.ok:
            build_gallery(model, splits, run, cfg.batch_size).save(gallery_dir)
            result.weights_error = save_rebuildable(
                model, example, weights_dir, lambda: _build_from_config(train_cfg, splits))
            result.weights_saved = result.weights_error is None
            if result.weights_error is not None:
                log.warning("%s: GradCAM and the PyTorch runtime will be unavailable for this "
                            "version: %s", source.describe(), result.weights_error)
            onnx_file = next((f.path for f in files if f.format == "onnx"), None)
            if onnx_file is not None and result.weights_saved and cfg.time_runtimes:
                result.timing = time_runtimes(onnx_file, model,
                                              tuple(int(s) for s in example.shape[1:]))
        _record(result, model, example, cfg, gallery_dir, weights_dir)
    print(result.summary())
    if errors:
        raise RuntimeError(f"export of {source.describe()} failed: " + "; ".join(errors))
    return result


def runtime_tags(timing: RuntimeTiming) -> dict[str, str]:
    """The faster runtime and the figures, as tags a server reads."""
    return {names.RUNTIME_TAG: timing.faster, names.TIMING_TAG: timing.to_json()}


def save_rebuildable(model: torch.nn.Module, example: torch.Tensor, folder: Path,
                     fallback: Callable[[], dict[str, Any] | None] | None = None) -> str | None:
    """Save ``model`` as ``folder/model.safetensors`` and ``folder/recipe.json``, kept once
    the module rebuilt from them (the recipe's architecture, the file loaded strictly: the
    server's path) answers like ``model`` on ``example``. Returns why not instead (no
    recipe, a mismatch); the export goes on without them, only GradCAM and the PyTorch
    runtime are then unavailable.
    ``fallback()`` gives the build recipe of a model logged before recipes were recorded
    (from its run's config)."""
    build = model.record.build
    if not build and fallback is not None:
        log.info("the model predates build recipes; rebuilding it from its run's config")
        try:
            build = fallback()
        except Exception as exc:  # noqa: BLE001 - any failure only costs GradCAM
            return f"cannot rebuild the module from a recipe ({type(exc).__name__}: {exc})"
    return rebuilding.save_checked(model, folder, example, build)


def _build_from_config(cfg: TrainConfig, splits: Splits) -> dict[str, Any] | None:
    """The build recipe of the model the run's config describes (no weights loaded)."""
    model, _ = build_model_and_loss(cfg, splits)
    return model.record.build


def _program(model: torch.nn.Module, example: torch.Tensor, formats: list[str]
             ) -> torch.export.ExportedProgram | None:
    """One ``torch.export`` program for ``pt2`` (and ONNX failure reports), if wanted."""
    if "pt2" not in formats:
        return None
    try:
        return export_program(model, example)
    except Exception:  # noqa: BLE001 - export_format re-exports and explains the failure
        return None


def _record(result: ExportResult, model: torch.nn.Module, example: torch.Tensor,
            cfg: ExportConfig, gallery_dir: Path, weights_dir: Path | None = None) -> None:
    """Figures always; files and the ``zoo.exported`` tag only when everything passed."""
    report = {
        "model_uri": cfg.model_uri, "source": result.source.describe(),
        "thresholds": dataclasses.asdict(cfg.thresholds), "opset": cfg.opset,
        "parity": [dataclasses.asdict(p) for p in result.parities], "errors": result.errors,
    }
    with export_artifacts.reopened_run(result.source.run_id):
        export_artifacts.log_parity(result.parities, report)
        if result.ok:
            info = export_artifacts.log_files({f.format: f.path for f in result.files},
                                            model.record, example.numpy().astype(np.float32))
            result.onnx_model_uri = info.model_uri if info else None
            mlflow.log_artifacts(str(gallery_dir), f"{names.EXPORT_DIR}/"
                                                   f"{names.GALLERY_DIR}")
            if weights_dir is not None and result.weights_saved:
                export_artifacts.log_weights(weights_dir)
    artifacts = f"runs:/{result.source.run_id}/{names.EXPORT_DIR}"
    tags = {names.EXPORT_FORMATS_TAG: ",".join(f.format for f in result.files),
            names.EXPORT_ARTIFACTS_TAG: artifacts,
            names.EXPORT_GALLERY_TAG: f"{artifacts}/{names.GALLERY_DIR}"}
    if result.onnx_model_uri:
        tags[names.ONNX_MODEL_URI_TAG] = result.onnx_model_uri
    if result.timing is not None:
        tags.update(runtime_tags(result.timing))
        mlflow.MlflowClient().set_tag(result.source.run_id, names.RUNTIME_TAG, result.timing.faster)
    export_artifacts.tag_version(result.source, result.parities, tags,
                               "; ".join(result.errors) or None)
    if mlflow.active_run() is not None:  # the run `mlflow run -e export` made: say what it did
        mlflow.set_tags({names.EXPORT_SOURCE_RUN_TAG: result.source.run_id, **tags})
        mlflow.log_metrics(export_artifacts.parity_metrics(result.parities))
