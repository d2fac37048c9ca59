"""Export an ``EmbeddingModel`` to ONNX, TorchScript and a ``torch.export`` program, and
check that each answers like the eager model.

Every format has the same inputs and outputs as the eager model (one float32 batch in,
``embedding`` and ``logits`` out, dynamic batch) and carries the model's preprocessing and
class names, so a server needs nothing else. ``zoo.export`` knows nothing of MLflow;
``training.pipeline.export`` logs the files and the parity figures.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Name → the submodule that defines it. Imported on first use: loading a traced model
#: (``zoo.pyfunc``, through ``zoo.export.torchscript_format``) needs neither onnx nor
#: ONNX Runtime, which take a second to import.
_WHERE = {
    "ExportFailure": "errors", "FORMATS": "formats", "ExportedFile": "formats",
    "export_format": "formats", "load_exported": "formats", "Parity": "parity",
    "ParityThresholds": "parity", "measure_parity": "parity", "onnx_providers": "onnx_runtime",
    "onnx_session": "onnx_runtime", "session_options": "onnx_runtime",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'zoo.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"zoo.export.{_WHERE[name]}"), name)
