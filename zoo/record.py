"""What a trained model is, in one typed, versioned record.

A model's contract used to travel as an untyped dict (``zoo_meta``) read by key in a dozen
places. ``ModelRecord`` is that contract: the preprocessing its inputs need, how to build
its architecture again, the training recipe, the data set and loss, and where its weights
came from. It is written onto the model (``EmbeddingModel.record``), into every checkpoint,
into the logged model's metadata and files, into the ONNX file and into the export bundle,
and everything that reads a model reads it through ``ModelRecord.from_dict``, as timm reads
``pretrained_cfg`` through its resolvers. It imports no MLflow: the server and a Bento read it.

The dict form is versioned (``format``). Format 1 keeps the keys the untyped dict had at the
top (``preprocessing``, ``build``, ``recipe``, ``loss``, ``dataset``, ...), so an older
server still finds what it reads; what was loose beside them (the backbone's timm name,
feature width and stage; the pretrained source) moved into ``architecture`` and ``lineage``.
Format 2 adds ``faces``, the face stage (``zoo.faces.FaceStage``) that runs before the
model on a photo; only a record with a stage is written as format 2, so a server of before
the stage refuses a face model (which it would feed whole photos) and reads every other.
A dict without ``format`` is a model logged before records existed (format 0) and is read
as such; a newer format is refused with a line that says to upgrade.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from zoo.data.preprocessing import Preprocessing
from zoo.faces.stage import FaceStage

RECORD_FORMAT = 2
#: The format a record without a face stage is written in: nothing it holds needs format 2,
#: so a server of before the face stage still reads it.
PLAIN_FORMAT = 1
#: What an image family recorded beside the build recipe before records existed (format 0).
_ARCHITECTURE_KEYS = ("timm_name", "feature_dim", "stage", "grid", "parts", "timm_options",
                      "cnn_branch", "transformer_branch")


@dataclass(frozen=True)
class Lineage:
    """Where a model's starting weights came from: pretrained weights (a timm hub name, a
    file or an earlier zoo model's weights) or an earlier zoo model (``init=<model URI>``)."""

    pretrained: str | None = None  # the weights' source
    pretrained_sha256: str | None = None
    init: str | None = None  # the model URI a run started from
    licence: str | None = None  # of the pretrained weights, as their source states it

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Lineage":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (None if v is None else str(v)) for k, v in (d or {}).items()
                      if k in known})


@dataclass(frozen=True)
class ModelRecord:
    """One trained (or freshly built) zoo model: see the module docstring."""

    model: str  # the catalogue name (resnet18, timm/<name>, residual_mlp, ...)
    embedding_dim: int
    preprocessing: Preprocessing | None = None  # None until the model meets its data
    build: dict[str, Any] | None = None  # create_model's arguments (zoo.models.rebuild)
    recipe: dict[str, Any] = field(default_factory=dict)  # the training parameters, resolved
    dataset: str | None = None
    loss: str | None = None
    run_id: str | None = None  # the training run
    open_class_names: tuple[str, ...] = ()  # classes held out of training (open-set metrics)
    lineage: Lineage = field(default_factory=Lineage)
    # what the architecture's family recorded: timm name, feature width, stage, grid, parts,
    # timm options (image models), the hybrid's branches
    architecture: dict[str, Any] = field(default_factory=dict)
    # the preprocessing exactly as a read record held it (a model logged before records
    # existed may lack fields added since), written back and digested as it was, so the
    # digest a gallery was enrolled under stays the same (``preprocessing_digest``)
    recorded_preprocessing: dict[str, Any] | None = field(default=None, repr=False,
                                                          compare=False)
    # what runs before the model on a photo: find, landmark and align faces (format 2)
    faces: FaceStage | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "embedding_dim", int(self.embedding_dim))
        object.__setattr__(self, "open_class_names",
                           tuple(str(c) for c in self.open_class_names))
        if self.preprocessing is not None and not isinstance(self.preprocessing,
                                                             Preprocessing):
            raise TypeError("ModelRecord.preprocessing must be a Preprocessing (use from_dict)")
        if self.faces is not None and not isinstance(self.faces, FaceStage):
            raise TypeError("ModelRecord.faces must be a FaceStage (use from_dict)")

    # --- what readers ask -----------------------------------------------------------------
    @property
    def pre(self) -> Preprocessing:
        """The preprocessing; an error that says so when the model has met no data."""
        if self.preprocessing is None:
            raise ValueError(f"the {self.model} model records no preprocessing: it was "
                             "never trained (or logged by another program)")
        return self.preprocessing

    @property
    def class_names(self) -> list[str]:
        return list(self.preprocessing.class_names) if self.preprocessing else []

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.pre.input_size)

    def preprocessing_digest(self) -> str:
        """sha256 of the preprocessing as recorded, and of the face stage when there is one
        (what makes two models' embeddings of the same input comparable; a gallery keeps
        it)."""
        pre = (self.recorded_preprocessing if self.recorded_preprocessing is not None
               else self.pre.to_dict())
        if self.faces is not None:  # the chips the embeddings are of: part of the input
            pre = {"preprocessing": pre, "faces": self.faces.to_dict()}
        return hashlib.sha256(json.dumps(pre, sort_keys=True, default=str).encode()).hexdigest()

    def with_(self, **changes: Any) -> "ModelRecord":
        """A copy with ``changes`` (records are immutable)."""
        if "preprocessing" in changes:
            changes.setdefault("recorded_preprocessing", None)
        return replace(self, **changes)

    # --- the dict form --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: format ``RECORD_FORMAT`` with a face stage, else ``PLAIN_FORMAT``
        (which older readers read)."""
        out: dict[str, Any] = {
            "format": RECORD_FORMAT if self.faces is not None else PLAIN_FORMAT,
            "model": self.model, "embedding_dim": self.embedding_dim,
            "preprocessing": self._preprocessing_dict(), "build": self.build,
            "recipe": dict(self.recipe), "dataset": self.dataset, "loss": self.loss,
            "run_id": self.run_id, "open_class_names": list(self.open_class_names),
            "lineage": self.lineage.to_dict(), "architecture": dict(self.architecture),
        }
        if self.faces is not None:
            out["faces"] = self.faces.to_dict()
        return json.loads(json.dumps(out, default=str))

    def _preprocessing_dict(self) -> dict[str, Any] | None:
        if self.recorded_preprocessing is not None:
            return dict(self.recorded_preprocessing)
        return self.preprocessing.to_dict() if self.preprocessing is not None else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRecord":
        """A record from its dict form, any format up to ``RECORD_FORMAT``; a model logged
        before records existed (no ``format``) is read from the keys it had."""
        if not isinstance(d, dict) or not d.get("model"):
            raise ValueError("not a model-zoo model record (no model name)")
        version = d.get("format", 0)
        if not isinstance(version, int) or version > RECORD_FORMAT:
            raise ValueError(f"model record format {version!r} is newer than this model-zoo "
                             f"reads ({RECORD_FORMAT}): upgrade model-zoo to load this model")
        pre = d.get("preprocessing")
        recipe = dict(d.get("recipe") or {})
        if version == 0:
            pretrained = d.get("pretrained") or {}
            lineage = Lineage(pretrained=pretrained.get("source"),
                              pretrained_sha256=pretrained.get("sha256"),
                              init=recipe.get("init") or None)
            architecture = {k: d[k] for k in _ARCHITECTURE_KEYS if k in d}
        else:
            lineage = Lineage.from_dict(d.get("lineage"))
            architecture = dict(d.get("architecture") or {})
        return cls(
            model=str(d["model"]), embedding_dim=int(d.get("embedding_dim") or 0),
            preprocessing=Preprocessing.from_dict(pre) if pre else None,
            build=dict(d["build"]) if d.get("build") else None, recipe=recipe,
            dataset=d.get("dataset"), loss=d.get("loss"), run_id=d.get("run_id"),
            open_class_names=tuple(d.get("open_class_names") or ()), lineage=lineage,
            architecture=architecture, recorded_preprocessing=dict(pre) if pre else None,
            faces=FaceStage.from_dict(d.get("faces")) if version >= 2 else None)


def record_of(model: Any) -> ModelRecord | None:
    """The record a module carries (an ``EmbeddingModel``), or None (any other module)."""
    record = getattr(model, "record", None)
    return record if isinstance(record, ModelRecord) else None


def record_to_json(record: ModelRecord | None) -> str:
    """What an exported file saves beside the model: the record as JSON (``{}`` for none)."""
    return json.dumps(record.to_dict() if record is not None else {})


def record_from_json(text: str | None) -> ModelRecord | None:
    """The record a file saved as JSON (an exported file's extra file or metadata); None
    when it saved none."""
    data = json.loads(text) if text else None
    return ModelRecord.from_dict(data) if data else None
