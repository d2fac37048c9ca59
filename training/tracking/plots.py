"""Figures logged with every run: training curves, confusion matrix, 2-D embedding map."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Train loss (left) and validation metrics (right) per epoch."""
    epochs = np.arange(1, len(history) + 1)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train_loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    keys = sorted(k for k in history[0] if k.startswith("val_"))
    for key in keys:
        ax_val.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_val.set(xlabel="epoch", title="validation", ylim=(0, 1.02))
    ax_val.grid(alpha=0.3)
    if keys:
        ax_val.legend(loc="lower right", fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation split (val_fraction=0)", ha="center",
                    va="center", transform=ax_val.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix; counts in the cells when there are few classes."""
    n = len(class_names)
    size = min(14, 3 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] / rows[i, 0] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_embedding_map(
    embeddings: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path,
    title: str = "test embeddings", seed: int = 0,
) -> Path:
    """t-SNE (PCA for large sets) of embeddings, coloured by class."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    emb = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if len(emb) >= 10 and len(emb) <= 3000:
        perplexity = min(30.0, (len(emb) - 1) / 3)
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
        method = "t-SNE"
    else:
        xy = (PCA(2, random_state=seed).fit_transform(emb) if len(emb) > 2
              else np.zeros((len(emb), 2)))
        method = "PCA"
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c in np.unique(labels):
        mask = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=10, color=cmap(int(c) % cmap.N), label=name)
    if len(class_names) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best")
    ax.set(title=f"{title} ({method})", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
