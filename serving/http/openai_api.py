"""OpenAI's embeddings API over the served model: ``POST /v1/embeddings``.

What the ``openai`` client sends, read strictly: ``input`` is a base64 data URL of an image
(``data:image/png;base64,...``) or a list of them; for tabular models a list of numbers (one
row) or a list of such lists. Nothing is ever fetched: an ``http(s)://`` input is refused.
``model`` names the served model (or is left out), ``encoding_format`` is ``float`` or
``base64`` (little-endian float32, as OpenAI encodes them, and what the client asks for
by default), and ``dimensions`` must equal the model's own width. Answers and errors have
OpenAI's shapes, so the client parses both.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Sequence

import numpy as np

from serving.errors import RequestError, shown
from serving.http.asgi import openai_error
from serving.inputs.uploads import Upload

ENCODINGS = ("float", "base64")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)"
                       r";base64,(?P<data>.*)$", re.DOTALL)


class OpenAIError(RequestError):
    """A 4xx in OpenAI's error shape: ``type`` and ``code`` as OpenAI names them."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message, status)
        self.param, self.code, self.kind = param, code, kind

    def body(self) -> dict[str, Any]:
        return openai_error(str(self), self.kind, self.param, self.code)


def check_request(model: str | None, encoding_format: str | None, dimensions: int | None,
                  served: set[str], width: int) -> str:
    """The encoding to answer in, after ``model`` and ``dimensions`` are checked."""
    if model and model not in served:
        # the name sent is not repeated: an answer echoes nothing a client chose
        raise OpenAIError("the model named in the request is not served here; this server "
                          f"serves {', '.join(sorted(served))}", 404, "model", "model_not_found")
    encoding = encoding_format or "float"
    if encoding not in ENCODINGS:
        raise OpenAIError(f"encoding_format={shown(encoding)} is not one of float, base64", 400,
                          "encoding_format")
    if dimensions is not None and dimensions != width:
        raise OpenAIError(f"dimensions={dimensions}: this model's embeddings have {width} "
                          "dimensions and are not shortened", 400, "dimensions")
    return encoding


def data_url_upload(text: str, index: int) -> Upload:
    """One ``data:<mime>;base64,...`` input as the bytes it carries."""
    value = text.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", value, re.IGNORECASE):
        raise OpenAIError(f"input {index} is a URL; URLs are never fetched: send the image "
                          "itself as a data URL (data:image/png;base64,...)", 400, "input")
    match = _DATA_URL.match(value)
    if match is None:
        raise OpenAIError(f"input {index} is not a base64 data URL of an image "
                          "(data:image/png;base64,...)", 400, "input")
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(f"input {index} has invalid base64 data", 400, "input") from None
    return Upload(f"input-{index}", data)


def parse_input(value: Any, kind: str) -> tuple[list[Upload] | None, list[list[Any]] | None]:
    """Images (as uploads) or rows, by what the model takes (``kind``)."""
    if value is None or value == [] or value == "":
        raise OpenAIError("input is empty: send at least one item", 400, "input")
    items = value if isinstance(value, list) else [value]
    if kind == "image":
        if not all(isinstance(item, str) for item in items):
            raise OpenAIError("this model embeds images: input must be a data URL of an image "
                              "or a list of them", 400, "input")
        return [data_url_upload(item, i) for i, item in enumerate(items)], None
    if all(_value(v) for v in items):
        return None, [list(items)]
    if all(isinstance(row, list) and row and all(_value(v) for v in row) for row in items):
        return None, [list(row) for row in items]
    raise OpenAIError("this model embeds rows: input must be one row (a list of values: "
                      "numbers, text or booleans for a table's categories, null where "
                      "missing) or a list of rows", 400, "input")


def _value(value: Any) -> bool:
    """A value a row may hold: a number, a category's text (or a flag), or null (missing)."""
    return value is None or isinstance(value, (str, int, float))


def embedding_response(embeddings: np.ndarray, model: str, encoding: str) -> dict[str, Any]:
    """OpenAI's answer: ``object: list``, ``data[i].embedding`` with ``index``, ``usage``."""
    vectors: Sequence[Any]
    if encoding == "base64":
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
                   for v in embeddings]
    else:
        vectors = [np.asarray(v, dtype=np.float32).tolist() for v in embeddings]
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0}}
