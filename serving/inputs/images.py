"""Uploaded images to model inputs, within limits stated up front, with a 4xx that names
the problem for every bad file.

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
import warnings
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import RequestError
from serving.inputs.uploads import NotAFile, Upload, check_count, upload_name
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.data.preprocessing import image_to_array


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


#: what a request keeps of each decoded image, computed while the image holds its share of
#: the pixel budget: the picture itself (``keep_picture``: GradCAM draws on it), or what an
#: enrollment keeps for later versions (``serving/gallery/kept.py``: far fewer pixels)
Keep = Callable[[Image.Image], Any]


def keep_picture(decoded: Image.Image) -> Image.Image:
    return decoded


def _decode(image: Image.Image, upload: Upload, index: int, pre: Preprocessing,
            keep: Keep | None) -> tuple[np.ndarray, Any]:
    decoded = load_pixels(image, upload, index)
    array = image_array(decoded, pre, upload_name(upload, index))
    kept = keep(decoded) if keep is not None else None
    if kept is not decoded:
        decoded.close()
    return array, kept


def images_to_array(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                    settings: ServeSettings, keep: Keep | None = None
                    ) -> tuple[np.ndarray, list[Any]]:
    """The images resized to the model's input, uint8 ``[N, C, H, W]``, and what ``keep``
    makes of each decoded image; one at a time, in this thread (offline use).

    Scaling and normalising wait for the model's batch (``ServedModel.run``): one tensor
    operation per batch instead of two per request, with the same functions as training.
    """
    return _decode_all(*checked_headers(uploads, pre, settings), pre, keep)


def _decode_all(checked: list[Upload], headers: list[Image.Image], pre: Preprocessing,
                keep: Keep | None) -> tuple[np.ndarray, list[Any]]:
    done = [_decode(im, u, i, pre, keep) for i, (u, im) in enumerate(zip(checked, headers))]
    return np.stack([a for a, _ in done]), [k for _, k in done if k is not None]


# A request of one image at most this large is decoded on the event loop, at once: 0.2 ms for
# an 8x8 PNG, 0.5 ms for a 128x128 JPEG, less than the two hops to a thread and back that
# other requests take (32 px digits, raw-body route: 2,044 -> 1,329 us of server CPU per
# request, with the JSON encoding of raw_images.py; bench/serve_throughput.py). The pixel
# bound keeps the loop's pause short whatever the bytes hold.
SMALL_IMAGE_BYTES = 32 * 1024
SMALL_IMAGE_PIXELS = 128 * 128


async def decode_images(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                        settings: ServeSettings, budget: PixelBudget, keep: Keep | None = None
                        ) -> tuple[np.ndarray, list[Any]]:
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
            array, made = await anyio.to_thread.run_sync(_decode, header, upload, i, pre, keep)
        arrays.append(array)
        if made is not None:
            kept.append(made)
    return np.stack(arrays), kept


