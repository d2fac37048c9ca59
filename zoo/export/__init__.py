"""Export an ``EmbeddingModel`` to ONNX, TorchScript and a ``torch.export`` program, and
check that each answers like the eager model.

Every format has the same inputs and outputs as the eager model (one float32 batch in,
``embedding`` and ``logits`` out, dynamic batch) and carries the model's preprocessing and
class names, so a server needs nothing else. ``zoo.export`` knows nothing of MLflow;
``training.export`` logs the files and the parity figures.
"""
from zoo.export.errors import ExportFailure
from zoo.export.formats import FORMATS, ExportedFile, export_format, load_exported
from zoo.export.parity import Parity, ParityThresholds, measure_parity
from zoo.export.runtime import onnx_providers, onnx_session, session_options

__all__ = [
    "FORMATS", "ExportFailure", "ExportedFile", "Parity", "ParityThresholds", "export_format",
    "load_exported", "measure_parity", "onnx_providers", "onnx_session", "session_options",
]
