"""The served model: ONNX Runtime or PyTorch for answers (whichever the export timed faster,
serving/runtimes.py), PyTorch for GradCAM, the gallery for identities.

Everything an endpoint computes is here, free of HTTP, so the BentoML service and the
offline predictor (``python -m serving.predict``) give the same answers from the same code.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from serving.errors import RequestError, shown
from serving.gallery.kept import Sealer
from serving.gallery.store import GalleryStore, embedding_contract
from serving.model.batcher import Batcher, Outputs
from serving.model.runtimes import open_runtime
from serving.schemas import ClassScore
from serving.settings import ServeSettings
from zoo.data.preprocessing import normalise, to_unit
from zoo.export.bundle import Bundle
from zoo.export.runtime_timing import worker_threads
from zoo.gallery import saved_thresholds
from zoo.metrics._utils import far_key
from zoo.metrics.classification import softmax

if TYPE_CHECKING:  # imported on first use: pytorch-grad-cam and torchvision take ~4 s to import
    from serving.model.gradcam import Explainer

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


def check_finite(outputs: dict[str, np.ndarray]) -> None:
    """Every model output finite: a NaN embedding would be stored by ``/enroll`` and match
    nothing (or everything) afterwards."""
    for name, values in outputs.items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
            raise RequestError(f"the model's {name} of input {int(rows[0])} is not finite: the "
                               "input is outside what the model can take")


@dataclass(frozen=True)
class Identity:
    """The answer for one query: the best identity, or ``unknown`` below the threshold."""

    identity: str
    similarity: float
    known: bool
    matches: list[dict[str, Any]]


class ServedModel:
    """One model version, loaded once per server worker."""

    def __init__(self, bundle: Bundle, settings: ServeSettings,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.bundle, self.info, self.settings = bundle, bundle.info, settings
        self.record = bundle.info.record
        self.pre = self.record.pre
        self.faces = self.record.faces  # the face stage that runs before the model, or None
        threads = settings.threads or worker_threads(settings.worker_count, settings.device)
        # Torch preprocesses (on the event loop) and runs GradCAM: one thread, or its OpenMP
        # workers fight the model's for the cores (3 ms per request instead of 30 us); the
        # PyTorch runtime sets its own threads
        torch.set_num_threads(1)
        self.runtime = open_runtime(bundle, settings.runtime, settings.device, threads,
                                    settings.spin)
        self.output_names = self.runtime.output_names
        self.batcher = Batcher(self.run, settings.max_batch_size, on_batch, check_finite)
        dim = self.embedding_dim = self.runtime.embedding_dim
        self.contract = embedding_contract(bundle, dim)
        # the galleries of every version of the registered model share a folder (a SQLite
        # database) and what was kept; each version's is keyed by its run too, since a store
        # made afresh numbers its versions from 1 again
        folder = settings.gallery_path(self.info.name)
        self.sealer = Sealer.load(settings, folder) if settings.keep_enrolled else None
        self.gallery = GalleryStore(
            folder, bundle.gallery_path, self.contract, settings.gallery_uri,
            settings.gallery_index, self.sealer,
            settings.legacy_gallery_path(f"{self.info.key}-{self.info.run_id[:12]}"))
        # the run's thresholds at each false-accept rate it measured, kept by the export
        self.thresholds = saved_thresholds(bundle.gallery_path)
        self._explainer: Explainer | None = None
        self._explainer_lock = threading.Lock()
        log.info("%s runs on %s (%s)", self.info.uri, self.runtime.name,
                 ", ".join(self.runtime.describe()))

    @property
    def kept_kind(self) -> str | None:
        """What an enrollment keeps for later versions (None: nothing, ZOO_KEEP_ENROLLED)."""
        if self.sealer is None:
            return None
        return "chip" if self.faces is not None else "image" if self.pre.kind == "image" \
            else "row"

    @property
    def class_names(self) -> list[str]:
        return self.pre.class_names

    @property
    def has_classes(self) -> bool:
        return "logits" in self.output_names and bool(self.class_names)

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """uint8 images to the normalised float32 the model takes (as in training); rows,
        standardised already, pass through."""
        if x.dtype == np.uint8:
            return normalise(to_unit(x), self.pre.mean, self.pre.std).numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, x: np.ndarray) -> Outputs:
        """The runtime on one batch (any size, uint8 images or rows), synchronously."""
        return self.runtime(self.model_input(x))

    def run_batched(self, x: np.ndarray) -> Outputs:
        """:meth:`run` in chunks of ``max_batch_size`` (offline use)."""
        size = self.settings.max_batch_size
        parts = [self.run(x[i:i + size]) for i in range(0, len(x), size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    async def infer(self, x: np.ndarray) -> Outputs:
        """:meth:`run` batched with concurrent requests; a non-finite output is a
        ``RequestError`` (``check_finite``) for the request whose input it was."""
        return await self.batcher(x)

    def top_classes(self, logits: np.ndarray, k: int) -> list[list[ClassScore]]:
        """The ``k`` most probable classes of each row, most probable first."""
        probs = softmax(logits)
        k = max(1, min(k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[ClassScore(label=self.class_names[j], probability=float(row[j])) for j in idx]
                for row, idx in zip(probs, order)]

    @property
    def threshold(self) -> float | None:
        return self.gallery.threshold

    def threshold_at(self, far: str | None) -> tuple[float | None, float | None]:
        """(threshold, FAR) for a request's ``far`` as sent (``"1e-4"``, ``"0.0001"``): one
        the export kept; None or blank: the gallery's own (FAR 1e-3). Another rate is a
        ``RequestError`` that lists those there are."""
        if far is None or not far.strip():
            return self.threshold, self.gallery.far
        try:
            asked = float(far)
        except ValueError:
            asked = float("nan")  # close to no rate: refused below, with those there are
        there = dict(self.thresholds)
        if self.threshold is not None and self.gallery.far is not None:
            there.setdefault(far_key(self.gallery.far), self.threshold)
        for key, value in there.items():
            if math.isclose(float(key), asked, rel_tol=1e-9):
                return value, float(key)
        offered = (", ".join(sorted(there, key=float, reverse=True))
                   or "none: its export kept no threshold")
        raise RequestError(f"far={shown(far)}: this model has thresholds at the false accept "
                           f"rates {offered} (kept by its export)")

    def identify(self, embeddings: np.ndarray, k: int, threshold: float | None,
                 below_threshold: bool = True) -> list[Identity]:
        """Nearest identities; ``unknown`` when the best is below ``threshold`` (the
        gallery's, ``self.threshold``, or one of ``threshold_at``). ``below_threshold=False``
        lists only the matches at or above it (what a caller who may not list the gallery
        sees)."""
        answers = []
        for matches in self.gallery.search(embeddings, k):
            listed = [{"identity": m.label, "similarity": m.similarity} for m in matches
                      if below_threshold or threshold is None or m.similarity >= threshold]
            if not matches:
                answers.append(Identity(UNKNOWN, float("nan"), False, listed))
                continue
            best = matches[0]
            known = threshold is None or best.similarity >= threshold
            answers.append(Identity(best.label if known else UNKNOWN, best.similarity, known,
                                    listed))
        return answers

    @property
    def explainer(self) -> Explainer:
        """GradCAM on the PyTorch model, loaded on first use (image models only)."""
        from serving.model.gradcam import Explainer

        with self._explainer_lock:  # one load, however many requests ask at once
            if self._explainer is None:
                if self.pre.kind != "image":
                    raise ValueError("GradCAM explains image models; this one takes rows")
                self._explainer = Explainer(self.bundle.load_pytorch(),
                                            tuple(self.pre.input_size))
        return self._explainer

    def describe(self) -> dict[str, Any]:
        """``GET /model``."""
        info, pre = self.info, self.pre
        return {
            "uri": info.uri, "name": info.name, "version": info.version, "alias": info.alias,
            "run_id": info.run_id,
            "run_url": info.run_url(os.environ.get("MLFLOW_TRACKING_URI")),
            "model": self.record.model, "loss": self.record.loss,
            "kind": pre.kind, "input_size": list(pre.input_size),
            "faces": self.faces.to_dict() if self.faces is not None else None,
            "feature_names": pre.feature_names, "embedding_dim": self.embedding_dim,
            # a table's columns: numeric (with the median a missing value takes) or
            # categorical (with the categories it knows; any other is "unknown")
            "columns": pre.columns,
            "classes": self.class_names, "metrics": info.metrics,
            "gallery": self.gallery.describe(),
            # the thresholds a request may choose with far=, by false-accept rate
            "thresholds": self.thresholds,
            "runtime": self.runtime.name, "providers": self.runtime.describe(),
            # what serving.migrate's gate found on the enrolled people, when it has run
            "gate": json.loads(info.gate) if info.gate else None,
        }

    def close(self) -> None:
        self.batcher.close()
        self.gallery.close()
