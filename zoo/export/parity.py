"""Does an exported model answer like the eager one? Measured on real inputs, not noise.

Random noise is far from the training distribution and can hide (or invent) differences:
BatchNorm statistics, saturated activations and near-tied classes only show on real data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from zoo.export.formats import Runner


@dataclass(frozen=True)
class ParityThresholds:
    """The largest embedding difference and the smallest top-1 agreement that pass."""

    max_abs_diff: float = 1e-4
    min_top1_agreement: float = 0.999


@dataclass(frozen=True)
class Parity:
    """How closely one format's outputs follow the eager model's on ``samples`` inputs."""

    format: str
    samples: int
    max_abs_diff: float  # of the L2-normalised embeddings
    mean_cosine: float  # between eager and exported embeddings
    top1_agreement: float | None  # share of inputs whose arg-max class agrees (None: no logits)
    logits_max_abs_diff: float | None

    def failures(self, limits: ParityThresholds) -> list[str]:
        """Why this format fails ``limits`` (empty when it passes)."""
        problems = []
        if not self.max_abs_diff <= limits.max_abs_diff:  # NaN fails too
            problems.append(f"embeddings differ by up to {self.max_abs_diff:.3g} "
                            f"(limit {limits.max_abs_diff:g})")
        if self.top1_agreement is not None and not self.top1_agreement >= limits.min_top1_agreement:
            problems.append(f"top-1 agreement {self.top1_agreement:.2%} "
                            f"(needs {limits.min_top1_agreement:.2%})")
        return problems

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix><format>_<figure>`` → value, for MLflow."""
        return {f"{prefix}{self.format}_{k}": float(v) for k, v in asdict(self).items()
                if k not in ("format", "samples") and v is not None}


def reference_outputs(reference: Runner, x: Any, batch_size: int = 64
                      ) -> dict[str, np.ndarray]:
    """Run ``reference`` over ``x`` in batches and concatenate."""
    return _run(reference, x, batch_size)


def measure_parity(fmt: str, candidate: Runner, x: Any,
                   reference: dict[str, np.ndarray], batch_size: int = 64) -> Parity:
    """Compare ``candidate`` on ``x`` (in batches, so the dynamic batch axis is exercised,
    last partial batch included) with the eager ``reference`` outputs."""
    got = _run(candidate, x, batch_size)
    ref_emb, emb = reference["embedding"].astype(np.float64), got["embedding"].astype(np.float64)
    if emb.shape != ref_emb.shape:
        raise ValueError(f"{fmt}: embeddings of shape {emb.shape}, eager gives {ref_emb.shape}")
    cosine = (ref_emb * emb).sum(1) / (np.linalg.norm(ref_emb, axis=1)
                                       * np.linalg.norm(emb, axis=1) + 1e-12)
    agreement = logits_diff = None
    if "logits" in reference:
        if "logits" not in got:
            raise ValueError(f"{fmt}: the exported model has no logits output")
        agreement = float((got["logits"].argmax(1) == reference["logits"].argmax(1)).mean())
        logits_diff = float(np.abs(got["logits"] - reference["logits"]).max())
    return Parity(fmt, len(x), float(np.abs(emb - ref_emb).max()), float(cosine.mean()),
                  agreement, logits_diff)


def _run(runner: Runner, x: Any, batch_size: int) -> dict[str, np.ndarray]:
    """``x``: an array, a tensor or ``LazyImages`` (anything indexed by a tensor of rows)."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(x)))
        batch = x[rows.numpy()] if isinstance(x, np.ndarray) else x[rows]
        batch = batch.numpy() if torch.is_tensor(batch) else np.asarray(batch)
        for key, value in runner(batch.astype(np.float32, copy=False)).items():
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}
