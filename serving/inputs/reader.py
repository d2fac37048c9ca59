"""A request's images or rows to the model's input: the first two steps of the pipeline.

decode (images within the pixel budget, or rows) → the face stage (a face model only) →
the model's input, uint8 images ``[N, C, H, W]`` or standardised rows ``[N, F]``. The
service, the raw-body route and the offline commands all go through here.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from serving.errors import RequestError
from serving.inputs.faces import FaceKeep, FaceRequest, PhotoFaces, read_faces
from serving.inputs.images import Keep, PixelBudget, decode_images, images_to_array
from serving.inputs.rows import rows_to_array
from serving.inputs.uploads import NotAFile, Upload
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.faces import FaceStage

Uploads = Sequence[Upload | NotAFile] | None
Rows = Sequence[Sequence[Any]] | None


class InputReader:
    """One worker's reader: its model's preprocessing and face stage, and the pixel budget
    all its requests share."""

    def __init__(self, pre: Preprocessing, faces: FaceStage | None,
                 settings: ServeSettings) -> None:
        self.pre, self.faces, self.settings = pre, faces, settings
        self.budget = PixelBudget(settings.max_request_pixels)

    async def read(self, images: Uploads, rows: Rows, keep: Keep | None = None
                   ) -> tuple[np.ndarray, list[Any]]:
        """One model input per image (or row); a face model's each photo's largest face.
        ``keep``: what to keep of each decoded photo (``keep_picture``: the photo)."""
        if self.faces is not None:
            request = FaceRequest.of(self.settings, largest=True)
            found = await self.read_faces(images, rows, request, None if keep is None else
                                          lambda decoded, rgb, faces: keep(decoded))
            return found.x, found.pictures
        if _rows_wanted(images, rows, self.pre):
            return rows_to_array(rows or [], self.pre, self.settings), []
        return await decode_images(images or [], self.pre, self.settings, self.budget, keep)

    async def read_faces(self, images: Uploads, rows: Rows, request: FaceRequest,
                         keep: FaceKeep | None = None) -> PhotoFaces:
        """A face model's input: every face of every photo, as ``request`` asks (rows are
        refused as for any image model)."""
        assert self.faces is not None
        if rows is not None or not images:  # refused before anything is decoded
            model_input(images, rows, self.pre, self.settings)
        return await read_faces(images or [], self.pre, self.faces, request, self.settings,
                                self.budget, keep)


def model_input(images: Uploads, rows: Rows, pre: Preprocessing,
                settings: ServeSettings) -> tuple[np.ndarray, list[Image.Image]]:
    """Exactly one of ``images`` and ``rows`` to what ``ServedModel`` takes (uint8 images,
    standardised float32 rows), in this thread (offline use)."""
    if _rows_wanted(images, rows, pre):
        return rows_to_array(rows or [], pre, settings), []
    return images_to_array(images or [], pre, settings)


def _rows_wanted(images: Sequence[Any] | None, rows: Sequence[Any] | None,
                 pre: Preprocessing) -> bool:
    if images and rows:
        raise RequestError("send images or rows, not both")
    if rows is not None and not images:
        return True
    if not images and pre.kind == "tabular":
        raise RequestError("no rows in the request: send JSON {\"rows\": [[...], ...]}")
    return False
