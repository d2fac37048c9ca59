"""ONNX through the ``torch.export``-based exporter (``dynamo=True``, the only one since 2.9).

The file has one input ``input`` with a dynamic ``batch`` axis, outputs ``embedding`` and
``logits``, and the model's preprocessing, class names and zoo metadata as JSON strings in
its ``metadata_props``, so ONNX Runtime alone can serve it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from zoo import names
from zoo.export.program_format import batch_dim
from zoo.quiet import quiet_loggers
from zoo.record import ModelRecord

log = logging.getLogger(__name__)

MIN_OPSET = 18
# Opset 20 has a Gelu operator: at 18 GELU is exported as Erf arithmetic that ONNX Runtime
# does not fuse, and convnext_atto ran 1.4x slower (bench/export_speed.py).
DEFAULT_OPSET = 20
INPUT_NAME = "input"
BATCH_AXIS = "batch"
METADATA_KEYS = ("preprocessing", "class_names", names.RECORD_KEY)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: ModelRecord | None,
                output_names: list[str], opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` to ``path`` as a single-file ONNX model with zoo metadata."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be {MIN_OPSET} or newer, got {opset}")
    # The exporter prints its progress ("[torch.onnx] Obtain model graph ...") to stdout and
    # its optimiser logs every pass at INFO.
    with contextlib.redirect_stdout(io.StringIO()), \
            quiet_loggers("onnx_ir", "onnxscript", level=logging.WARNING):
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=output_names,
            dynamic_shapes=({0: batch_dim()},), opset_version=opset, optimize=True,
            verbose=False, report=False,
        )
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    _name_batch_axis(proto)
    _set_metadata(proto, record)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _name_batch_axis(proto: onnx.ModelProto) -> None:
    """The exporter names the batch axis after a symbol (``s77``): call it ``batch``."""
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    symbol = first.dim_param
    if not symbol:
        return
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH_AXIS


def _set_metadata(proto: onnx.ModelProto, record: ModelRecord | None) -> None:
    """The record (``zoo_meta``), and for other ONNX tools its preprocessing and class names
    on their own, as the file's metadata."""
    del proto.metadata_props[:]
    if record is None:
        return
    full = record.to_dict()
    values = {"preprocessing": full["preprocessing"] or {}, "class_names": record.class_names,
              names.RECORD_KEY: full}
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, default=str)
    proto.doc_string = (f"{record.model} trained with {record.loss or '?'} on "
                        f"{record.dataset or '?'} (model-zoo)")


def read_metadata(path: Path) -> dict[str, Any]:
    """The zoo metadata of an ONNX file as JSON (``preprocessing``, ``class_names``,
    ``zoo_meta``); ``read_record`` is the typed form."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props if p.key in METADATA_KEYS}


def read_record(path: Path) -> ModelRecord | None:
    """The model record an ONNX file carries (None for a file the zoo did not write)."""
    data = read_metadata(path).get(names.RECORD_KEY)
    return ModelRecord.from_dict(data) if data else None
