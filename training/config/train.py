"""``TrainConfig``: one model × loss run, composed of its parts.

Every parameter has one flat name, the same on the command line, in ``MLproject`` and among
the MLflow run's parameters (``lr``, ``data``, ``model``); in code it is read from its part
(``cfg.optim.lr``, ``cfg.data.source``, ``cfg.model.name``). ``TrainConfig.of(**params)``
and ``TrainConfig.from_dict(strings)`` build one from flat parameters and apply its preset;
``cfg.replace(**params)`` changes some and applies nothing again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from training.config.params import (Param, assemble, build, check_choices, flat_values,
                                    get_param, option, params_of, parse_params, part,
                                    preset_skip, to_strings)
from training.config.parts import (DataConfig, LossConfig, ModelConfig, OptimConfig,
                                   ExecutionConfig, TrackingConfig)
from training.presets import preset_fields, preset_names
from zoo.names import RESOLVED_PREFIX
from zoo.values import unquote

#: The parameters that decide which samples are test samples (and which classes are unseen).
SPLIT_FIELDS = ("data", "seed", "val_fraction", "test_fraction", "open_set", "label_column")


def one_process_per_run(train: "TrainConfig", why: str) -> None:
    """Refuse ``nproc`` > 1 for commands whose runs train in one process each (``why``)."""
    if train.execution.nproc > 1:
        raise ValueError(f"nproc={train.execution.nproc} is for single runs (-e train); {why}")


def _param(cls: type, name: str) -> Param:
    for param in params_of(cls):
        if param.name == name:
            return param
    raise KeyError(f"{cls.__name__} has no parameter {name!r}")


class FlatParams:
    """Flat-parameter access shared by every config that has parameters."""

    #: Whose parameters these are, in error messages ("unknown sweep parameter(s): ...").
    WHAT: ClassVar[str] = "config"

    @classmethod
    def of(cls, **params: Any) -> Any:
        """Built from flat parameters, typed or strings; the preset applied."""
        return cls.from_dict(params)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Built from CLI / MLproject strings; unknown names are an error that names them."""
        return build(cls, values, cls.WHAT)

    def params(self) -> dict[str, Any]:
        """``{parameter name: value}``."""
        return flat_values(self)

    def to_params(self) -> dict[str, str]:
        """Every parameter as an MLflow parameter string (None as ``auto``)."""
        return to_strings(self.params())

    def param(self, name: str) -> Any:
        """The value of one parameter, by its flat name."""
        return get_param(self, _param(type(self), name))

    def set_param(self, name: str, value: Any) -> None:
        """Set one parameter in place (a value already checked, e.g. an init model's)."""
        param = _param(type(self), name)
        owner = self
        for attr in param.path[:-1]:
            owner = getattr(owner, attr)
        setattr(owner, param.path[-1], value)

    @property
    def preset_changed(self) -> tuple[str, ...]:
        """The parameters whose value the preset set (``training.presets.preset_fields``)."""
        params = self.params()
        if "preset" not in params:
            return ()
        defaults = {p.name: p.default for p in params_of(type(self))}
        return preset_fields(params, defaults, skip=preset_skip(type(self)))

    def replace(self, **params: Any) -> Any:
        """This config with some parameters changed; the preset is not applied again (it
        would overwrite changes that happen to equal a default)."""
        return assemble(type(self), parse_params(type(self), params, self.WHAT), base=self)


@dataclass
class TrainConfig(FlatParams):
    """One model × loss training run."""

    WHAT = "training"

    preset: str = option("none", "a named recipe that fills in the parameters left at their "
                                 "defaults (docs/results.md)", preset_names())
    data: DataConfig = part(DataConfig)
    model: ModelConfig = part(ModelConfig)
    loss: LossConfig = part(LossConfig)
    optim: OptimConfig = part(OptimConfig)
    execution: ExecutionConfig = part(ExecutionConfig)
    tracking: TrackingConfig = part(TrackingConfig)

    def __post_init__(self) -> None:
        check_choices(self)
        self.data.resolve_input(self.model.name)
        self.optim.resolve_fine_tuning(self.fine_tuning)

    def replace(self, **params: Any) -> "TrainConfig":
        """As ``FlatParams.replace``; the input fields that followed the model (``auto``) and
        are not given follow the new model or data again (a sweep's children)."""
        auto = {name: "auto" for name in self.data.auto_input if name not in params}
        return super().replace(**auto, **params)

    @property
    def fine_tuning(self) -> bool:
        """Whether the run starts from trained weights (pretrained or init)."""
        return self.model.fine_tuning

    @property
    def training_seed(self) -> int:
        """What seeds the weights, batches and augmentation (not the split)."""
        return self.data.seed if self.execution.init_seed is None else self.execution.init_seed

    @classmethod
    def from_recipe(cls, values: dict[str, Any]) -> "TrainConfig":
        """Exactly the config whose ``params()`` these are (a model's recorded recipe, or a
        run's parameters): the preset is named, not applied again; unknown names (a
        parameter since removed) are ignored."""
        known = {p.name for p in params_of(cls)}
        values = {k: v for k, v in values.items() if k in known}
        return cls.from_dict({**values, "preset": "none"}).replace(
            preset=values.get("preset", "none"))

    @classmethod
    def from_run(cls, params: dict[str, str], tags: dict[str, str]) -> "TrainConfig":
        """The config a run was trained with, from its parameters and its
        ``names.resolved_tag(<param>)`` tags (what ``auto`` or a preset made of a parameter that
        ``mlflow run`` had logged). For resuming a run, and for models logged before they
        carried their recipe."""
        values = {k: unquote(v) for k, v in params.items()}  # as mlflow run logged them
        values.update({k[len(RESOLVED_PREFIX):]: v for k, v in tags.items()
                       if k.startswith(RESOLVED_PREFIX)})
        return cls.from_recipe(values)
