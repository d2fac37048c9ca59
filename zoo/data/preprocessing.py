"""Preprocessing that travels with a model: one code path for training data and served inputs.

The folder source, the digits source, ``LazyImages`` and the HTTP server all turn a PIL image
into a tensor through :func:`image_to_tensor`, and all normalise through :func:`normalise`,
so an image served after training is bit-for-bit what the same file was during training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from .table_encoding import Column, encode, total_width

IMAGE_CHANNEL_MODES = {1: "L", 3: "RGB"}
_EXIF_ORIENTATION = 0x0112
#: Resize filters by the names timm's ``pretrained_cfg`` uses.
INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                 "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
DEFAULT_INTERPOLATION = "bilinear"


@dataclass
class Preprocessing:
    """Everything needed to turn raw inputs into model inputs (saved beside every model)."""

    kind: str  # "image" or "tabular"
    input_size: tuple[int, ...]  # (C, H, W) for images, (F,) for tabular
    mean: list[float]  # per channel (images) or per feature (tabular)
    std: list[float]
    class_names: list[str]
    feature_names: list[str] | None = None  # tabular only: the raw columns, in order
    interpolation: str = DEFAULT_INTERPOLATION  # images: the resize filter
    # tables: each raw column as fitted on the training split (``table_encoding.Column``
    # dicts); None for rows that are model features as they are (all numeric, complete)
    columns: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "tabular"):
            raise ValueError(f"preprocessing kind must be 'image' or 'tabular', got {self.kind!r}")
        self.input_size = tuple(int(s) for s in self.input_size)
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        self.class_names = [str(c) for c in self.class_names]
        expected = 3 if self.kind == "image" else 1
        if len(self.input_size) != expected:
            raise ValueError(
                f"{self.kind} input_size must have {expected} dimension(s), got {self.input_size}"
            )
        width = self.input_size[0]
        if len(self.mean) != width or len(self.std) != width:
            raise ValueError(
                f"mean/std must have {width} entries (one per "
                f"{'channel' if self.kind == 'image' else 'feature'}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if self.kind == "image" and width not in IMAGE_CHANNEL_MODES:
            raise ValueError(f"images must have 1 or 3 channels, got {width}")
        resample_filter(self.interpolation)
        if self.columns is not None:
            if self.kind != "tabular":
                raise ValueError("only tabular preprocessing has table columns")
            columns = [Column.from_dict(c) for c in self.columns]
            if total_width(columns) != width:
                raise ValueError(f"the table columns make {total_width(columns)} features, "
                                 f"but input_size is {self.input_size}")
            self.columns = [c.to_dict() for c in columns]
            self.feature_names = [c.name for c in columns]

    @property
    def table_columns(self) -> list[Column]:
        """The fitted raw columns of a table (empty for rows taken as they are)."""
        return [Column.from_dict(c) for c in self.columns or []]

    @property
    def row_width(self) -> int:
        """Values per raw row (tabular only): the columns of a table, else the features."""
        return len(self.columns) if self.columns is not None else self.input_size[0]

    @property
    def feature_groups(self) -> list[int] | None:
        """Model features per raw column (a table's), for one FT-Transformer token each."""
        return [c.width for c in self.table_columns] if self.columns is not None else None

    @property
    def channels(self) -> int:
        """Image channels (images only)."""
        return self.input_size[0]

    @property
    def num_features(self) -> int:
        """Model features (tabular only): one-hot slots and missing indicators included."""
        return self.input_size[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists) for logging beside the model."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; ignores unknown keys so newer files still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by bit depth (``convert("L")`` would clip)."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint32) >> 8
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    arr = np.asarray(img, dtype=np.float64)
    if arr.size and arr.max() > 255:
        arr = arr / (65535.0 if arr.max() <= 65535 else arr.max()) * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def resample_filter(name: str) -> Image.Resampling:
    """Pillow's filter for an interpolation name; an unknown name lists the known ones."""
    try:
        return INTERPOLATION[name]
    except KeyError:
        raise ValueError(f"interpolation {name!r} is not one of {', '.join(INTERPOLATION)}"
                         ) from None


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """A PIL image upright (EXIF), 8-bit, transparency composited onto white (what an image
    viewer shows), in L (1 channel) or RGB (3)."""
    if channels not in IMAGE_CHANNEL_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # pasted through its own alpha onto white: the same pixels as Image.alpha_composite,
        # but Pillow releases the GIL while it pastes (alpha_composite and getchannel hold it,
        # for ~0.15 s at 4096^2, and a server's event loop waits meanwhile)
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba)
    mode = IMAGE_CHANNEL_MODES[channels]
    return img if img.mode == mode else img.convert(mode)


def image_to_array(img: Image.Image, channels: int, size: tuple[int, int],
                   interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """One PIL image to uint8 ``[C, H, W]``: ``to_channels``, then resize (bilinear, or the
    model's ``interpolation``)."""
    height, width = size
    img = to_channels(img, channels)
    if img.size != (width, height):
        img = img.resize((width, height), resample_filter(interpolation))
    arr = np.array(img, dtype=np.uint8)  # a writable copy, detached from PIL's buffer
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_unit(arr: np.ndarray) -> torch.Tensor:
    """uint8 array to float32 tensor in [0, 1] (the one place this division happens)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div_(255.0)


def image_to_tensor(img: Image.Image, channels: int, size: tuple[int, int],
                    interpolation: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """One PIL image to float32 ``[C, H, W]`` in [0, 1], not normalised."""
    return to_unit(image_to_array(img, channels, size, interpolation))


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` along dim 1 (channels of ``[N,C,H,W]`` or features of ``[N,F]``).

    Shared by training splits, lazy images and the server so all give identical floats.
    """
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - m.view(shape)) / s.view(shape)


def preprocess_images(images: Sequence[Image.Image], pre: Preprocessing) -> torch.Tensor:
    """PIL images to the model's input: float32 ``[N, C, H, W]``, normalised."""
    if pre.kind != "image":
        raise ValueError(f"preprocess_images needs image preprocessing, got {pre.kind!r}")
    channels, height, width = pre.input_size
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        return torch.empty((0, channels, height, width), dtype=torch.float32)
    x = torch.stack([image_to_tensor(im, channels, (height, width), pre.interpolation)
                     for im in images])
    return normalise(x, pre.mean, pre.std)


def preprocess_rows(rows: Any, pre: Preprocessing) -> torch.Tensor:
    """Raw rows to the model's input: float32 ``[N, F]``, encoded and standardised.

    ``rows`` is a DataFrame (columns found by name), a list of dicts, or rows of values in
    the training column order (lists, an ndarray, a tensor). A table's rows may hold text
    for categorical columns and missing values (None, NaN); other models take numbers only.
    """
    if pre.kind != "tabular":
        raise ValueError(f"preprocess_rows needs tabular preprocessing, got {pre.kind!r}")
    if pre.columns is not None:
        frame = rows_frame(rows, pre)
        return normalise(torch.from_numpy(encode(frame, pre.table_columns)), pre.mean, pre.std)
    n_features = pre.input_size[0]
    if hasattr(rows, "columns") and pre.feature_names:
        if all(name in rows.columns for name in pre.feature_names):
            rows = rows[list(pre.feature_names)]
        rows = rows.to_numpy()
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rows must be numeric: {err}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"rows must be 2-D [N, {n_features}], got shape {tuple(arr.shape)}")
    if arr.shape[1] != n_features:
        names = f" ({', '.join(pre.feature_names)})" if pre.feature_names else ""
        raise ValueError(f"expected {n_features} features per row{names}, got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise ValueError("rows contain NaN or infinite values")
    return normalise(torch.from_numpy(arr.astype(np.float32)), pre.mean, pre.std)


def rows_frame(rows: Any, pre: Preprocessing) -> pd.DataFrame:
    """A table's raw rows as a DataFrame with its training columns, in order."""
    names = list(pre.feature_names or [])
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    if isinstance(rows, dict):
        rows = pd.DataFrame(rows)
    if isinstance(rows, (list, tuple)) and rows and all(isinstance(r, dict) for r in rows):
        rows = pd.DataFrame(list(rows))
    if isinstance(rows, pd.DataFrame):
        if all(name in rows.columns for name in names):
            return rows[names]
        if rows.shape[1] != len(names):
            absent = [n for n in names if n not in rows.columns]
            raise ValueError(f"rows lack the column(s) {absent[:8]}; the model takes "
                             f"{', '.join(names)}")
        return rows.set_axis(names, axis=1)
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    rows = list(rows)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]  # one row
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"row {i} is not a list of values")
        if len(row) != len(names):
            raise ValueError(f"row {i} has {len(row)} values; the model takes {len(names)} "
                             f"columns ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    return pd.DataFrame(rows, columns=names)


__all__ = [
    "Preprocessing",
    "image_to_array",
    "image_to_tensor",
    "normalise",
    "preprocess_images",
    "preprocess_rows",
    "to_channels",
    "to_unit",
]
