"""Where a run's weights start: from scratch, timm's pretrained weights, or a zoo model.

``pretrained`` (``true`` or a file) loads a timm backbone's weights through
``zoo.models.pretrained``, and the run takes the weights' preprocessing (mean, std,
interpolation) unless it sets its own. ``init`` (a model URI) starts from a zoo model
trained earlier: its architecture and preprocessing, and its backbone and neck weights (parts
too); the new run's classes get a new loss and head. Either way the run records where it
started: tags, the weights' sha256, a load report, and for ``init`` MLflow's model lineage.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import mlflow
import torch

from training.config import TrainConfig, params_of
from training.tracking.model_source import (ModelSource, artifact_location, load_pytorch_model,
                                             resolve_model, training_config)
from zoo import names
from zoo.data.preprocessing import Preprocessing
from zoo.models import (CURATED_IMAGE_MODELS, MORE_IMAGE_MODELS, EmbeddingModel,
                        is_timm_backed, own_weights_reader, timm_name_of)
from zoo.models.pretrained import PretrainedWeights, WeightsPreprocessing, resolve_weights

log = logging.getLogger(__name__)

#: What an ``init`` model decides: the shape of its weights and the input it was trained on.
ARCHITECTURE = ("model", "embedding_dim", "stage", "grid", "parts", "width_multiplier",
                "act_layer", "norm_layer", "cnn_branch", "transformer_branch", "channels",
                "image_size")
#: The parts of a zoo model that carry over to a run with new classes (the head does not).
CARRIED = ("backbone.", "neck.")


@dataclass(frozen=True)
class InitSource:
    """The zoo model an ``init`` run starts from, and what it trained with."""

    uri: str
    source: ModelSource
    config: TrainConfig

    def describe(self) -> str:
        return f"{self.uri} ({self.source.describe()})"


def resolve_init(uri: str) -> InitSource:
    """The model ``uri`` names and the config of the run that trained it (no weights yet)."""
    source = resolve_model(uri)
    run = mlflow.MlflowClient().get_run(source.run_id)
    return InitSource(uri, source, training_config(source, run))


def architecture_conflicts(cfg: TrainConfig, init: InitSource) -> list[str]:
    """The architecture fields ``cfg`` sets to something other than the init model's (an
    input field that followed the model, ``auto``, counts as unset)."""
    defaults = {p.name: p.default for p in params_of(TrainConfig)}
    return [f"{name}={cfg.param(name)!r} (it has {init.config.param(name)!r})"
            for name in ARCHITECTURE if name not in cfg.data.auto_input
            and cfg.param(name) not in (defaults[name], init.config.param(name))]


def apply_init(cfg: TrainConfig) -> tuple[InitSource | None, tuple[str, ...]]:
    """With ``cfg.model.init``: set the init model's architecture on ``cfg`` (the fields left at
    their defaults take its values; any other value must agree) and return the source and
    the fields it changed. A conflict is an error that names each field."""
    if not cfg.model.init:
        return None, ()
    init = resolve_init(cfg.model.init)
    conflicts = architecture_conflicts(cfg, init)
    if conflicts:
        raise ValueError(f"init={cfg.model.init} is a {init.config.model.name} model; it cannot "
                         f"start a run with {', '.join(conflicts)}: leave those unset")
    changed = tuple(n for n in ARCHITECTURE if cfg.param(n) != init.config.param(n))
    for name in changed:
        cfg.set_param(name, init.config.param(name))
    if changed:
        log.info("init=%s: %s from that model", cfg.model.init,
                 ", ".join(f"{n}={cfg.param(n)}" for n in changed))
    return init, changed


@dataclass
class Start:
    """A run's starting weights (none: from scratch) and the preprocessing they come with."""

    weights: PretrainedWeights | None = None
    init: InitSource | None = None
    init_state: dict[str, torch.Tensor] = field(default_factory=dict)
    init_preprocessing: Preprocessing | None = None
    init_licence: str | None = None  # of the weights the init model started from

    @property
    def licence(self) -> str | None:
        """The licence of the starting weights, as their source states it (None: unstated)."""
        return self.weights.licence if self.weights is not None else self.init_licence

    def preprocessing_for(self, channels: int) -> WeightsPreprocessing | None:
        """The mean, std and interpolation the starting weights were trained with (None: no
        starting weights, or an init model that recorded none)."""
        if self.weights is not None:
            return self.weights.preprocessing_for(channels)
        pre = self.init_preprocessing
        if pre is None:
            return None
        return WeightsPreprocessing(mean=pre.mean, std=pre.std, interpolation=pre.interpolation)

    def apply(self, model: EmbeddingModel) -> None:
        """Copy the init model's backbone and neck weights into ``model`` (all of them:
        the architecture is the same)."""
        if not self.init_state:
            return
        result = model.load_state_dict(self.init_state, strict=False)
        missing = [k for k in result.missing_keys if k.startswith(CARRIED)]
        if missing or result.unexpected_keys:
            raise ValueError(f"init={self.init.uri} does not fit the model built from its own "
                             f"config (missing {missing[:3]}, unexpected "
                             f"{result.unexpected_keys[:3]}): was it trained with another zoo "
                             "version?")
        log.info("started from %s: %d tensors of its backbone and neck", self.init.describe(),
                 len(self.init_state))
        if self.init_licence:
            model.record = model.record.with_(lineage=dataclasses.replace(
                model.record.lineage, licence=self.init_licence))

    def tags(self) -> dict[str, str]:
        licence = {names.PRETRAINED_LICENCE_TAG: self.licence} if self.licence else {}
        if self.weights is not None:
            return {names.PRETRAINED_SOURCE_TAG: self.weights.source,
                    names.PRETRAINED_SHA256_TAG: self.weights.sha256, **licence}
        if self.init is not None:
            source = self.init.source
            tags = {names.INIT_TAG: self.init.uri, names.INIT_RUN_TAG: source.run_id}
            if source.version is not None:
                tags[names.INIT_VERSION_TAG] = f"{source.version.name}/{source.version.version}"
            return {**tags, **licence}
        return {}

    def log(self) -> None:
        """Tags, the load report, and MLflow's lineage from the init model."""
        mlflow.set_tags(self.tags())
        if self.weights is not None:
            mlflow.log_dict({"source": self.weights.source, "sha256": self.weights.sha256,
                             "architecture": self.weights.architecture,
                             **self.weights.report.to_dict()}, names.LOAD_REPORT_ARTIFACT)
        if self.init is not None:
            model_id = logged_model_id(self.init.source)
            if model_id:
                from mlflow.entities import LoggedModelInput

                try:
                    mlflow.log_input(model=LoggedModelInput(model_id))
                except Exception as exc:  # noqa: BLE001 - lineage is a convenience
                    log.warning("could not record %s as the run's input model: %s", model_id, exc)


def logged_model_id(source: ModelSource) -> str | None:
    """The MLflow 3 logged model behind a registry version or ``models:/m-...`` URI."""
    uri = source.uri
    if source.version is not None:
        if getattr(source.version, "model_id", None):
            return source.version.model_id
        uri = source.version.source or ""
    return uri[len("models:/"):] if uri.startswith("models:/m-") else None


def resolve_start(cfg: TrainConfig, init: InitSource | None = None) -> Start:
    """Load what ``cfg.model.pretrained`` or ``cfg.model.init`` names (``init``: already resolved by
    ``apply_init``), and fill ``cfg.data.mean``/``std``/``interpolation`` from it where unset."""
    start = Start()
    own_reader = own_weights_reader(cfg.model.name) if cfg.model.pretrained else None
    if own_reader is not None:  # a family that reads its own published weights
        start.weights = own_reader(cfg.model.pretrained, in_chans=cfg.data.channels,
                                   image_size=cfg.data.image_size,
                                   embedding_dim=cfg.model.embedding_dim)
    elif cfg.model.pretrained:
        if not is_timm_backed(cfg.model.name):
            raise ValueError(f"pretrained={cfg.model.pretrained} loads timm weights into one timm "
                             f"backbone; {cfg.model.name!r} is not one (use a curated image model "
                             "or timm/<name>, or start from a zoo model with init=<model uri>)")
        start.weights = resolve_weights(
            timm_name_of(cfg.model.name), cfg.model.pretrained, in_chans=cfg.data.channels,
            image_size=cfg.data.image_size, candidates=(*CURATED_IMAGE_MODELS, *MORE_IMAGE_MODELS),
            **{k: cfg.param(k) for k in ("act_layer", "norm_layer") if cfg.param(k)})
    elif cfg.model.init:
        init = init or apply_init(cfg)[0]
        # the version resolved above, even if its alias moves meanwhile
        model = load_pytorch_model(init.source.load_uri, f"init model {init.describe()}",
                                   artifact_location(init.source))
        start.init = init
        start.init_state = {k: v for k, v in model.state_dict().items() if k.startswith(CARRIED)}
        start.init_preprocessing = model.record.preprocessing
        start.init_licence = model.record.lineage.licence
    if start.weights is not None or start.init is not None:
        own = start.preprocessing_for(cfg.data.channels)
        if own is not None and cfg.data.mean is None:
            cfg.data.mean = ",".join(f"{v:.6g}" for v in own.mean)
            cfg.data.std = ",".join(f"{v:.6g}" for v in own.std)
        if own is not None and cfg.data.interpolation is None:
            cfg.data.interpolation = own.interpolation
    return start
