"""Data sources: a registry of loaders and one ``load_data`` that picks by name or path.

Every source returns a ``LoadedData`` of raw values (images as 8-bit pixels in an ``ImageSet``
that reads as floats in [0, 1]; tabular as read);
normalisation is fitted later on the training split only (see ``splits.py``).
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .images import ImageSet, StoredImages
from .lazy import LazyImages, check_file, decode_files, thread_map
from .preprocessing import DEFAULT_INTERPOLATION, image_to_array
from .registry import DATASETS

if TYPE_CHECKING:
    from zoo.faces import FaceStage
    from zoo.faces.chips import FaceReport

    from .tables import Table

log = logging.getLogger(__name__)

@dataclass
class LoadedData:
    """A whole data set before splitting: raw inputs, integer labels, names."""

    name: str  # "digits", "emitters", the folder's name, the csv file stem
    kind: str  # "image" | "tabular"
    x: "torch.Tensor | ImageSet | Table"  # images: uint8 at rest, read as float32
    #   [N,C,H,W] in [0,1]; tables: their raw columns; other rows: float32 [N,F]
    y: torch.Tensor  # int64 [N], 0..C-1
    class_names: list[str]
    feature_names: list[str] | None = None
    paths: list[str] | None = None  # for image folders
    interpolation: str = DEFAULT_INTERPOLATION  # images: the resize filter they were read with
    faces: "FaceStage | None" = None  # the face stage the photos went through
    face_report: "FaceReport | None" = None  # what it found

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


PRELOAD_ENV = "ZOO_PRELOAD_MB"


def memory_budget_bytes(fraction: float = 0.25) -> int:
    """How much preloaded images may take: ``ZOO_PRELOAD_MB`` MiB when set (a machine's
    setting, not a model's), else a fraction of physical RAM."""
    setting = os.environ.get(PRELOAD_ENV, "").strip()
    if setting:
        try:
            mib = float(setting)
        except ValueError:
            mib = -1.0
        if not mib >= 0:
            raise ValueError(f"{PRELOAD_ENV}={setting!r} is not a size in MiB (a number >= 0)")
        return int(mib * 2**20)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        total = 8 << 30
    return int(total * fraction)


# --------------------------------------------------------------------------- digits
@DATASETS.register("digits")
def digits(*, image_size: int | tuple[int, int] = 32, channels: int = 3,
           interpolation: str = DEFAULT_INTERPOLATION) -> LoadedData:
    """scikit-learn's 8x8 handwritten digits (1,797 images), upsampled; ships offline.

    Each digit becomes an 8-bit greyscale PIL image and goes through the same resize code as
    folders and the server, so a digit saved as PNG and served matches its training input.
    """
    from sklearn.datasets import load_digits

    _check_channels(channels)
    size = _image_size(image_size)
    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 16 levels -> 0..255
    x = StoredImages(torch.from_numpy(np.stack(
        [image_to_array(Image.fromarray(img, mode="L"), channels, size, interpolation)
         for img in grey]
    )))
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return LoadedData("digits", "image", x, y, [str(c) for c in range(10)],
                      interpolation=interpolation)


# --------------------------------------------------------------------------- folder
def image_extensions() -> set[str]:
    """Every extension PIL has a decoder for (.pgm, .png, .jpg, .bmp, .webp, .tif, ...)."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_folder(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted subfolders holding images), image paths and their labels."""
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    extensions = image_extensions()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, list[Path]] = {}
    skipped = 0
    for sub in subdirs:
        files = sorted(
            p for p in sub.rglob("*") if p.is_file() and not _hidden(p, root)
        )
        images = [p for p in files if p.suffix.lower() in extensions]
        skipped += len(files) - len(images)
        if images:
            found[sub.name] = images
        else:
            log.warning("folder %s holds no image files; not a class", sub)
    if skipped:
        log.info("%s: skipped %d files without an image extension", root, skipped)
    if not found:
        raise ValueError(
            f"image folder {root} has no readable images "
            f"(expected one subfolder per class holding image files; "
            f"subfolders: {[p.name for p in subdirs] or 'none'})"
        )
    if len(found) < 2:
        raise ValueError(
            f"image folder {root} needs at least 2 classes (one subfolder each), "
            f"found {len(found)}: {sorted(found)}"
        )
    class_names = sorted(found)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        paths += [str(p) for p in found[name]]
        labels += [label] * len(found[name])
    return class_names, paths, labels


@DATASETS.register("folder")
def folder(
    path: str | Path,
    *,
    image_size: int | tuple[int, int] = 32,
    channels: int = 3,
    memory_budget: int | None = None,
    workers: int | None = None,
    interpolation: str = DEFAULT_INTERPOLATION,
    faces: FaceStage | None = None,
    faces_missing: str = "whole",
) -> LoadedData:
    """A folder-per-class image tree (anything PIL reads); class = subfolder name, sorted.

    Decoded once into memory as 8-bit pixels when ``N*C*H*W`` bytes fit ``memory_budget``
    (default 25% of RAM); otherwise headers are checked and a ``LazyImages`` decodes batches
    on access. With a face stage (``faces``) every photo becomes its largest face's aligned
    chip (``zoo.faces``), cached on disk; ``faces_missing`` says what a photo without a face
    becomes: its whole image aligned (``whole``), left out (``skip``) or an error (``fail``).
    """
    _check_channels(channels)
    size = _image_size(image_size)
    root = Path(path).expanduser()
    class_names, paths, labels = scan_folder(root)
    name = root.resolve().name
    if faces is not None:
        return _face_folder(root, name, class_names, paths, labels, channels, faces,
                            faces_missing, memory_budget, workers, interpolation)
    y = torch.as_tensor(labels, dtype=torch.int64)
    need = len(paths) * channels * size[0] * size[1]  # uint8
    budget = memory_budget_bytes() if memory_budget is None else int(memory_budget)
    if need <= budget:
        x: ImageSet = StoredImages(decode_files(
            paths, channels, size, workers=workers, desc=f"decoding {name}",
            interpolation=interpolation,
        ), paths=paths, interpolation=interpolation)
    else:
        log.info(
            "%s: %d images need %.3g MiB > budget %.3g MiB; decoding lazily on access",
            root, len(paths), need / 2**20, budget / 2**20,
        )
        for _ in thread_map(check_file, paths, workers=workers, desc=f"checking {name}"):
            pass
        x = LazyImages(paths, channels, size, workers=workers, interpolation=interpolation)
    log.info("%s: %d images, %d classes, %s", root, len(paths), len(class_names), tuple(x.shape))
    return LoadedData(name, "image", x, y, class_names, paths=paths, interpolation=interpolation)


def _face_folder(root: Path, name: str, class_names: list[str], paths: list[str],
                 labels: list[int], channels: int, stage: FaceStage, missing: str,
                 memory_budget: int | None, workers: int | None,
                 interpolation: str) -> LoadedData:
    """A folder of photos through the face stage: every photo aligned once at load (or read
    back from the chip cache), kept in memory when the chips fit the budget, else aligned
    again (from the cache) on access."""
    from zoo.faces.chips import FaceChipper, FaceReport

    chipper = FaceChipper(stage, channels, missing, interpolation=interpolation)
    need = len(paths) * channels * stage.size * stage.size
    budget = memory_budget_bytes() if memory_budget is None else int(memory_budget)
    keep = need <= budget
    kept: list[np.ndarray] = []
    outcomes = []
    present: list[int] = []
    for i, (pixels, outcome) in enumerate(thread_map(chipper, paths, workers=workers,
                                                     desc=f"finding faces in {name}")):
        outcomes.append(outcome)
        if pixels is None:
            continue
        present.append(i)
        if keep:
            kept.append(pixels)
    report = FaceReport.of(outcomes, missing, root)
    if report.missing:
        log.warning("%s: no face found in %d of %d photos (faces_missing=%s)%s", root,
                    len(report.missing), len(paths), missing,
                    "; they are left out" if missing == "skip" else
                    "; their whole images are aligned")
    if not present:
        raise ValueError(f"{root}: no face found in any of its {len(paths)} photos")
    paths = [paths[i] for i in present]
    y = torch.as_tensor([labels[i] for i in present], dtype=torch.int64)
    if keep:
        x: ImageSet = StoredImages(torch.from_numpy(np.stack(kept)), paths=paths,
                                   interpolation=interpolation)
    else:
        x = LazyImages(paths, channels, (stage.size, stage.size), workers=workers,
                       interpolation=interpolation, chipper=chipper)
    log.info("%s: %d photos, %d classes, faces found in %d (%d with several, %d cached)",
             root, len(paths), len(class_names), report.found, report.multiple, report.cached)
    return LoadedData(name, "image", x, y, class_names, paths=paths,
                      interpolation=interpolation, faces=stage, face_report=report)


def _face_options(data: str, faces: str | FaceStage, missing: str,
                  image_size: int) -> dict[str, Any]:
    """The folder options of ``faces=align`` (the stage at ``image_size``) or of a model's own
    ``FaceStage``; any other data is refused with what to give."""
    from zoo.faces import FACE_MODES, FaceStage

    stage = faces if isinstance(faces, FaceStage) else None
    mode = "align" if stage is not None else faces
    if mode not in FACE_MODES:
        raise ValueError(f"faces={faces!r} is not one of {', '.join(FACE_MODES)}")
    prefix, sep, rest = data.partition(":")
    path = Path(rest if sep and prefix == "folder" else data).expanduser()
    if not path.is_dir():
        raise ValueError(f"faces={mode} finds faces in photos: give a folder of photos as the "
                         f"data, not {data!r}")
    if stage is not None:
        return {"faces": stage, "faces_missing": missing}
    if not isinstance(image_size, int):
        raise ValueError(f"faces={faces} aligns square chips: give one image_size, not "
                         f"{image_size!r}")
    return {"faces": FaceStage(size=image_size), "faces_missing": missing}


# --------------------------------------------------------------------------- dispatch
_COMMON = ("image_size", "channels", "seed", "label_column", "interpolation",
           "categorical_columns")
#: Sources that read a path: by name, and by a file's suffix.
_PATH_SOURCES = {"folder": "folder", "csv": "csv", "parquet": "parquet", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}


def _call(name: str, factory: Callable[..., LoadedData], args: tuple, common: dict, kw: dict):
    """Call a source with the common options it takes; unknown ``kw`` is an error."""
    params = inspect.signature(factory).parameters
    unknown = [k for k in kw if k not in params]
    if unknown:
        accepted = [
            p for p, v in params.items() if p not in _COMMON and v.kind == v.KEYWORD_ONLY
        ]
        raise ValueError(
            f"data source {name!r} takes no option(s) {unknown}; its options: {accepted}"
        )
    chosen = {k: v for k, v in common.items() if k in params}
    return factory(*args, **chosen, **kw)


def load_data(
    data: str = "digits",
    *,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    label_column: str = "label",
    interpolation: str = DEFAULT_INTERPOLATION,
    categorical_columns: Sequence[str] | None = None,
    faces: str | FaceStage = "none",
    faces_missing: str = "whole",
    **kw: Any,
) -> LoadedData:
    """Load a data set by registry name (``digits``, ``emitters``) or path.

    A directory is an image ``folder``, a ``.csv`` file a ``csv`` table, a ``.parquet`` file a
    ``parquet`` one; ``folder:PATH``, ``csv:PATH`` and ``parquet:PATH`` say so explicitly.
    ``interpolation`` is the resize filter of images, ``categorical_columns`` the numeric
    columns of a table that hold categories.
    ``faces="align"`` runs the face stage on a folder of photos (``faces_missing``: what a
    photo without a face becomes); a ``FaceStage`` runs that stage (a model's own). ``kw``
    goes to the source (e.g. ``num_emitters=5``).
    """
    data = str(data)
    common = dict(image_size=image_size, channels=channels, seed=seed, label_column=label_column,
                  interpolation=interpolation, categorical_columns=categorical_columns)
    if not (isinstance(faces, str) and faces == "none"):
        kw = {**kw, **_face_options(data, faces, faces_missing, image_size)}
    prefix, sep, rest = data.partition(":")
    if sep and prefix in DATASETS and prefix in _PATH_SOURCES:
        return _call(prefix, DATASETS.get(prefix).factory, (rest,), common, kw)
    if data in DATASETS and data not in _PATH_SOURCES:
        return _call(data, DATASETS.get(data).factory, (), common, kw)
    path = Path(data).expanduser()
    if path.is_dir():
        return _call("folder", DATASETS.get("folder").factory, (path,), common, kw)
    if path.is_file():
        source = _PATH_SOURCES.get(path.suffix.lower())
        if source is not None:
            return _call(source, DATASETS.get(source).factory, (path,), common, kw)
        raise ValueError(
            f"cannot tell what {path} is: give a folder of images, a .csv or .parquet file, "
            f"or 'folder:PATH' / 'csv:PATH' / 'parquet:PATH'"
        )
    builtin = [n for n in DATASETS.names() if n not in _PATH_SOURCES]
    raise FileNotFoundError(
        f"data {data!r} is neither a registered data set ({', '.join(builtin)}) "
        f"nor an existing file or folder"
    )
