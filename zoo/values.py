"""Text to typed values, one way everywhere: the command line, ``-P`` parameters of
``mlflow run``, MLflow parameters read back, ``ZOO_*`` settings and BentoML arguments.

pydantic's lax mode does the parsing (booleans accept 1/0, true/false, yes/no, on/off, t/f,
y/n in any case), so every place accepts the same words and refuses the same mistakes.
"""
from __future__ import annotations

import functools
import shlex
from typing import Any, Optional, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

AUTO = "auto"  # an optional field left to its component's own default
#: what an optional field reads as None
UNSET_WORDS = ("", AUTO, "none", "null", "default")


def is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, Optional) and type(None) in get_args(tp)


def base_type(tp: Any) -> Any:
    """``X`` of ``Optional[X]``; anything else as it is."""
    if is_optional(tp):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


@functools.lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


def parse_value(tp: Any, value: Any, name: str = "") -> Any:
    """``value`` as type ``tp``; text is stripped, and an unset word is None where ``tp`` is
    optional. A bad value is a ``ValueError`` that names ``name`` and the type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if is_optional(tp) and text.lower() in UNSET_WORDS:
        return None
    base = base_type(tp)
    if base is str:
        return text
    try:
        return _adapter(base).validate_python(text)
    except ValidationError:
        kind = getattr(base, "__name__", str(base))
        raise ValueError(f"{name}={value!r} is not a valid {kind}") from None


def parse_bool(value: Any, name: str = "") -> bool:
    return parse_value(bool, value, name)


def is_false_word(text: str) -> bool:
    """Whether ``text`` is one of the words ``parse_bool`` reads as False."""
    try:
        return parse_bool(text) is False
    except ValueError:
        return False


def format_value(value: Any) -> str:
    """The text form of a value: MLproject defaults, MLflow parameters, ``-P`` flags."""
    if value is None:
        return AUTO
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unquote(text: str) -> str:
    """A parameter as ``mlflow run`` logged it, back to the value given: MLflow shell-quotes
    each ``-P`` value (and each declared default) before logging it, so an empty value is
    logged as ``''`` and ``my photos`` as ``'my photos'``. Anything else is returned as it is."""
    if not text.startswith("'"):
        return text
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text
