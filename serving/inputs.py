"""Request inputs to model inputs, with a 4xx that names the problem for every bad one.

Uploaded files reach the endpoints as raw bytes (``Upload``), not as BentoML's PIL images or
temporary files: decoding here lets the size limits be checked before any pixel is decoded,
turns "not an image" into a 400 instead of a 500, and skips a temporary file per image.
Images then go through the same ``zoo.data`` preprocessing as in training.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BeforeValidator, PlainValidator, WithJsonSchema
from starlette.datastructures import UploadFile

from serving.settings import ServeSettings
from zoo.data import Preprocessing, preprocess_rows
from zoo.data.preprocessing import image_to_array


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """One uploaded file, undecoded."""

    filename: str
    data: bytes


def _to_upload(obj: Any) -> Upload:
    if isinstance(obj, Upload):
        return obj
    if isinstance(obj, UploadFile):
        obj.file.seek(0)
        return Upload(obj.filename or "", obj.file.read())
    if isinstance(obj, (bytes, bytearray)):
        return Upload("", bytes(obj))
    if isinstance(obj, PurePath):
        return Upload(Path(obj).name, Path(obj).read_bytes())
    if hasattr(obj, "read"):
        return Upload(Path(getattr(obj, "name", "") or "").name, obj.read())
    raise ValueError("expected an uploaded file")


# Declared as a Path so BentoML takes the field from multipart file parts; validated to raw bytes.
# Its schema says "file", as BentoML's own file types do: BentoML's clients then send a Path
# or a PIL image given for it as a multipart file.
ImageFile = Annotated[Path, PlainValidator(_to_upload),
                      WithJsonSchema({"type": "file", "format": "binary"})]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# BentoML reads every multipart text field as JSON when it can ("7" arrives as the number 7,
# "007" too): such values are turned back into text here. A name that only survives quoted
# ("007") is sent quoted: -F 'identity="007"'.
Text = Annotated[str, BeforeValidator(_as_text)]


def _name(upload: Upload, index: int) -> str:
    return f"image {index}" + (f" ({upload.filename!r})" if upload.filename else "")


def open_image(upload: Upload, index: int, settings: ServeSettings) -> Image.Image:
    """Decode one upload, checking its byte size and pixel count before decoding pixels."""
    what = _name(upload, index)
    if len(upload.data) > settings.max_image_bytes:
        raise RequestError(f"{what} is {len(upload.data):,} bytes, over the limit of "
                           f"{settings.max_image_bytes:,} (ZOO_MAX_IMAGE_BYTES)", 413)
    if not upload.data:
        raise RequestError(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(upload.data))
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise RequestError(f"{what} is {width}x{height} pixels, over the limit of "
                                   f"{settings.max_image_pixels:,} pixels (ZOO_MAX_IMAGE_PIXELS)",
                                   413)
            image.load()
    except Image.DecompressionBombError:
        raise RequestError(f"{what} has too many pixels to decode safely", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = "not an image format Pillow can read" if isinstance(
            exc, UnidentifiedImageError) else f"a broken image ({exc})"
        raise RequestError(f"{what} is {detail}") from None
    return image


def check_count(count: int, what: str, settings: ServeSettings) -> None:
    if count == 0:
        raise RequestError(f"no {what} in the request: send at least one")
    if count > settings.max_images:
        raise RequestError(f"{count} {what} in one request, over the limit of "
                           f"{settings.max_images} (ZOO_MAX_IMAGES): split the request", 413)


def images_to_array(uploads: Sequence[Upload], pre: Preprocessing,
                    settings: ServeSettings) -> tuple[np.ndarray, list[Image.Image]]:
    """The images resized to the model's input, uint8 ``[N, C, H, W]``, and the decoded images.

    Scaling and normalising wait for the model's batch (``ServedModel.run``): one tensor
    operation per batch instead of two per request, with the same functions as training.
    """
    if pre.kind != "image":
        raise RequestError(f"this model takes rows of {pre.num_features} features, not images: "
                           "send JSON {\"rows\": [[...], ...]}")
    check_count(len(uploads), "images", settings)
    images = [open_image(upload, i, settings) for i, upload in enumerate(uploads)]
    channels, height, width = pre.input_size
    return np.stack([image_to_array(im, channels, (height, width), pre.interpolation)
                     for im in images]), images


def rows_to_array(rows: Sequence[Sequence[float]], pre: Preprocessing,
                  settings: ServeSettings) -> np.ndarray:
    """Model input ``[N, F]`` float32, standardised as in training."""
    if pre.kind != "tabular":
        channels, height, width = pre.input_size
        raise RequestError(f"this model takes images ({width}x{height}, {channels} channel(s)), "
                           "not rows: upload them as multipart files named 'images'")
    check_count(len(rows), "rows", settings)
    width = pre.num_features
    for i, row in enumerate(rows):
        if len(row) != width:
            names = pre.feature_names or []
            shown = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
            raise RequestError(f"row {i} has {len(row)} values; the model takes {width} "
                               f"features{shown}")
    try:
        return preprocess_rows(np.asarray(rows, dtype=np.float64), pre).numpy()
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def model_input(images: Sequence[Upload] | None, rows: Sequence[Sequence[float]] | None,
                pre: Preprocessing, settings: ServeSettings
                ) -> tuple[np.ndarray, list[Image.Image]]:
    """Exactly one of ``images`` and ``rows`` to what ``ServedModel`` takes (uint8 images,
    standardised float32 rows), and the decoded images."""
    if images and rows:
        raise RequestError("send images or rows, not both")
    if rows is not None and not images:
        return rows_to_array(rows, pre, settings), []
    if not images and pre.kind == "tabular":
        raise RequestError("no rows in the request: send JSON {\"rows\": [[...], ...]}")
    return images_to_array(images or [], pre, settings)
