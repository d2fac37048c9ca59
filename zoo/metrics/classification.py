"""Classification metrics on logits: accuracy, top-k, calibration, confusion matrix.

Every function takes logits ``[N, C]`` (torch or numpy) and integer labels ``[N]`` in
``0..C-1``, and returns a plain ``float`` (or an ``np.ndarray`` for the confusion matrix) so
the result can be logged to MLflow directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._utils import to_numpy

__all__ = ["accuracy", "top_k_accuracy", "expected_calibration_error", "confusion_matrix",
           "softmax"]


def _logits_and_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = to_numpy(logits).astype(np.float64)
    y = to_numpy(labels).reshape(-1).astype(np.int64)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"need logits [N, C] and labels [N], got {z.shape} and {y.shape}")
    return z, y


def _predictions(logits_or_preds: Any) -> np.ndarray:
    """Argmax of 2-D logits; 1-D input is taken to be predicted class ids already."""
    a = to_numpy(logits_or_preds)
    return (a.argmax(axis=1) if a.ndim == 2 else a.reshape(-1)).astype(np.int64)


def softmax(logits: Any) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64)."""
    z = to_numpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(logits: Any, labels: Any) -> float:
    """Fraction of samples whose argmax class equals the label (1-D input = predictions)."""
    y = to_numpy(labels).reshape(-1).astype(np.int64)
    pred = _predictions(logits)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions but {len(y)} labels")
    if len(y) == 0:
        return float("nan")
    return float(np.mean(pred == y))


def top_k_accuracy(logits: Any, labels: Any, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits.

    ``k`` is clipped to the number of classes, so ``top5`` on a 3-class problem is 1.0 rather
    than an error: the same metric name works for every data set in a sweep.
    """
    z, y = _logits_and_labels(logits, labels)
    if len(y) == 0:
        return float("nan")
    k = max(1, min(int(k), z.shape[1]))
    # The label is in the top k iff fewer than k classes score strictly higher than it
    # (a tie with the label's score counts as a hit; real logits almost never tie).
    label_score = z[np.arange(len(y)), y]
    n_higher = (z > label_score[:, None]).sum(axis=1)
    return float(np.mean(n_higher < k))


def expected_calibration_error(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017) of the max softmax probability.

    Softmax is applied here, so pass raw logits. Confidences fall into ``n_bins`` equal-width
    bins ``(i/n, (i+1)/n]``; ECE = sum over bins of ``|bin| / N * |accuracy - mean confidence|``.
    Zero means "a confidence of p is right a fraction p of the time", which is what a server
    thresholding on probability needs.
    """
    z, y = _logits_and_labels(logits, labels)
    if len(y) == 0:
        return float("nan")
    probs = softmax(z)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds conf in (b/n, (b+1)/n]; ceil(conf*n)-1 does that, conf=0 joins bin 0.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    # sum_b |B|/N * |acc_b - conf_b| == sum_b |acc_sum_b - conf_sum_b| / N
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


def confusion_matrix(logits_or_preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts; row = true class, column = predicted.

    Same orientation as scikit-learn, so plots and per-class recall (row-normalised) read the
    usual way. Accepts logits ``[N, C]`` or predicted ids ``[N]``.
    """
    y = to_numpy(labels).reshape(-1).astype(np.int64)
    pred = _predictions(logits_or_preds)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions but {len(y)} labels")
    if len(y) and (min(y.min(), pred.min()) < 0 or max(y.max(), pred.max()) >= num_classes):
        raise ValueError(f"labels/predictions must lie in [0, {num_classes})")
    flat = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)
