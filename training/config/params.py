"""Flat parameters over composed configs: one name per parameter (the CLI flag, the
``MLproject`` parameter, the MLflow run parameter), mapped onto the field of the part that
holds it. Parsing goes through ``zoo.values`` for every config alike."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Iterator, get_type_hints

from training.presets import apply_preset
from zoo.cli import closest
from zoo.values import base_type, format_value, parse_value

def option(default: Any, help: str, choices: tuple[str, ...] | None = None, *,
           param: str | None = None) -> Any:
    """A config field: its default, its help line, its choices, and its parameter name when
    that is not the field's own (``DataConfig.source`` is the parameter ``data``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "param": param})


def part(cls: type, *, hidden: tuple[str, ...] = (), preset_skip: tuple[str, ...] = (),
         **defaults: Any) -> Any:
    """A field that holds a whole part, whose parameters become the container's: less
    ``hidden`` (set by the container itself, such as a sweep's model and loss per child),
    with the container's own ``defaults``, and with ``preset_skip`` left alone by presets."""
    factory = (lambda: cls.of(**defaults)) if defaults else cls
    return field(default_factory=factory, metadata={
        "part": True, "hidden": hidden, "preset_skip": preset_skip, "defaults": defaults})


def internal(default: Any) -> Any:
    """A field that is state, not a parameter (never on the command line or logged)."""
    return field(default=default, metadata={"internal": True}, repr=False, compare=False)


@dataclass(frozen=True)
class Param:
    """One parameter: where it lives in the config and what it defaults to."""

    name: str
    path: tuple[str, ...]
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None

    @property
    def kind(self) -> Any:
        """The parameter's type less Optional (int, float, bool or str)."""
        return base_type(self.type)


@functools.lru_cache(maxsize=None)
def params_of(cls: type) -> tuple[Param, ...]:
    """Every parameter of a config class, its parts walked in order."""
    out = tuple(_walk(cls, (), {}, ()))
    names = [p.name for p in out]
    assert len(set(names)) == len(names), f"{cls.__name__} repeats a parameter name"
    return out


def _walk(cls: type, path: tuple[str, ...], defaults: dict[str, Any],
          hidden: tuple[str, ...]) -> Iterator[Param]:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.metadata.get("part"):
            yield from _walk(hints[f.name], path + (f.name,),
                             {**f.metadata["defaults"], **defaults},
                             hidden + f.metadata["hidden"])
            continue
        name = f.metadata.get("param") or f.name
        if name not in hidden:
            yield Param(name, path + (f.name,), hints[f.name], defaults.get(name, f.default),
                        f.metadata.get("help", ""), f.metadata.get("choices"))


def preset_skip(cls: type) -> tuple[str, ...]:
    """The parameters a preset leaves alone in ``cls`` (its parts' ``preset_skip``)."""
    return tuple(name for f in dataclasses.fields(cls) if f.metadata.get("part")
                 for name in (*f.metadata["preset_skip"], *f.metadata["hidden"]))


def get_param(config: Any, param: Param) -> Any:
    value = config
    for name in param.path:
        value = getattr(value, name)
    return value


def flat_values(config: Any) -> dict[str, Any]:
    """``{parameter name: value}`` of a config instance."""
    return {p.name: get_param(config, p) for p in params_of(type(config))}


def parse_params(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` (strings or typed) parsed to their parameters' types; unknown names are an
    error that names them (``what``: whose parameters)."""
    params = {p.name: p for p in params_of(cls)}
    unknown = sorted(set(values) - set(params))
    if unknown:
        hints = [f"{name} (did you mean {close}?)" if (close := closest(name, params)) else name
                 for name in unknown]
        raise ValueError(f"unknown {what} parameter(s): {', '.join(hints)}")
    return {k: parse_value(params[k].type, v, k) for k, v in values.items()}


def assemble(cls: type, flat: dict[str, Any], base: Any = None) -> Any:
    """A ``cls`` whose parameters take ``flat``'s values, the others their defaults (or
    ``base``'s values, when given); parts are built the same way, then checked."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            if base is not None:
                kwargs[f.name] = getattr(base, f.name)
            continue
        if f.metadata.get("part"):
            kwargs[f.name] = assemble(hints[f.name], flat,
                                      getattr(base, f.name) if base is not None else None)
            continue
        name = f.metadata.get("param") or f.name
        if name in flat:
            kwargs[f.name] = flat[name]
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def build(cls: type, values: dict[str, Any], what: str) -> Any:
    """A config from flat parameters (the CLI, ``MLproject``, a test's keywords): parsed,
    the container's defaults applied, then its preset (its parts' ``preset_skip`` left alone)."""
    defaults = {p.name: p.default for p in params_of(cls)}
    flat = defaults | parse_params(cls, values, what)
    if "preset" in flat:
        apply_preset(flat, defaults, skip=preset_skip(cls))
    return assemble(cls, flat)


def check_choices(config: Any) -> None:
    """Every field declared with ``choices`` holds one of them; else an error naming both."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            name = f.metadata.get("param") or f.name
            raise ValueError(f"{name}={getattr(config, f.name)!r} is not one of "
                             f"{', '.join(choices)}")


def to_strings(values: dict[str, Any]) -> dict[str, str]:
    return {k: format_value(v) for k, v in values.items()}
