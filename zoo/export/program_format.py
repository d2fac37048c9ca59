"""``torch.export`` programs (``.pt2``): PyTorch's successor to TorchScript.

The program is exported with a dynamic batch dimension from a real batch of at least two
(a batch of one specialises the dimension to 1) and loads back as a module that returns the
same ``{"embedding", "logits"}`` dict as the eager model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import names
from zoo.record import ModelRecord, record_from_json, record_to_json


def batch_dim() -> Any:
    return torch.export.Dim("batch")


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Trace ``model`` (eval mode) with the batch dimension left dynamic."""
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch_dim()},),
                               strict=False)


def attempt_program(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Export one submodule with the inputs it receives (for locating a failure)."""
    batch = (args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim()
             else None)
    dynamic = None
    if batch is not None and not kwargs:
        dim = batch_dim()
        dynamic = tuple({0: dim} if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch
                        else None for a in args)
    torch.export.export(module, args, kwargs or None, dynamic_shapes=dynamic, strict=False)


def save_program(program: torch.export.ExportedProgram, path: Path,
                 record: ModelRecord | None) -> None:
    torch.export.save(program, str(path), extra_files={names.RECORD_FILE: record_to_json(record)})


def load_program(path: Path) -> tuple[nn.Module, ModelRecord | None]:
    """The program's callable module and the model record saved with it."""
    extra = {names.RECORD_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), record_from_json(extra[names.RECORD_FILE])
