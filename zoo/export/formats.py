"""One interface over the three export formats: export a model to a file, load it back as
a callable that maps a float32 batch to ``{"embedding", "logits"}`` NumPy arrays."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from zoo import names
from zoo.export import onnx_format, program_format, torchscript_format
from zoo.export.errors import explain
from zoo.export.onnx_runtime import onnx_session
from zoo.record import ModelRecord, record_of

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "pt2")
FILE_NAMES = {"onnx": names.ONNX_FILE, "torchscript": names.TORCHSCRIPT_FILE,
              "pt2": names.PROGRAM_FILE}


@dataclass(frozen=True)
class ExportedFile:
    """One exported file and how long it took."""

    format: str
    path: Path
    seconds: float
    size_mb: float


class Runner(Protocol):
    """A loaded model of any format."""

    record: ModelRecord | None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


class TorchRunner:
    """An eager, traced or exported torch module on one device, without autograd."""

    def __init__(self, module: Any, record: ModelRecord | None, device: str = "cpu") -> None:
        self.module, self.record, self.device = module, record, torch.device(device)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.as_tensor(x, device=self.device))
        return {k: v.float().cpu().numpy() for k, v in out.items() if k in ("embedding", "logits")}


class OnnxRunner:
    """An ONNX Runtime session with the outputs named like the eager model's."""

    def __init__(self, path: Path, device: str = "auto", threads: int = 0) -> None:
        self.session = onnx_session(path, device=device, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.record = onnx_format.read_record(path)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outputs))


def eager_runner(model: nn.Module, device: str = "cpu") -> TorchRunner:
    return TorchRunner(model.to(device).eval(), record_of(model), device)


def example_batch(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """``size`` real inputs (repeated when fewer): a batch of one would fix the batch axis."""
    if len(x) == 0:
        raise ValueError("export needs at least one example input")
    index = torch.arange(size) % len(x)
    return x[index].float().contiguous()


def export_format(fmt: str, model: nn.Module, example: torch.Tensor, folder: Path,
                  *, opset: int = onnx_format.DEFAULT_OPSET,
                  program: torch.export.ExportedProgram | None = None) -> ExportedFile:
    """Export ``model`` (moved to CPU, eval mode) as ``fmt`` into ``folder``.

    ``program`` reuses an already exported ``torch.export`` program (the ``pt2`` format's,
    which also locates ONNX conversion failures). Failures raise :class:`ExportFailure`
    naming the operator and module at fault.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model = copy.deepcopy(model).cpu().eval()
    example = example_batch(example)
    record = record_of(model)
    path = Path(folder) / FILE_NAMES[fmt]
    started = time.perf_counter()
    with torch.no_grad():
        outputs = [k for k in ("embedding", "logits") if k in model(example)]
    try:
        if fmt == "pt2":
            program_format.save_program(program or program_format.export_program(model, example),
                                        path, record)
        elif fmt == "torchscript":
            traced = torchscript_format.export_torchscript(model, example)
            torchscript_format.save_torchscript(traced, path, record)
        else:
            onnx_format.export_onnx(model, example, path, record, outputs, opset)
    except Exception as exc:  # explained below
        path.unlink(missing_ok=True)
        attempt = (torchscript_format.attempt_torchscript if fmt == "torchscript"
                   else program_format.attempt_program)
        raise explain(fmt, exc, model, example, attempt, program,
                      make_program=lambda: program_format.export_program(model, example)) from exc
    seconds = time.perf_counter() - started
    size_mb = path.stat().st_size / 2**20
    log.info("exported %s in %.1f s (%.1f MB)", path.name, seconds, size_mb)
    return ExportedFile(fmt, path, seconds, size_mb)


def load_exported(fmt: str, path: Path, device: str = "cpu", threads: int = 0) -> Runner:
    """Load an exported file back as a :class:`Runner`."""
    if fmt == "onnx":
        return OnnxRunner(path, device=device, threads=threads)
    if fmt == "torchscript":
        module, record = torchscript_format.load_torchscript(path, device)
        return TorchRunner(module, record, device)
    if fmt == "pt2":
        module, record = program_format.load_program(path)
        return TorchRunner(module.to(device), record, device)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
