"""The JSON answers of the endpoints (typed, so the OpenAPI page at ``/`` documents them)."""
from __future__ import annotations

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
