"""Deterministic stratified train/val/test splits, optional open-set classes, normalisation.

Statistics are fitted on the training split only and applied to every split (and saved in
``Preprocessing`` for the server), so no evaluation sample leaks into training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from .images import ImageSet, StoredImages
from .lazy import LazyImages
from .preprocessing import Preprocessing, normalise
from .sources import LoadedData
from .table_encoding import Column, numeric_positions
from .tables import Table

if TYPE_CHECKING:
    from zoo.faces import FaceStage
    from zoo.faces.chips import FaceReport

log = logging.getLogger(__name__)

MAX_STAT_IMAGES = 2048  # lazy folders: images decoded to estimate mean/std
_MIN_STD = 1e-6


@dataclass
class Split:
    """One part of a data set: normalised inputs and labels (and where they came from)."""

    x: torch.Tensor | ImageSet
    y: torch.Tensor
    indices: torch.Tensor | None = None  # rows of the LoadedData these samples are

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    """train/val/test over the trained classes, plus samples of held-out (open) classes."""

    train: Split
    val: Split
    test: Split
    open: Split | None  # samples of held-out classes (open_set > 0), else None
    class_names: list[str]  # the classes trained on; train/val/test labels are 0..len-1
    open_class_names: list[str]  # held-out classes; open labels are len(class_names)..
    preprocessing: Preprocessing  # mean/std fitted on the TRAIN split only
    faces: FaceStage | None = None  # the face stage the photos went through
    face_report: FaceReport | None = None  # what it found (zoo.faces.chips)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def kind(self) -> str:
        return self.preprocessing.kind


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of ``n``: test first, then val, train keeps >=1."""
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = min(n_test, n - 1)
    n_val = min(n_val, n - 1 - n_test)
    return n - n_val - n_test, n_val, n_test


def _image_stats(x: ImageSet, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the images in [0, 1] (two passes, float64, a chunk at a time
    so memory stays flat; files decoded on access are sampled, and decoded once)."""
    n = len(x)
    if isinstance(x, LazyImages):
        if n > MAX_STAT_IMAGES:
            pick = np.sort(np.random.default_rng(seed).choice(n, MAX_STAT_IMAGES, replace=False))
            log.info("estimating mean/std from %d of %d training images", MAX_STAT_IMAGES, n)
            x = x.subset(torch.from_numpy(pick))
        x = StoredImages(x.raw(list(range(len(x)))))

    def chunks() -> Iterator[torch.Tensor]:
        for lo in range(0, len(x), 1024):
            yield x[lo:lo + 1024].double()

    channels = x.shape[1]
    count = x.shape[0] * x.shape[2] * x.shape[3]
    total = torch.zeros(channels, dtype=torch.float64)
    for chunk in chunks():
        total += chunk.sum(dim=(0, 2, 3))
    mean = total / count
    sq = torch.zeros(channels, dtype=torch.float64)
    for chunk in chunks():
        sq += ((chunk - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
    std = (sq / count).sqrt()
    return mean.tolist(), [s if s > _MIN_STD else 1.0 for s in std.tolist()]


def _tabular_stats(x: torch.Tensor, positions: list[int] | None = None
                   ) -> tuple[list[float], list[float]]:
    """Per-feature mean/std; constant features get std 1 so they stay finite. Only the
    features at ``positions`` (default all) are standardised; others keep mean 0, std 1."""
    std, mean = torch.std_mean(x.double(), dim=0, unbiased=False)
    stats = [(m, s if s > _MIN_STD * max(1.0, abs(m)) else 1.0)
             for s, m in zip(std.tolist(), mean.tolist())]
    if positions is not None:
        kept = set(positions)
        stats = [stat if j in kept else (0.0, 1.0) for j, stat in enumerate(stats)]
    return [m for m, _ in stats], [s for _, s in stats]


def _take(x: torch.Tensor | ImageSet, idx: torch.Tensor, mean: list[float], std: list[float]):
    if isinstance(x, ImageSet):
        return x.subset(idx).normalised(mean, std)
    return normalise(x[idx], mean, std)


def split_data(
    data: LoadedData,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    open_set: float = 0.0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    columns: list[Column] | None = None,
) -> Splits:
    """Split per class (every class with >=3 samples lands in train, val and test).

    ``open_set`` is the fraction of classes (picked by ``seed``) held out of training: all
    their samples go to ``open``, labelled after the trained classes. The same seed always
    gives the same split; indices within each split are in data order. ``mean``/``std``
    normalise instead of the training split's statistics (a pretrained model's own), and a
    table's ``columns`` encode it instead of a fit on the training rows (a trained model's).
    """
    _check_fractions(val_fraction, test_fraction, open_set)
    open_classes = _open_classes(data, open_set, seed)
    trained = [c for c in range(len(data.class_names)) if c not in set(open_classes)]
    _check_class_sizes(data, trained, val_fraction, test_fraction)
    index = _stratified_indices(data, trained, seed, val_fraction, test_fraction)
    open_index = torch.from_numpy(np.flatnonzero(np.isin(data.y.cpu().numpy(),
                                                         open_classes))).long()
    y_all = _relabelled(data, trained + open_classes)
    x, columns = _encoded_inputs(data, index["train"], columns)
    mean, std = _statistics(data, x, index["train"], columns, seed, mean, std)
    class_names = [data.class_names[c] for c in trained]
    open_names = [data.class_names[c] for c in open_classes]
    pre = Preprocessing(
        kind=data.kind,
        input_size=tuple(int(s) for s in x.shape[1:]),
        mean=mean,
        std=std,
        class_names=class_names,
        feature_names=list(data.feature_names) if data.feature_names else None,
        interpolation=data.interpolation,
        columns=[c.to_dict() for c in columns] if columns else None,
    )

    def make(idx: torch.Tensor) -> Split:
        return Split(_take(x, idx, mean, std), y_all[idx], idx)

    splits = Splits(
        train=make(index["train"]),
        val=make(index["val"]),
        test=make(index["test"]),
        open=make(open_index) if open_classes else None,
        class_names=class_names,
        open_class_names=open_names,
        preprocessing=pre,
        faces=data.faces,
        face_report=data.face_report,
    )
    log.info(
        "%s split (seed %d): train %d, val %d, test %d, open %d (%d held-out classes)",
        data.name, seed, len(splits.train), len(splits.val), len(splits.test),
        len(open_index), len(open_names),
    )
    return splits


def _check_fractions(val_fraction: float, test_fraction: float, open_set: float) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                    ("open_set", open_set)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )


def _open_classes(data: LoadedData, open_set: float, seed: int) -> list[int]:
    """The held-out classes, drawn from their own stream so the choice does not move the
    split of the others."""
    n_classes = len(data.class_names)
    n_open = 0
    if open_set > 0:
        n_open = min(max(1, round(open_set * n_classes)), n_classes - 2)
        if n_open < 1:
            raise ValueError(f"open_set needs at least 3 classes, {data.name} has {n_classes}")
    open_rng = np.random.default_rng([seed, 1])
    return sorted(open_rng.choice(n_classes, n_open, replace=False).tolist())


def _check_class_sizes(data: LoadedData, trained: list[int], val_fraction: float,
                       test_fraction: float) -> None:
    counts = np.bincount(data.y.cpu().numpy(), minlength=len(data.class_names))
    needs = 1 + (val_fraction > 0 or test_fraction > 0)
    tiny = [data.class_names[c] for c in trained if counts[c] < needs]
    if tiny:
        raise ValueError(
            f"{data.name}: class(es) {tiny} have fewer than {needs} samples; a train/test "
            f"split needs at least {needs} per class (add samples or remove those classes)"
        )


def _stratified_indices(data: LoadedData, trained: list[int], seed: int, val_fraction: float,
                        test_fraction: float) -> dict[str, torch.Tensor]:
    """train/val/test rows of the trained classes, each class shuffled by ``seed`` and cut
    test first, then val; each split's rows in data order."""
    y = data.y.cpu().numpy()
    rng = np.random.default_rng([seed, 0])
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    short_val = []
    for c in trained:
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        n_train, n_val, n_test = _counts(len(members), val_fraction, test_fraction)
        if val_fraction > 0 and n_val == 0:
            short_val.append(data.class_names[c])
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    if short_val:
        log.warning("%s: class(es) %s too small for a validation sample", data.name, short_val)
    return {k: torch.from_numpy(np.sort(np.concatenate(v))).long() for k, v in parts.items()}


def _relabelled(data: LoadedData, order: list[int]) -> torch.Tensor:
    """Every sample's label in the split's numbering: trained classes 0..k-1 in their
    original order, open classes after them."""
    remap = torch.full((len(data.class_names),), -1, dtype=torch.int64)
    for new, old in enumerate(order):
        remap[old] = new
    return remap[data.y.long()]


def _encoded_inputs(data: LoadedData, train_index: torch.Tensor,
                    columns: list[Column] | None = None
                    ) -> tuple[torch.Tensor | ImageSet, list[Column] | None]:
    """The inputs as the model reads them: a table's encoding (``columns``, else fitted on
    the training rows) applied to every row; images pass through."""
    if not isinstance(data.x, Table):
        return data.x, None
    columns = columns if columns is not None else data.x[train_index].fit()
    return data.x.encoded(columns), columns


def _statistics(data: LoadedData, x: torch.Tensor | ImageSet, train_index: torch.Tensor,
                columns: list[Column] | None, seed: int, mean: list[float] | None,
                std: list[float] | None) -> tuple[list[float], list[float]]:
    """The normalisation: the given ``mean``/``std`` (checked for size), else fitted on the
    training split."""
    width = int(x.shape[1])
    if mean is not None and std is not None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != width or len(std) != width:
            what = "channel" if data.kind == "image" else "feature"
            raise ValueError(f"mean and std need one value per {what} ({width}), got "
                             f"{len(mean)} and {len(std)}")
        return mean, std
    if data.kind == "image":
        return _image_stats(_select(x, train_index), seed)
    return _tabular_stats(x[train_index], numeric_positions(columns) if columns else None)


def _select(x: torch.Tensor | ImageSet, idx: torch.Tensor) -> torch.Tensor | ImageSet:
    return x.subset(idx) if isinstance(x, ImageSet) else x[idx]
