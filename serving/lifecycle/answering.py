"""One version answering in a worker: its model, its input reader and what its answers say
they came from.

A request takes the worker's answering version once, as it arrives (``http/version.py`` puts
it in ``ANSWERING`` for everything the request calls), so its embedding, its gallery and its
``X-Zoo-Model-Version`` all come from one version, whatever switch happens meanwhile. A
version replaced while requests are in flight is closed when the last of them has answered.
"""
from __future__ import annotations

import json
import logging
import threading
from contextvars import ContextVar
from typing import Any

import numpy as np

from serving.inputs.reader import InputReader
from serving.model.served import ServedModel
from serving.settings import ServeSettings

log = logging.getLogger(__name__)


class Answering:
    """A loaded version and the requests in flight on it."""

    def __init__(self, model: ServedModel, settings: ServeSettings) -> None:
        info, pre = model.info, model.pre
        self.model = model
        self.inputs = InputReader(pre, model.faces, settings)
        self.served = {"model": info.name, "version": info.version}
        # a JSON body's room for the column names that rows sent as records repeat, per row
        # ('"name": ' each), for the body limit (http/limits.py's json_limit)
        self.row_name_bytes = (sum(len(json.dumps(n)) + 2 for n in pre.feature_names or [])
                               if pre.kind == "tabular" else 0)
        self._users = 0
        self._retired = False
        self._lock = threading.Lock()
        self.closed = threading.Event()

    @property
    def version(self) -> str:
        """What ``X-Zoo-Model-Version`` says: the registry's version (or the run, unregistered)."""
        info = self.model.info
        return info.version or f"run-{info.run_id[:12]}"

    @property
    def pinned_uri(self) -> str:
        """A URI naming exactly this version, stable when an alias moves."""
        return pinned_uri(self.model)

    def warm(self) -> None:
        """One input through the model and one search of the gallery, so the first request
        after a switch pays for neither."""
        pre, model = self.model.pre, self.model
        shape = pre.input_size if pre.kind == "image" else (pre.row_width,)
        x = np.zeros((1, *shape), np.uint8 if pre.kind == "image" else np.float32)
        model.run(x)
        model.gallery.search(np.zeros((1, model.embedding_dim), np.float32), 1)

    def enter(self) -> "Answering":
        with self._lock:
            self._users += 1
        return self

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._close()

    def retire(self) -> None:
        """No new request takes this version; closed once the last in flight has answered."""
        with self._lock:
            self._retired = True
            idle = self._users == 0
        if idle:
            self._close()

    def _close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.model.close()
            log.info("%s closed: its last request has answered", self.model.info.uri)


def pinned_uri(model: Any) -> str:
    """``models:/<name>/<version>`` of a registered version, else the URI it was loaded by."""
    info = model.info
    return f"models:/{info.name}/{info.version}" if info.version else info.uri


#: the version the current request is answered by (set by ``http/version.py``)
ANSWERING: ContextVar[Answering | None] = ContextVar("zoo_answering", default=None)
