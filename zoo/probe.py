"""A fixed probe: what a data set looks like, measured the same way for every data set.

Nothing here is trained: the probe is a fixed function of the raw inputs, so probe
embeddings logged by a sweep a month ago compare with those of a data set seen today.

- Images: grey, resized to 16x16, each image standardised (so brightness and contrast do
  not count), projected on 32 fixed random directions (seed 0). Similar pictures (faces and
  faces, digits and digits) land in similar places.
- Tabular rows: each column standardised over the sample, then the 16 quantiles of each
  row's values: a description of the row's shape that does not depend on the number or the
  order of the columns.

Two data sets are compared by the Fréchet distance between Gaussians fitted to their probe
embeddings (the distance FID uses), plus how different their numbers of classes are.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

PROBE_VERSION = "1"
IMAGE_SIDE, IMAGE_DIMS, ROW_QUANTILES = 16, 32, 16


def _projection() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(IMAGE_SIDE * IMAGE_SIDE, IMAGE_DIMS, generator=g))
    return q


def probe_images(x: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` images in [0, 1] → ``[N, 32]``."""
    grey = x.float().mean(dim=1, keepdim=True)
    small = F.interpolate(grey, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear",
                          align_corners=False, antialias=True).flatten(1)
    small = (small - small.mean(1, keepdim=True)) / small.std(1, keepdim=True).clamp_min(1e-6)
    return (small @ _projection()).numpy().astype(np.float64)


def probe_rows(x: torch.Tensor) -> np.ndarray:
    """``[N, F]`` rows → ``[N, 16]`` quantiles of each standardised row."""
    rows = x.double()
    rows = (rows - rows.mean(0)) / rows.std(0).clamp_min(1e-9)
    levels = torch.linspace(0.0, 1.0, ROW_QUANTILES, dtype=torch.float64)
    return torch.quantile(rows, levels, dim=1).T.numpy()


def probe(x: torch.Tensor, kind: str) -> np.ndarray:
    """The probe embedding of a sample of a data set of ``kind`` (``image`` / ``tabular``)."""
    if kind == "image":
        return probe_images(x)
    if kind == "tabular":
        return probe_rows(x)
    raise ValueError(f"no probe for {kind!r} data")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½)`` of Gaussians fitted to a and b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = np.real(root)
    # never below 0 (it is a squared distance); sqrtm's rounding can dip a hair under it
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)))


def dissimilarity(a: np.ndarray, classes_a: int, b: np.ndarray, classes_b: int) -> float:
    """How unlike two data sets are: the probe distance, plus the log-ratio of their class
    counts (ten classes and forty are different problems, whatever the pictures)."""
    return frechet_distance(a, b) + abs(math.log(max(classes_a, 1) / max(classes_b, 1)))
