"""The JSON answers of the endpoints (typed, so the OpenAPI page at ``/`` documents them)."""
from __future__ import annotations

from urllib.parse import quote

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer


class Served(BaseModel):
    model: str
    version: str | None


class FaceBox(BaseModel):
    """Where a face is in the photo sent: ``box`` ``[x0, y0, x1, y1]`` (x1, y1 exclusive),
    five ``landmarks`` ``[x, y]`` (eye corners, bottom of the nose), the detector's score."""

    box: list[int]
    landmarks: list[list[int]]
    score: float | None


class FaceEmbedding(FaceBox):
    embedding: list[float]


class FacesWhenFound(Served):
    """An answer whose ``faces`` is left out for a model without a face stage: such a model
    answers exactly as before the stage existed (and BentoML's client, which decodes by the
    schema, meets no null where it expects a list)."""

    @model_serializer(mode="wrap")
    def _without_absent_faces(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("faces", ()) is None:
            del data["faces"]
        return data


class EmbedResponse(FacesWhenFound):
    embeddings: list[list[float]]  # a face model: each photo's largest face
    faces: list[list[FaceEmbedding]] | None = None  # a face model: every face of each photo


class ClassScore(BaseModel):
    label: str
    probability: float


class ClassifyResponse(Served):
    predictions: list[list[ClassScore]]


class Match(BaseModel):
    identity: str
    similarity: float


class Identification(BaseModel):
    identity: str
    similarity: float | None
    known: bool
    matches: list[Match]


class FaceIdentification(FaceBox, Identification):
    pass


class IdentifyResponse(FacesWhenFound):
    threshold: float | None
    far: float | None = None  # the false-accept rate the threshold is at
    results: list[Identification]  # a face model: each photo's largest face
    faces: list[list[FaceIdentification]] | None = None  # a face model: every face


class VerifyResponse(Served):
    """``/verify``: one person or not, at the version's threshold (FAR 1e-3). ``similarity``
    is that of the two photos, or of the photo and the claimed identity's nearest entry;
    without the admin key it is shown only when ``same`` (as ``/identify`` lists only
    matches at or above the threshold)."""

    identity: str | None  # the identity claimed, when one was
    similarity: float | None
    threshold: float | None
    far: float | None = None  # the false-accept rate the threshold is at
    same: bool | None  # None: the version has no threshold


class EnrollResponse(Served):
    identity: str
    added: int
    entries: int
    gallery_size: int


def header_value(text: str) -> str:
    """``text`` safe in an HTTP header (a class name in ``X-Zoo-Target``): printable ASCII as
    is, anything else (and ``%``) percent-encoded UTF-8, which ``urllib.parse.unquote`` reads
    back."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


class MigrateRequest(BaseModel):
    """``POST /gallery/migrate``'s body."""

    to: str = Field(min_length=1, max_length=500, description="the version to migrate to: "
                    "models:/<name>@<alias> or models:/<name>/<version>")
    force: bool = Field(False, description="answer with it even when the gate finds it worse")
