"""Request inputs to model inputs, with a 4xx that names the problem for every bad one.

Uploaded files reach the endpoints as raw bytes (``Upload``), not as BentoML's PIL images or
temporary files: decoding here lets the limits be checked before any pixel is decoded,
turns "not an image" into a 400 instead of a 500, and skips a temporary file per image.

Every request is treated as hostile:
- a text value where a file is expected is refused (``NotAFile``), never fetched as a URL;
- only the formats in ``ZOO_IMAGE_FORMATS`` are opened (no EPS, which runs Ghostscript);
- every image's size is read from its header first, and the request's total must fit
  ``ZOO_MAX_REQUEST_PIXELS``;
- images are decoded one at a time, in a thread, each holding its pixel count of a
  per-worker ``PixelBudget`` meanwhile, so decoded pixels in memory never exceed that budget
  and the event loop keeps answering;
- whatever Pillow raises for a broken file, or a mode it cannot convert, is a 400.

Images then go through the same ``zoo.data`` preprocessing as in training.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Sequence

import anyio
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BeforeValidator, PlainValidator, WithJsonSchema
from starlette.datastructures import UploadFile

from serving.settings import ServeSettings
from zoo.data import Preprocessing, preprocess_rows
from zoo.data.preprocessing import image_to_array

MAX_NAME_LENGTH = 200
# Unicode categories refused in identity names: controls (NUL, ESC), format characters
# (bidi overrides, zero-width joiners), surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


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


@dataclass(frozen=True)
class NotAFile:
    """A text value (or anything else) sent where a file was expected: refused, never fetched."""

    what: str


def _to_upload(obj: Any) -> Upload | NotAFile:
    if isinstance(obj, (Upload, NotAFile)):
        return obj
    if isinstance(obj, UploadFile):
        obj.file.seek(0)
        return Upload(Path(obj.filename or "").name, obj.file.read())
    if isinstance(obj, (bytes, bytearray)):
        return Upload("", bytes(obj))
    return NotAFile("a text value" if isinstance(obj, str) else f"a JSON {type(obj).__name__}")


# Declared as a Path so BentoML takes the field from multipart file parts; validated to raw bytes.
# Its schema says "file", as BentoML's own file types do: BentoML's clients then send a Path
# or a PIL image given for it as a multipart file. BentoML would fetch a text value of such a
# field as a URL; serving.multipart hands it over as text instead, and it is refused here.
ImageFile = Annotated[Path, PlainValidator(_to_upload),
                      WithJsonSchema({"type": "file", "format": "binary"})]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# Multipart text fields arrive as sent (serving.multipart does not parse them as JSON); a JSON
# body may still send a number, which becomes its text.
Text = Annotated[str, BeforeValidator(_as_text)]


def identity_name(text: str) -> str:
    """An identity name as stored: stripped, NFC-normalised, no control or format
    characters, at most ``MAX_NAME_LENGTH`` characters."""
    name = unicodedata.normalize("NFC", text.strip())
    if not name:
        raise RequestError("identity is empty: name the person (or emitter) enrolled")
    if len(name) > MAX_NAME_LENGTH:
        raise RequestError(f"identity is {len(name)} characters long, over the limit of "
                           f"{MAX_NAME_LENGTH}")
    bad = sorted({f"U+{ord(c):04X}" for c in name
                  if unicodedata.category(c) in _REFUSED_CATEGORIES})
    if bad:
        raise RequestError(f"identity contains control or format characters ({', '.join(bad[:5])}"
                           f"{', ...' if len(bad) > 5 else ''}): send plain text")
    return name


def upload_name(upload: Upload, index: int) -> str:
    return f"image {index}" + (f" ({upload.filename!r})" if upload.filename else "")


def _formats(settings: ServeSettings) -> tuple[str, ...]:
    return tuple(f.strip().upper() for f in settings.image_formats.split(",") if f.strip())


def check_upload(upload: Upload | NotAFile, index: int, settings: ServeSettings) -> Upload:
    """An upload that is a file of a size within the limit."""
    if isinstance(upload, NotAFile):
        raise RequestError(f"image {index} is {upload.what}, not a file: upload images as "
                           "multipart files (curl -F images=@face.png); URLs are never fetched")
    what = upload_name(upload, index)
    if len(upload.data) > settings.max_image_bytes:
        raise RequestError(f"{what} is {len(upload.data):,} bytes, over the limit of "
                           f"{settings.max_image_bytes:,} (ZOO_MAX_IMAGE_BYTES)", 413)
    if not upload.data:
        raise RequestError(f"{what} is empty")
    return upload


def _open(upload: Upload, index: int, settings: ServeSettings) -> Image.Image:
    """The image's header only (no pixels decoded), of an allowed format and size."""
    what = upload_name(upload, index)
    formats = _formats(settings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(upload.data), formats=formats)
            width, height = image.size
    except Image.DecompressionBombError:
        raise RequestError(f"{what} has too many pixels to decode safely", 413) from None
    except UnidentifiedImageError:
        raise RequestError(f"{what} is not an image in an accepted format "
                           f"({', '.join(formats)}; ZOO_IMAGE_FORMATS)") from None
    except Exception as exc:  # noqa: BLE001 - whatever a hostile header makes Pillow raise
        raise RequestError(f"{what} is a broken image ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None
    if width < 1 or height < 1:
        raise RequestError(f"{what} is {width}x{height} pixels: empty")
    if width * height > settings.max_image_pixels:
        raise RequestError(f"{what} is {width}x{height} pixels, over the limit of "
                           f"{settings.max_image_pixels:,} pixels (ZOO_MAX_IMAGE_PIXELS)", 413)
    check_decoding_work(image, upload.data, what)
    return image


#: Scans (SOS markers) in one JPEG: baseline files have 1 (3 non-interleaved), libjpeg's and
#: mozjpeg's progressive scripts 6-12. Each scan is a pass over the whole image: a 148 KB
#: progressive 4096x4096 file with 6,500 scans took 4.4 s to decode.
MAX_JPEG_SCANS = 64
#: Pieces Pillow decodes one by one (a TIFF's strips or tiles): a million one-row strips
#: would be a million decoder calls.
MAX_TILES = 4096
#: IDAT chunks of one PNG: encoders write 8-64 KiB each; thousands of tiny ones cost a
#: Python-level step each.
MAX_PNG_CHUNKS_PER_MIB = 1024


def check_decoding_work(image: Image.Image, data: bytes, what: str) -> None:
    """Refuse, before any pixel is decoded, a file whose decoding costs far more CPU than its
    pixel count suggests: a JPEG of too many scans, too many strips or tiles, too many PNG
    chunks, or several frames (only one image is embedded)."""
    if image.format == "JPEG" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise RequestError(f"{what} is a JPEG of {scans:,} scans, over the {MAX_JPEG_SCANS} a "
                           "real encoder writes: refused before decoding (a decoding bomb)")
    if len(image.tile) > MAX_TILES:
        raise RequestError(f"{what} is stored in {len(image.tile):,} pieces (strips or tiles), "
                           f"over {MAX_TILES:,}: refused before decoding")
    if image.format == "PNG":
        allowed = 64 + MAX_PNG_CHUNKS_PER_MIB * len(data) // 2**20
        if (chunks := data.count(b"IDAT")) > allowed:
            raise RequestError(f"{what} is a PNG of {chunks:,} data chunks, over the {allowed:,} "
                               "its size allows: refused before decoding")
    if getattr(image, "is_animated", False):
        raise RequestError(f"{what} has several frames (an animation or pages): send one "
                           "image")


def load_pixels(image: Image.Image, upload: Upload, index: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: the client's file
        raise RequestError(f"{upload_name(upload, index)} is a broken image ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None
    return image


def open_image(upload: Upload | NotAFile, index: int, settings: ServeSettings) -> Image.Image:
    """Decode one upload, checking its byte size and pixel count before decoding pixels."""
    upload = check_upload(upload, index, settings)
    return load_pixels(_open(upload, index, settings), upload, index)


def image_array(image: Image.Image, pre: Preprocessing, what: str) -> np.ndarray:
    """A decoded image to the model's uint8 ``[C, H, W]``; a mode that cannot be converted
    (CIELAB, odd bit depths) is a 400."""
    channels, height, width = pre.input_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return image_to_array(image, channels, (height, width), pre.interpolation)
    except Exception as exc:  # noqa: BLE001 - any mode Pillow hands over and cannot convert
        raise RequestError(f"{what} is in mode {image.mode}, which cannot be converted to "
                           f"{'grey' if channels == 1 else 'RGB'} ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None


class PixelBudget:
    """Pixels a worker may hold decoded at once, shared by all its requests.

    Each image takes its pixel count (at most the whole budget) while it is decoded and
    resized, and gives it back when only the model-sized array is left; images that do not
    fit wait. Decoded memory per worker is then bounded by the budget, however many requests
    arrive together.
    """

    def __init__(self, pixels: int) -> None:
        self.total = self.free = pixels
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def take(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(pixels, self.total)
        if self._changed is None:
            self._changed = asyncio.Condition()
        changed = self._changed
        async with changed:
            await changed.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            async with changed:
                self.free += pixels
                changed.notify_all()


def checked_headers(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
             settings: ServeSettings) -> tuple[list[Upload], list[Image.Image]]:
    """The uploads checked and their headers opened (no pixels yet), within the limits."""
    if pre.kind != "image":
        raise RequestError(f"this model takes rows of {pre.row_width} values, not images: "
                           "send JSON {\"rows\": [[...], ...]}")
    check_count(len(uploads), "images", settings)
    checked = [check_upload(u, i, settings) for i, u in enumerate(uploads)]
    headers = [_open(u, i, settings) for i, u in enumerate(checked)]
    total = sum(im.size[0] * im.size[1] for im in headers)
    if total > settings.max_request_pixels:
        raise RequestError(f"the request's {len(headers)} images hold {total:,} pixels, over the "
                           f"limit of {settings.max_request_pixels:,} per request "
                           "(ZOO_MAX_REQUEST_PIXELS): send fewer or smaller images", 413)
    return checked, headers


def _decode(image: Image.Image, upload: Upload, index: int, pre: Preprocessing,
            keep: bool) -> tuple[np.ndarray, Image.Image | None]:
    decoded = load_pixels(image, upload, index)
    array = image_array(decoded, pre, upload_name(upload, index))
    if not keep:
        decoded.close()
    return array, decoded if keep else None


def check_count(count: int, what: str, settings: ServeSettings) -> None:
    if count == 0:
        raise RequestError(f"no {what} in the request: send at least one")
    if count > settings.max_images:
        raise RequestError(f"{count} {what} in one request, over the limit of "
                           f"{settings.max_images} (ZOO_MAX_IMAGES): split the request", 413)


def images_to_array(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                    settings: ServeSettings, keep: bool = False
                    ) -> tuple[np.ndarray, list[Image.Image]]:
    """The images resized to the model's input, uint8 ``[N, C, H, W]``, and (``keep``) the
    decoded images; one at a time, in this thread (offline use: ``serving.predict``).

    Scaling and normalising wait for the model's batch (``ServedModel.run``): one tensor
    operation per batch instead of two per request, with the same functions as training.
    """
    return _decode_all(*checked_headers(uploads, pre, settings), pre, keep)


def _decode_all(checked: list[Upload], headers: list[Image.Image], pre: Preprocessing,
                keep: bool) -> tuple[np.ndarray, list[Image.Image]]:
    done = [_decode(im, u, i, pre, keep) for i, (u, im) in enumerate(zip(checked, headers))]
    return np.stack([a for a, _ in done]), [im for _, im in done if im is not None]


# A request of one image at most this large is decoded on the event loop, at once: 0.2 ms for
# an 8x8 PNG, 0.5 ms for a 128x128 JPEG, less than the two hops to a thread and back that
# other requests take (32 px digits, raw-body route: 2,044 -> 1,329 us of server CPU per
# request, with the JSON encoding of raw_images.py; bench/serve_throughput.py). The pixel
# bound keeps the loop's pause short whatever the bytes hold.
SMALL_IMAGE_BYTES = 32 * 1024
SMALL_IMAGE_PIXELS = 128 * 128


async def decode_images(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                        settings: ServeSettings, budget: PixelBudget, keep: bool = False
                        ) -> tuple[np.ndarray, list[Image.Image]]:
    """:func:`images_to_array` off the event loop, one image at a time within ``budget``;
    one small image (``SMALL_IMAGE_BYTES``, ``SMALL_IMAGE_PIXELS``) on it, at once."""
    if (len(uploads) == 1 and isinstance(uploads[0], Upload)
            and len(uploads[0].data) <= SMALL_IMAGE_BYTES):
        checked, headers = checked_headers(uploads, pre, settings)
        if headers[0].size[0] * headers[0].size[1] <= SMALL_IMAGE_PIXELS:
            return _decode_all(checked, headers, pre, keep)
    else:
        checked, headers = await anyio.to_thread.run_sync(checked_headers, uploads, pre, settings)
    arrays, kept = [], []
    for i, (upload, header) in enumerate(zip(checked, headers)):
        async with budget.take(header.size[0] * header.size[1]):
            array, image = await anyio.to_thread.run_sync(_decode, header, upload, i, pre, keep)
        arrays.append(array)
        if image is not None:
            kept.append(image)
    return np.stack(arrays), kept


def rows_to_array(rows: Sequence[Sequence[Any]], pre: Preprocessing,
                  settings: ServeSettings) -> np.ndarray:
    """Model input ``[N, F]`` float32, encoded and standardised as in training; every value
    finite after the cast to float32 (``1e300`` passes as a float64 but is infinite as a
    float32). A table's rows hold its raw columns: text for a categorical column (one the
    model never saw is "unknown"), None for a missing value."""
    if pre.kind != "tabular":
        channels, height, width = pre.input_size
        raise RequestError(f"this model takes images ({width}x{height}, {channels} channel(s)), "
                           "not rows: upload them as multipart files named 'images'")
    check_count(len(rows), "rows", settings)
    rows = rows_as_lists(rows, pre)
    width = pre.row_width
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise RequestError(f"row {i} is not a list of values")
        if len(row) != width:
            names = pre.feature_names or []
            shown = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
            raise RequestError(f"row {i} has {len(row)} values; the model takes {width} "
                               f"{'columns' if pre.columns is not None else 'features'}{shown}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # found below, row by row
            table = pre.columns is not None
            x = preprocess_rows(list(rows) if table else np.asarray(rows, dtype=np.float64),
                                pre).numpy()
    except OverflowError:  # an integer beyond any float, for a model without table columns
        raise RequestError("a row holds a number too large for the model (about 3.4e38 "
                           "after standardising)") from None
    except (ValueError, TypeError) as exc:
        raise RequestError(str(exc)) from None
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RequestError(f"row {i} has a value too large for float32 (about 3.4e38 after "
                           "standardising): the model cannot take it")
    return x


def rows_as_lists(rows: Sequence[Any], pre: Preprocessing) -> list[Any]:
    """Rows sent as records (``{"age": 30, "city": "Lima"}``) as lists in the model's column
    order: a column left out is a missing value (None), a key the model does not know is a
    400 that names it. Rows sent as lists pass unchanged."""
    if not any(isinstance(row, dict) for row in rows):
        return list(rows)
    names = list(pre.feature_names or [])
    if not names:
        raise RequestError("this model's features have no names: send each row as a list of "
                           f"{pre.row_width} values")
    known = set(names)
    out: list[Any] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(row)
            continue
        unknown = [key for key in row if key not in known]
        if unknown:
            shown = ", ".join(repr(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5
                                                                else "")
            raise RequestError(f"row {i} has unknown column(s) {shown}; the model's columns "
                               f"are: {', '.join(names[:20])}"
                               + (", ..." if len(names) > 20 else ""))
        out.append([row.get(name) for name in names])
    return out


def model_input(images: Sequence[Upload | NotAFile] | None,
                rows: Sequence[Sequence[Any]] | None, pre: Preprocessing,
                settings: ServeSettings) -> tuple[np.ndarray, list[Image.Image]]:
    """Exactly one of ``images`` and ``rows`` to what ``ServedModel`` takes (uint8 images,
    standardised float32 rows), in this thread."""
    if _rows_wanted(images, rows, pre):
        return rows_to_array(rows or [], pre, settings), []
    return images_to_array(images or [], pre, settings)


async def read_inputs(images: Sequence[Upload | NotAFile] | None,
                      rows: Sequence[Sequence[Any]] | None, pre: Preprocessing,
                      settings: ServeSettings, budget: PixelBudget, keep: bool = False
                      ) -> tuple[np.ndarray, list[Image.Image]]:
    """:func:`model_input` for the server: images decoded off the event loop."""
    if _rows_wanted(images, rows, pre):
        return rows_to_array(rows or [], pre, settings), []
    return await decode_images(images or [], pre, settings, budget, keep)


def _rows_wanted(images: Sequence[Any] | None, rows: Sequence[Any] | None,
                 pre: Preprocessing) -> bool:
    if images and rows:
        raise RequestError("send images or rows, not both")
    if rows is not None and not images:
        return True
    if not images and pre.kind == "tabular":
        raise RequestError("no rows in the request: send JSON {\"rows\": [[...], ...]}")
    return False


def check_finite(outputs: dict[str, np.ndarray]) -> None:
    """Every model output finite: a NaN embedding would be stored by ``/enroll`` and match
    nothing (or everything) afterwards."""
    for name, values in outputs.items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
            raise RequestError(f"the model's {name} of input {int(rows[0])} is not finite: the "
                               "input is outside what the model can take")
