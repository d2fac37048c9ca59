"""What a request carries, as the endpoints declare it: files as raw bytes (never fetched,
never decoded here), text as sent, and how many inputs one request may hold."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainValidator, WithJsonSchema
from starlette.datastructures import UploadFile

from serving.errors import RequestError, shown
from serving.settings import ServeSettings


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
# field as a URL; serving.http.multipart hands it over as text instead, and it is refused here.
ImageFile = Annotated[Path, PlainValidator(_to_upload),
                      WithJsonSchema({"type": "file", "format": "binary"})]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# Multipart text fields arrive as sent (serving.http.multipart does not parse them as JSON); a JSON
# body may still send a number, which becomes its text.
Text = Annotated[str, BeforeValidator(_as_text)]


def upload_name(upload: Upload, index: int) -> str:
    return f"image {index}" + (f" ({shown(upload.filename)})" if upload.filename else "")



def check_count(count: int, what: str, settings: ServeSettings) -> None:
    if count == 0:
        raise RequestError(f"no {what} in the request: send at least one")
    if count > settings.max_images:
        raise RequestError(f"{count} {what} in one request, over the limit of "
                           f"{settings.max_images} (ZOO_MAX_IMAGES): split the request", 413)
