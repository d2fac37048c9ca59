"""Multipart (and url-encoded) request bodies as the zoo reads them: files only where files
are expected, text as sent, and limits that answer 4xx.

BentoML's own multipart reader (``_bentoml_impl.serde.MultipartSerde``) does three things a
server facing hostile clients must not:
- it downloads a *text* value of a file field as a URL (a blind SSRF, with no size cap);
- it parses every text field as JSON, so an identity ``12.50`` becomes ``12.5`` (text fields
  are now kept as sent; only a JSON string literal, as BentoML's clients send text, is
  unwrapped), and it parses them all, on the event loop, whatever their names: 31 fields of
  1 MiB of ``[{},{},...]`` took 680 MB (now only the fields the route declares are read, each
  within a byte limit, its JSON values counted as a JSON body's are, and a long one parsed in
  a thread; nesting too deep for Python's parser is a 400, not a 500);
- Starlette's part limits (too many parts, a text part over its size) end in a 500.

``install`` puts ``FormReader`` in BentoML's table of body readers, for the media types
BentoML reads with ``MultipartSerde``. A text value of a file field is passed on as text,
and ``serving.inputs`` refuses it with a 400 saying that a file was expected; nothing is
ever fetched.
"""
from __future__ import annotations

import json
import typing as t
from http import HTTPStatus

import anyio
from bentoml.exceptions import BentoMLException
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from serving.http.bentoml_private import (BODY_READERS, IS_LIST_TYPE, IS_UNION_TYPE,
                                          MULTIPART_READER)
from serving.http.limits import json_values

if t.TYPE_CHECKING:
    from starlette.requests import Request

_is_list_type, _is_union_type = IS_LIST_TYPE.load(), IS_UNION_TYPE.load()
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_TEXT_FIELDS = 32  # identity, target, method, top_k, rows: a handful per request
MAX_TEXT_PART_BYTES = 1024 * 1024  # the largest text part: rows of numbers sent as a field
#: every other text field (a name, a number, a method): far more than any of them needs
MAX_FIELD_BYTES = 64 * 1024
LARGE_FIELDS = ("rows",)
#: a field this long is parsed in a thread, so the event loop keeps answering meanwhile
PARSE_IN_THREAD_BYTES = 4096


class FormRefused(BentoMLException):
    """A form BentoML's error handler answers with ``status`` (4xx) and the message."""

    def __init__(self, message: str, status: HTTPStatus) -> None:
        super().__init__(message, error_code=status)


class FormReader(MULTIPART_READER.load()):  # type: ignore[misc]
    """``MultipartSerde`` that never fetches, keeps text as text and answers 4xx for forms
    over the part limits. ``max_files`` and ``max_values`` are set by ``install``."""

    max_files = 1000

    @staticmethod
    def max_values(path: str) -> int | None:
        """How many JSON values one field may hold on ``path`` (None: not counted)."""
        return None

    async def ensure_file(self, obj: str | UploadFile) -> t.Any:  # type: ignore[override]
        return obj  # text stays text: serving.inputs refuses it (never a URL to fetch)

    async def parse_request(self, request: "Request", cls: type) -> t.Any:
        try:
            form = await request.form(max_files=self.max_files, max_fields=MAX_TEXT_FIELDS,
                                      max_part_size=MAX_TEXT_PART_BYTES)
        except (MultiPartException, HTTPException) as exc:
            message = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
            over = "Too many" in message or "exceeded maximum size" in message
            limits = (f" (at most {self.max_files} files, {MAX_TEXT_FIELDS} text fields and "
                      f"{MAX_TEXT_PART_BYTES // 1024} KiB per text field)" if over else "")
            raise FormRefused(f"the form cannot be read: {message}{limits}",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE if over
                              else HTTPStatus.BAD_REQUEST) from None
        fields = getattr(cls, "model_fields", {})
        files = set(getattr(cls, "multipart_fields", ()))
        data: dict[str, t.Any] = {}
        max_values = self.max_values(request.url.path)
        for key in form:
            if key not in fields:  # a field the route does not take: never parsed or kept
                continue
            values = form.getlist(key)
            if key in files:
                data[key] = values if _is_list(fields.get(key)) else values[0]
                continue
            value = values[0]
            if isinstance(value, UploadFile):
                value = await value.read()
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise FormRefused(f"field {key!r} is a binary file where text was expected",
                                      HTTPStatus.BAD_REQUEST) from None
            _check_size(key, value)
            if _is_text(fields.get(key)):
                data[key] = _text(value)
                continue
            if max_values is not None and (count := json_values(value.encode())) > max_values:
                raise FormRefused(f"field {key!r} holds {count:,}+ JSON values, over the limit "
                                  f"of {max_values:,}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            data[key] = (_json_or_text(key, value) if len(value) < PARSE_IN_THREAD_BYTES
                         else await anyio.to_thread.run_sync(_json_or_text, key, value))
        return cls.model_validate(data)


def _check_size(key: str, value: str) -> None:
    """A text field within its byte limit: ``rows`` the most, every other one far less."""
    cap = MAX_TEXT_PART_BYTES if key in LARGE_FIELDS else MAX_FIELD_BYTES
    if len(value) * 4 > cap and (size := len(value.encode())) > cap:
        raise FormRefused(f"field {key!r} is {size:,} bytes, over the limit of {cap:,} for "
                          "it", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def _is_list(field: t.Any) -> bool:
    """Whether a file field takes several files: BentoML's own test in its reader."""
    annotation = getattr(field, "annotation", None)
    if _is_union_type(annotation):
        annotation = t.get_args(annotation)[0]
    return _is_list_type(annotation)


def _is_text(field: t.Any) -> bool:
    """A field of plain text (``str``, a ``Literal`` of strings, optional or not): kept as
    sent, never parsed as JSON."""
    annotation = getattr(field, "annotation", None)
    args = [a for a in t.get_args(annotation) if a is not type(None)]
    if annotation is str or (t.get_origin(annotation) is t.Union and args == [str]):
        return True
    return t.get_origin(annotation) is t.Literal and all(isinstance(a, str) for a in args)


def _text(value: str) -> str:
    """A text field as sent, except a JSON string literal (``"007"``), which BentoML's clients
    send for every text argument: unwrapped. Numbers are never re-read (``12.50`` stays)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def _json_or_text(key: str, value: str) -> t.Any:
    """A field's JSON value, or its text when it is no JSON; nesting deeper than Python's
    parser goes is a 400."""
    try:
        return json.loads(value)
    except ValueError:
        return value
    except RecursionError:
        raise FormRefused(f"field {key!r} nests its JSON too deeply",
                          HTTPStatus.BAD_REQUEST) from None


def install(max_files: int,
            max_values: t.Callable[[str], int | None] | None = None) -> None:
    """Read every form with ``FormReader`` (in this process: call it where the service is
    defined, so that each server worker does); ``max_values``: the JSON values a field may
    hold on a path, as a JSON body may (``serving/http/limits.py``)."""
    attributes: dict[str, t.Any] = {"max_files": max_files}
    if max_values is not None:
        attributes["max_values"] = staticmethod(max_values)
    reader = type("ZooFormReader", (FormReader,), attributes)
    readers = BODY_READERS.load()
    for media_type in FORM_TYPES:
        readers[media_type] = reader
