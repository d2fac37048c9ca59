"""Every MLflow tag and artifact name the zoo writes and reads, in one place.

Training writes these names onto runs, registered versions and their artifacts; the server,
the sweep table, the registry and ``-e recommend`` read them back. They are plain strings
with no MLflow import, so the server (and a built Bento, which holds no training code) reads
the same constants the trainer writes. A name here is a contract: renaming one orphans what
older runs recorded.
"""
from __future__ import annotations

#: the version the server answers for, and commands read, when no model URI is given
DEFAULT_MODEL_URI = "models:/zoo-digits@champion"

# --- tags on every training run (and copied onto its registered version) -----------------
MODEL_TAG = "zoo.model"  # the architecture's catalogue name
LOSS_TAG = "zoo.loss"
DATASET_TAG = "zoo.dataset"  # also on each registered model: which data it was trained on
PRESET_TAG = "zoo.preset"
MODEL_URI_TAG = "zoo.model_uri"  # the logged model's URI (models:/m-...)
ERROR_TAG = "zoo.error"  # why a run FAILED (or was KILLED)
RESUMED_TAG = "zoo.resumed"  # the run (or sweep) this one resumed
#: what an ``auto`` parameter (or one a preset set) became: ``zoo.resolved.<param>``
RESOLVED_PREFIX = "zoo.resolved."
DDP_CHECKSUMS_TAG = "zoo.ddp.replica_checksums"  # one digest per replica: they agree

# lineage: pretrained weights, or an earlier zoo model (``init=``)
PRETRAINED_SOURCE_TAG = "zoo.pretrained.source"
PRETRAINED_SHA256_TAG = "zoo.pretrained.sha256"
PRETRAINED_LICENCE_TAG = "zoo.pretrained.licence"  # the licence the weights' source states
INIT_TAG = "zoo.init"
INIT_RUN_TAG = "zoo.init.run_id"
INIT_VERSION_TAG = "zoo.init.version"
LINEAGE_TAGS = (INIT_TAG, INIT_RUN_TAG, INIT_VERSION_TAG, PRETRAINED_SOURCE_TAG,
                PRETRAINED_SHA256_TAG, PRETRAINED_LICENCE_TAG)

# distillation
TEACHER_TAG = "zoo.teacher"
TEACHER_RUN_TAG = "zoo.teacher_run_id"
TEACHER_MODEL_TAG = "zoo.teacher_model"
TEACHER_VERSION_TAG = "zoo.teacher_version"
TEACHER_REGISTERED_TAG = "zoo.teacher_registered_model"

# --- sweeps, searches and evaluations ------------------------------------------------------
SWEEP_TAG = "zoo.sweep"  # "parent" on a sweep; its children carry MLflow's parentRunId
METRIC_TAG = "zoo.metric"  # the metric a sweep, search or registration ranked by
PROBE_TAG = "zoo.probe"  # a sweep logged a sample of its data (for -e recommend)
TUNE_TAG = "zoo.tune"  # "parent" on a search; a trial holds its parent's run id
TRIAL_TAG = "zoo.trial"
TRIAL_STATE_TAG = "zoo.trial_state"
BEST_TRIAL_TAG = "zoo.best_trial"
BEST_RUN_TAG = "zoo.best_run_id"
EVALUATION_TAG = "zoo.evaluation"  # zero-shot, or an ensemble
MEMBERS_TAG = "zoo.members"
TRAINED_ON_TAG = "zoo.trained_on"

# --- registered versions -------------------------------------------------------------------
RUN_ID_TAG = "zoo.run_id"
SELECTED_ON_TAG = "zoo.selected_on"  # validation or test
EXPORTED_TAG = "zoo.exported"  # "true" once every format passed its parity check
EXPORT_ERROR_TAG = "zoo.export_error"  # why the last export of the version failed
EXPORT_FORMATS_TAG = "zoo.export.formats"
EXPORT_ARTIFACTS_TAG = "zoo.export.artifacts"
EXPORT_GALLERY_TAG = "zoo.export.gallery"
EXPORT_SOURCE_RUN_TAG = "zoo.export.source_run"  # on the run `-e export` makes
EXPORT_MODEL_URI_TAG = "zoo.export.model_uri"
ONNX_MODEL_URI_TAG = "zoo.onnx_model_uri"
RUNTIME_TAG = "zoo.runtime"  # on the version (and run): the runtime the export timed faster
TIMING_TAG = "zoo.runtime.timing"  # the figures it was chosen by (JSON)
#: the gallery gate's verdict on the version (serving/gallery/gate.py): passed, or why not,
#: and the figures (JSON) both versions reached on the enrolled people
GATE_PASSED_TAG = "zoo.gate.passed"
GATE_REASON_TAG = "zoo.gate.reason"
GATE_FIGURES_TAG = "zoo.gate.figures"

# --- artifacts -----------------------------------------------------------------------------
EXPORT_DIR = "export"  # model.onnx, model.torchscript.pt, model.pt2, parity.json
ONNX_FILE = "model.onnx"  # under EXPORT_DIR
TORCHSCRIPT_FILE = "model.torchscript.pt"  # under EXPORT_DIR, and the pyfunc's trace
PROGRAM_FILE = "model.pt2"  # under EXPORT_DIR
GALLERY_DIR = "gallery"  # under EXPORT_DIR: the default identification gallery
#: recipe.json + model.safetensors (never unpickled): under EXPORT_DIR for the server, and
#: inside a logged model, what init= and export load instead of unpickling the module
WEIGHTS_DIR = "weights"
RECIPE_FILE = "recipe.json"  # under WEIGHTS_DIR: what rebuilds the module
WEIGHTS_FILE = "model.safetensors"  # under WEIGHTS_DIR
PARITY_ARTIFACT = "parity.json"  # under EXPORT_DIR
ONNX_MODEL_NAME = "onnx"  # the logged ONNX model's name
EXPORT_METRIC_PREFIX = "export_"
CHECKPOINT_DIR = "checkpoints"
PLOTS_DIR = "plots"
CURVES_PLOT = "curves.png"  # under PLOTS_DIR
CONFUSION_PLOT = "confusion_matrix.png"  # under PLOTS_DIR
EMBEDDING_PLOT = "embeddings.png"  # under PLOTS_DIR
HISTORY_ARTIFACT = "history.json"
METRICS_ARTIFACT = "metrics.json"
COMPARISON_DIR = "comparison"  # a sweep's table and heatmap
COMPARISON_CSV = "comparison.csv"  # under COMPARISON_DIR: what -e recommend reads
COMPARISON_MD = "comparison.md"  # under COMPARISON_DIR
HEATMAP_PLOT = "heatmap.png"  # under COMPARISON_DIR
TUNE_DIR = "tune"
TRIALS_FILE = "trials.csv"  # under TUNE_DIR
PROBE_ARTIFACT = "probe/probe.npz"
LOAD_REPORT_ARTIFACT = "pretrained/load_report.json"
FACES_MISSING_ARTIFACT = "faces/missing.txt"  # the photos in which the face stage found no face
PYFUNC_DIR = "pyfunc"  # inside a logged model: the TorchScript trace the pyfunc loads
MLMODEL_RECORD_KEY = "zoo"  # a logged model's MLmodel metadata: its record (zoo.record)
#: the model record's name where it is stored by key (ONNX metadata_props, recipe.json, a
#: module pickled before records): the untyped dict's old name, so older files still read
RECORD_KEY = "zoo_meta"
#: the record as JSON: beside a logged model, and inside TorchScript and .pt2 files
RECORD_FILE = f"{RECORD_KEY}.json"
PREPROCESSING_FILE = "preprocessing.json"  # beside a logged model: its preprocessing alone
LABELS_FILE = "labels.json"  # beside a logged model: its class names


def resolved_tag(param: str) -> str:
    """The tag that says what ``param`` became (written by the run, read back by the registry
    and by ``TrainConfig.from_run``)."""
    return f"{RESOLVED_PREFIX}{param}"
