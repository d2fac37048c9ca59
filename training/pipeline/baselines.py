"""Baselines without learning, measured on the same split and with the same metrics as a run.

A sweep's comparison table gets a row for each, so a person sees what training has to beat
(on small face sets a CNN trained from scratch often does not beat raw pixels):

- ``pixels``: the normalised input, flattened and centred with the TRAIN mean.
- ``pca``: eigenfaces. PCA fitted on the train split only (flattened, centred), every split
  projected onto it, no whitening (the classic recipe). Components: the fewest that keep
  ``PCA_VARIANCE`` of the train variance, capped by ``n_train - 1`` (the rank of centred
  train data), ``PCA_MAX_COMPONENTS`` and the input width. At most ``PCA_MAX_FIT`` train
  samples (a seeded draw) enter the fit, which bounds its cost on large image folders
  (the embeddings of every split are still held in memory, as a run's evaluation does).

Both classify like a pair-loss run: cosine logits against the class means of the train
embeddings, the scale temperature-calibrated on val
(``training.engine.evaluation.calibrate_scale``).
Embeddings are L2-normalised like a model's, so prototypes are means of unit vectors.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from training.engine.evaluation import calibrate_scale
from zoo.data import ImageSet, Split, Splits
from zoo.metrics import evaluate
from zoo.models import CosineClassifier

log = logging.getLogger(__name__)

BASELINES = ("pixels", "pca")
PCA_VARIANCE = 0.95  # fraction of train variance the kept components explain
PCA_MAX_COMPONENTS = 128  # eigenfaces papers keep tens to low hundreds
PCA_MAX_FIT = 2048  # train samples the PCA is fitted on (all of them up to this many)
CHUNK = 512  # samples flattened at a time (lazy folders decode per chunk)

Inputs = torch.Tensor | ImageSet


def _check(name: str) -> None:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}")


def _chunks(x: Inputs, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """Flattened float64 rows ``[n, F]`` a chunk at a time (images decoded only here)."""
    for start in range(0, len(x), chunk):
        idx = torch.arange(start, min(start + chunk, len(x)))
        yield x[idx].reshape(len(idx), -1).double()


def _flat(x: Inputs) -> torch.Tensor:
    """All of ``x`` flattened to float64 ``[N, F]``."""
    width = int(np.prod(tuple(x.shape[1:])))
    return torch.cat(list(_chunks(x)) or [torch.zeros(0, width, dtype=torch.float64)])


@dataclass
class BaselineEmbedder:
    """A fitted baseline: ``embed(x) = normalize((flat(x) - mean) @ components)``."""

    name: str
    mean: torch.Tensor  # [F] train mean (float64)
    components: torch.Tensor | None  # [F, k] PCA basis (orthonormal columns); None for pixels
    explained_variance: float = 1.0  # fraction of train variance the embedding keeps

    @property
    def dim(self) -> int:
        return len(self.mean) if self.components is None else self.components.shape[1]

    def __call__(self, x: Inputs) -> torch.Tensor:
        """L2-normalised float32 embeddings ``[N, dim]``, computed a chunk at a time."""
        parts = []
        for rows in _chunks(x):
            centred = rows - self.mean
            z = centred if self.components is None else centred @ self.components
            parts.append(F.normalize(z.float(), dim=1))
        return torch.cat(parts) if parts else torch.zeros(0, self.dim)


def pca_components(n_train: int, explained: np.ndarray, width: int) -> int:
    """Components kept: enough for ``PCA_VARIANCE``, capped by rank, the cap and the width."""
    cap = max(1, min(n_train - 1, PCA_MAX_COMPONENTS, width))
    total = explained.sum()
    if total <= 0:
        return 1
    enough = int(np.searchsorted(np.cumsum(explained) / total, PCA_VARIANCE) + 1)
    return max(1, min(enough, cap))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded for a while (restored afterwards, even on error)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one thread: LAPACK's threaded eigh slows down 50x (18 s vs
    0.3 s for 1169², measured here) when other processes share the cores, and one thread
    is fast enough for the at most ``PCA_MAX_FIT``² matrix it gets."""
    with _one_thread():
        return torch.linalg.eigh(gram)


def _principal_axes(centred: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Principal axes ``[F, r]`` (columns, by decreasing variance) and their variances.

    Eigen-decomposes the smaller of the two Gram matrices in float64 (``X Xᵀ`` when there are
    fewer samples than features, as with images): exact, deterministic, and several times
    faster here than a thin SVD of ``X``. Signs are fixed (largest loading positive).
    """
    n, width = centred.shape
    if n < width:
        evals, u = _eigh(centred @ centred.T)  # ascending
        evals, u = evals.flip(0), u.flip(1)
        keep = evals > max(float(evals[0]), 0.0) * 1e-10  # rank <= n - 1 after centring
        evals, u = evals[keep], u[:, keep]
        axes = centred.T @ u / evals.sqrt()
    else:
        evals, axes = _eigh(centred.T @ centred)
        evals, axes = evals.flip(0).clamp(min=0), axes.flip(1)
    axes = F.normalize(axes, dim=0)
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    return axes, evals.numpy()


def fit_baseline(train_x: Inputs, name: str, seed: int = 0) -> BaselineEmbedder:
    """Fit ``name`` on train inputs only (nothing of val/test/open is seen)."""
    _check(name)
    n = len(train_x)
    if n == 0:
        raise ValueError("a baseline needs at least one training sample")
    total, count = None, 0
    for rows in _chunks(train_x):
        total = rows.sum(0) if total is None else total + rows.sum(0)
        count += len(rows)
    mean = total / count
    if name == "pixels":
        return BaselineEmbedder(name, mean, None)

    if n > PCA_MAX_FIT:
        pick = np.sort(np.random.default_rng(seed).choice(n, PCA_MAX_FIT, replace=False))
        log.info("pca baseline: fitting on %d of %d training samples", PCA_MAX_FIT, n)
        fit_x = train_x[torch.from_numpy(pick)].reshape(PCA_MAX_FIT, -1).double()
    else:
        fit_x = _flat(train_x)
    basis, var = _principal_axes(fit_x - mean)
    if var.size == 0 or var.sum() <= 0:
        raise ValueError("pca baseline: the training inputs are all identical, no axis to keep")
    k = pca_components(len(fit_x), var, fit_x.shape[1])
    kept = float(var[:k].sum() / var.sum())
    basis = basis[:, :k].contiguous()
    log.info("pca baseline: %d components keep %.1f%% of train variance (%d features)",
             k, 100 * kept, fit_x.shape[1])
    return BaselineEmbedder(name, mean, basis, kept)


def embed_baseline(splits: Splits, name: str) -> dict[str, torch.Tensor]:
    """Embeddings of every split (``train``, ``val``, ``test`` and ``open`` when present)."""
    embedder = fit_baseline(splits.train.x, name)
    parts: dict[str, Split | None] = {
        "train": splits.train, "val": splits.val, "test": splits.test, "open": splits.open,
    }
    return {key: embedder(split.x) for key, split in parts.items()
            if split is not None and len(split)}


def baseline_metrics(splits: Splits, name: str) -> dict[str, float]:
    """The metrics a training run logs at the end (``test_*``, ``open_*``), for ``name``.

    Logits: cosine against train class means, scale calibrated on val, as for a pair loss.
    """
    _check(name)
    emb = embed_baseline(splits, name)
    head = CosineClassifier.from_prototypes(emb["train"], splits.train.y, splits.num_classes)
    scale = calibrate_scale(head, emb["val"], splits.val.y) if "val" in emb else None
    with torch.no_grad():
        test_logits = head(emb["test"])
    metrics = evaluate(emb["test"], splits.test.y, test_logits, prefix="test_")
    if "open" in emb and len(splits.open):
        metrics.update(evaluate(emb["open"], splits.open.y, None, prefix="open_"))
    log.info("baseline %s (%d-d, scale %s): test P@1 %.4f, MAP@R %.4f", name,
             emb["test"].shape[1], "uncalibrated" if scale is None else f"{scale:.1f}",
             metrics["test_precision_at_1"], metrics["test_map_at_r"])
    return metrics
