"""One small generic registry, shared by models, losses and data sources.

Modelled on timm's ``_registry.py``: a plain decorator records a factory under a name,
``create`` builds by name, ``names`` lists what exists. Unknown names fail with an error
that lists the choices, because a typo in ``-P loss=arcfce`` should say what was meant.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised when a registry is asked for a name it does not hold."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory and where it came from."""

    name: str
    factory: Callable[..., T]
    module: str
    doc: str


class Registry(Generic[T]):
    """Maps names to factories: ``register`` (decorator), ``create``, ``names``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: record ``fn`` under ``name`` (default: the function's own name)."""

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                log.warning("%s %r registered twice; the later definition wins", self.kind, key)
            doc = (fn.__doc__ or "").strip().splitlines()
            self._entries[key] = Entry(key, fn, fn.__module__, doc[0] if doc else "")
            return fn

        return decorator

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``, or an error that lists the registered names."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the object registered under ``name`` with ``kwargs``."""
        return self.get(name).factory(**kwargs)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
