"""Metrics for embedding models: retrieval, clustering, verification, classification.

Definitions follow pytorch-metric-learning's ``AccuracyCalculator`` where it has one (see each
module's docstring). ``evaluate`` is the one call the trainer makes; its keys are read by the
sweep table, the registry's champion choice and the plots, so they are fixed here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .classification import (accuracy, confusion_matrix, expected_calibration_error, softmax,
                             top_k_accuracy)
from .clustering import cluster_accuracy, clustering_metrics, hungarian_accuracy, nmi
from .retrieval import (leave_one_out_knn, map_at_r, precision_at_1, r_precision, recall_at_k,
                        retrieval_metrics)
from .open_set import open_set_identification
from .verification import pair_scores, roc_auc, tar_at_far, verification_metrics

__all__ = [
    "evaluate",
    "higher_is_better",
    "metric_names",
    "accuracy",
    "top_k_accuracy",
    "expected_calibration_error",
    "confusion_matrix",
    "softmax",
    "retrieval_metrics",
    "precision_at_1",
    "r_precision",
    "map_at_r",
    "recall_at_k",
    "leave_one_out_knn",
    "clustering_metrics",
    "nmi",
    "cluster_accuracy",
    "hungarian_accuracy",
    "verification_metrics",
    "pair_scores",
    "roc_auc",
    "tar_at_far",
    "open_set_identification",
]

log = logging.getLogger(__name__)

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r", "recall_at_5", "recall_at_10")
CLUSTERING_KEYS = ("nmi", "cluster_accuracy")
#: the false-accept rates a run's verification figures (and so its thresholds) are at; the
#: export keeps each threshold with the model, and a request to the server picks one
VERIFICATION_FARS = (1e-3, 1e-2, 1e-4)
VERIFICATION_KEYS = (
    "roc_auc",
    "tar_at_far_1e-3",
    "threshold_at_far_1e-3",
    "tar_at_far_1e-2",
    "threshold_at_far_1e-2",
    "tar_at_far_1e-4",
    "threshold_at_far_1e-4",
    "dir_at_far_1e-2",
)
#: the false-alarm rates of open-set identification (``zoo/metrics/open_set.py``)
IDENTIFICATION_FARS = (1e-2,)
CLASSIFICATION_KEYS = ("accuracy", "top5_accuracy", "ece")


def metric_names(
    prefix: str = "test_", logits: bool = True, clustering: bool = True, verification: bool = True
) -> list[str]:
    """The keys ``evaluate`` returns for these options, in order (for tables and tests)."""
    names = list(RETRIEVAL_KEYS)
    if clustering:
        names += CLUSTERING_KEYS
    if verification:
        names += VERIFICATION_KEYS
    if logits:
        names += CLASSIFICATION_KEYS
    return [prefix + n for n in names]


#: Words that, as a whole word of a metric name, make it one to minimise.
LOWER_IS_BETTER_WORDS = frozenset({"loss", "ece", "error"})


def higher_is_better(metric: str) -> bool:
    """Losses, calibration error and error rates are minimised; every other metric maximised.

    Whole words of the name count (``train_loss``, ``test_ece``, ``..._calibration_error``).
    """
    return not LOWER_IS_BETTER_WORDS & set(re.split(r"[^a-z0-9]+", metric.lower()))


def evaluate(
    embeddings: Any,
    labels: Any,
    logits: Any | None = None,
    prefix: str = "test_",
    clustering: bool = True,
    verification: bool = True,
) -> dict[str, float]:
    """Every metric of one evaluation set as ``{prefix + name: float}``, ready for MLflow.

    Always: ``precision_at_1, r_precision, map_at_r, recall_at_5, recall_at_10``.
    ``clustering=True``: ``nmi, cluster_accuracy`` (k-means; the slow part on large sets).
    ``verification=True``: ``roc_auc``, ``tar_at_far_*`` and ``threshold_at_far_*`` at
    each of ``VERIFICATION_FARS`` (pairs), and ``dir_at_far_1e-2`` (open-set
    identification: half the identities enrolled, the other half impostors).
    With ``logits``: ``accuracy, top5_accuracy, ece``.
    Per-epoch validation turns clustering and verification off to stay cheap.
    Undefined values (e.g. no class with two samples) are NaN rather than errors.
    """
    out: dict[str, float] = {}
    ret = retrieval_metrics(embeddings, labels, ks=(5, 10))
    out.update({k: ret[k] for k in RETRIEVAL_KEYS})
    if clustering:
        out.update(clustering_metrics(embeddings, labels))
    if verification:
        ver = verification_metrics(embeddings, labels, fars=VERIFICATION_FARS)
        ver.update(open_set_identification(embeddings, labels, fars=IDENTIFICATION_FARS))
        out.update({k: ver[k] for k in VERIFICATION_KEYS})
    if logits is not None:
        out["accuracy"] = accuracy(logits, labels)
        out["top5_accuracy"] = top_k_accuracy(logits, labels, k=5)
        out["ece"] = expected_calibration_error(logits, labels)
    result = {prefix + k: float(v) for k, v in out.items()}
    log.debug("evaluate(%s): %s", prefix, result)
    return result
