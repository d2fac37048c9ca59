"""The JSON answers of the endpoints (typed, so the OpenAPI page at ``/`` documents them)."""
from __future__ import annotations

from urllib.parse import quote

from pydantic import BaseModel


class Served(BaseModel):
    model: str
    version: str | None


class EmbedResponse(Served):
    embeddings: list[list[float]]


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


class IdentifyResponse(Served):
    threshold: float | None
    results: list[Identification]


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
