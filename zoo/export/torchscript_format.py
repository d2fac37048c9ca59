"""TorchScript (deprecated since PyTorch 2.11 in favour of ``torch.export``, still asked for).

The model is traced, not scripted: timm models trace cleanly and the trace keeps the dict
output. ``torch.jit.trace``'s own check re-traces and compares graphs, which fails on
harmless differences (FT-Transformer's attention); the parity check on real data replaces it.
Trace warnings (a tensor turned into a Python value) are kept and reported, since they are
the usual cause of a trace that only fits its example.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from zoo import names
from zoo.record import ModelRecord, record_from_json, record_to_json

log = logging.getLogger(__name__)


def export_torchscript(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval mode) on ``example``; returns the traced module."""
    return attempt_torchscript(model, (example,), {})


def attempt_torchscript(module: nn.Module, args: tuple, kwargs: dict) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)  # the deprecation notice
        if kwargs and not args:
            traced = torch.jit.trace(module, example_kwarg_inputs=kwargs, strict=False,
                                     check_trace=False)
        else:
            traced = torch.jit.trace(module, args, strict=False, check_trace=False)
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            log.warning("TorchScript trace: %s", str(warning.message).splitlines()[0])
    return traced


def save_torchscript(module: torch.jit.ScriptModule, path: Path,
                     record: ModelRecord | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice
        torch.jit.save(module, str(path), _extra_files={names.RECORD_FILE: record_to_json(record)})


def load_torchscript(path: Path,
                     device: str = "cpu") -> tuple[torch.jit.ScriptModule, ModelRecord | None]:
    """The traced module (eval mode) and the model record saved with it."""
    extra = {names.RECORD_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    return module.eval(), record_from_json(extra[names.RECORD_FILE])
