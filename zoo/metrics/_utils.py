"""Small conversions shared by the metric modules (numpy in, whatever the caller had)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to CPU first.

    Metrics run on the CPU in numpy so they give the same answer wherever the model ran.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def l2_normalize(embeddings: Any) -> np.ndarray:
    """Float32, C-contiguous, unit-norm rows (faiss wants exactly this; zero rows stay zero)."""
    x = to_numpy(embeddings).astype(np.float32, copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return np.ascontiguousarray(x)


def check_labels(labels: Any, n: int) -> np.ndarray:
    """1-D label array of length ``n`` (any dtype with equality)."""
    y = to_numpy(labels).reshape(-1)
    if len(y) != n:
        raise ValueError(f"got {n} embeddings but {len(y)} labels")
    return y


def far_key(far: float) -> str:
    """Compact, stable spelling of a FAR for metric names: 1e-3 -> '1e-3', 0.05 -> '5e-2'.

    Values that one significant digit cannot hold exactly fall back to ``%g`` (0.25 -> '0.25').
    """
    mantissa, exponent = f"{far:.0e}".split("e")
    compact = f"{mantissa}e{int(exponent)}"
    return compact if float(compact) == far else f"{far:g}"
