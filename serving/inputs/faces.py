"""Faces in uploaded photos, for a model with a face stage (``ModelRecord.faces``).

Each photo is decoded within the same limits as any image, then the stage finds its faces
(the detector on a copy at most ``max_side`` px long, so a 50 MP photo costs what a 1 MP one
does), takes their landmarks and aligns each to the model's chip; the chips go through the
same ``image_array`` as any image and on to the model in one batch. A photo without a face
is a 422 that names it.

A request's work in the stage is bounded up front: the pixels the detector scans over all
its photos (``ZOO_MAX_DETECTOR_PIXELS``, read from the headers before any pixel is decoded)
and the faces given landmarks and chips (``ZOO_MAX_REQUEST_FACES``; each photo keeps at
least its largest), cut before any landmark is taken.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import anyio
import numpy as np
from PIL import Image

from serving.errors import RequestError
from serving.inputs.images import PixelBudget, checked_headers, image_array, load_pixels
from serving.inputs.uploads import NotAFile, Upload, upload_name
from serving.settings import ServeSettings
from zoo.data.preprocessing import Preprocessing, to_channels
from zoo.faces import FaceStage

NO_FACE = 422


@dataclass(frozen=True)
class FaceRequest:
    """What a request asks of the stage: at most ``max_faces`` per photo (capped by the
    server's ``ZOO_MAX_FACES``), none narrower than ``min_face_px``; ``one``: a photo must
    hold exactly one face (``/enroll``), unless ``largest``."""

    max_faces: int
    min_face_px: int = 0
    one: bool = False
    largest: bool = False

    @classmethod
    def of(cls, settings: ServeSettings, max_faces: int | None = None,
           min_face_px: int | None = None, one: bool = False,
           largest: bool = False) -> FaceRequest:
        cap = settings.max_faces
        wanted = cap if max_faces is None else max_faces
        if wanted < 1:
            raise RequestError(f"max_faces must be >= 1, got {wanted}")
        if min_face_px is not None and min_face_px < 0:
            raise RequestError(f"min_face_px must be >= 0, got {min_face_px}")
        return cls(min(wanted, cap), int(min_face_px or 0), one, largest)


#: what a request keeps of each photo, computed while it holds its share of the pixel
#: budget, from the decoded photo, its RGB pixels and the faces kept: the photo itself
#: (``keep_photo``: GradCAM draws on it), or an enrollment's kept chips
#: (``serving/gallery/kept.py``)
FaceKeep = Callable[[Image.Image, np.ndarray, list], Any]


def keep_photo(decoded: Image.Image, rgb: np.ndarray, faces: list) -> Image.Image:
    return decoded


@dataclass(frozen=True)
class PhotoFaces:
    """Every face found in the request's photos: one model input row per face."""

    x: np.ndarray  # uint8 [faces, C, H, W]: the chips as the model takes them
    faces: list[list]  # per photo, its faces (zoo.faces.detect.Face), largest first
    pictures: list[Any]  # per photo, what ``keep`` made of it (when kept)

    def rows(self) -> list[slice]:
        """The rows of ``x`` (and of the model's outputs) of each photo."""
        out, start = [], 0
        for found in self.faces:
            out.append(slice(start, start + len(found)))
            start += len(found)
        return out

    def largest(self) -> np.ndarray:
        """The row of each photo's largest face."""
        return np.array([r.start for r in self.rows()], dtype=np.int64)


def photo_faces(image: Image.Image, upload: Upload, index: int, pre: Preprocessing,
                stage: FaceStage, request: FaceRequest, keep: FaceKeep | None, budget: int
                ) -> tuple[list, np.ndarray, Any]:
    """One photo's faces and their chips as model input (``[n, C, H, W]``), at most
    ``budget`` of them (and at least its largest)."""
    from zoo.faces.detect import align, detect_boxes, with_landmarks

    what = upload_name(upload, index)
    decoded = load_pixels(image, upload, index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = np.asarray(to_channels(decoded, 3))
    except Exception as exc:  # noqa: BLE001 - any mode Pillow hands over and cannot convert
        raise RequestError(f"{what} is in mode {decoded.mode}, which cannot be converted to "
                           f"RGB ({type(exc).__name__}: {str(exc)[:200]})") from None
    boxes = detect_boxes(rgb, stage, request.min_face_px)
    if not boxes:
        raise RequestError(f"no face found in {what}"
                           + (f" at least {request.min_face_px} px wide"
                              if request.min_face_px else ""), NO_FACE)
    if request.one and len(boxes) > 1 and not request.largest:
        raise RequestError(f"{what} holds {len(boxes)} faces; enroll photos of one face each, "
                           "or send face=largest to take the largest", NO_FACE)
    keep_faces = 1 if request.largest else max(1, min(request.max_faces, budget))
    faces = with_landmarks(rgb, boxes[:keep_faces])
    chips = [align(rgb, face, stage).image() for face in faces]
    arrays = np.stack([image_array(chip, pre, what) for chip in chips])
    kept = keep(decoded, rgb, faces) if keep is not None else None
    if kept is not decoded:
        decoded.close()
    return faces, arrays, kept


def chip_picture(chip: np.ndarray) -> Image.Image:
    """A chip as the model takes it (uint8 ``[C, H, W]``) as a picture (what GradCAM draws
    on)."""
    return Image.fromarray(chip[0] if chip.shape[0] == 1 else chip.transpose(1, 2, 0))


def _collect(done: list[tuple[list, np.ndarray, Any]]) -> PhotoFaces:
    return PhotoFaces(np.concatenate([a for _, a, _ in done]), [f for f, _, _ in done],
                      [im for _, _, im in done if im is not None])


def checked_photos(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                   stage: FaceStage, settings: ServeSettings
                   ) -> tuple[list[Upload], list[Image.Image]]:
    """``checked_headers``, and the detector's pixels over all photos within
    ``ZOO_MAX_DETECTOR_PIXELS``, before any pixel is decoded."""
    from zoo.faces.detect import detector_pixels

    checked, headers = checked_headers(uploads, pre, settings)
    total = sum(detector_pixels(*im.size, stage) for im in headers)
    if total > settings.max_detector_pixels:
        raise RequestError(f"finding faces in the request's {len(headers)} photos means "
                           f"scanning {total:,} pixels, over the limit of "
                           f"{settings.max_detector_pixels:,} per request "
                           "(ZOO_MAX_DETECTOR_PIXELS): send fewer photos per request", 413)
    return checked, headers


def read_faces_now(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                   stage: FaceStage, request: FaceRequest, settings: ServeSettings,
                   keep: FaceKeep | None = None) -> PhotoFaces:
    """Every photo's faces, one photo at a time in this thread (``serving.predict``)."""
    checked, headers = checked_photos(uploads, pre, stage, settings)
    done: list[tuple[list, np.ndarray, Any]] = []
    for i, (upload, header) in enumerate(zip(checked, headers)):
        done.append(photo_faces(header, upload, i, pre, stage, request, keep,
                                _faces_left(done, settings)))
    return _collect(done)


async def read_faces(uploads: Sequence[Upload | NotAFile], pre: Preprocessing,
                     stage: FaceStage, request: FaceRequest, settings: ServeSettings,
                     budget: PixelBudget, keep: FaceKeep | None = None) -> PhotoFaces:
    """:func:`read_faces_now` off the event loop, each photo within the pixel ``budget``."""
    checked, headers = await anyio.to_thread.run_sync(checked_photos, uploads, pre, stage,
                                                      settings)
    done: list[tuple[list, np.ndarray, Any]] = []
    for i, (upload, header) in enumerate(zip(checked, headers)):
        async with budget.take(header.size[0] * header.size[1]):
            done.append(await anyio.to_thread.run_sync(
                photo_faces, header, upload, i, pre, stage, request, keep,
                _faces_left(done, settings)))
    return _collect(done)


def _faces_left(done: list[tuple[list, np.ndarray, Any]],
                settings: ServeSettings) -> int:
    """What is left of the request's ``ZOO_MAX_REQUEST_FACES`` after the photos ``done``."""
    return settings.max_request_faces - sum(len(faces) for faces, _, _ in done)
