"""What runs the model in a server worker: ONNX Runtime or eager PyTorch, one interface.

The export times both for each version (``zoo.export.runtime_timing``) and tags the
faster; ``ZOO_RUNTIME`` (``auto``, ``onnxruntime`` or ``pytorch``) overrides it. Either one
answers with what the export checked for parity: the ONNX file against eager PyTorch on the
test split, and the PyTorch module rebuilt from the exported weights (never unpickled)
against the trained one.
"""
from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from zoo.export.bundle import Bundle
from zoo.export import onnx_session, session_options
from zoo.export.runtime_timing import ONNXRUNTIME, PYTORCH, RUNTIMES

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
OUTPUTS = ("embedding", "logits")


class Runtime(Protocol):
    name: str
    output_names: list[str]
    embedding_dim: int

    def __call__(self, x: np.ndarray) -> Outputs: ...

    def describe(self) -> list[str]: ...


class OnnxRuntime:
    """The exported ``model.onnx`` in an ONNX Runtime session."""

    name = ONNXRUNTIME

    def __init__(self, bundle: Bundle, device: str, threads: int, spin: bool) -> None:
        self.session = onnx_session(bundle.onnx_path, device, threads,
                                    options=session_options(threads, spin=spin))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.embedding_dim = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, x: np.ndarray) -> Outputs:
        return dict(zip(self.output_names, self.session.run(self.output_names,
                                                            {self.input_name: x})))

    def describe(self) -> list[str]:
        return self.session.get_providers()


class TorchRuntime:
    """The eager module rebuilt from the exported recipe and safetensors weights."""

    name = PYTORCH

    def __init__(self, bundle: Bundle, device: str, threads: int) -> None:
        self.device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available()
                                   else "cpu")
        self.module = bundle.load_pytorch().to(self.device).eval()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            probe = self.module(torch.zeros((1, *bundle.info.record.input_size),
                                            device=self.device))
        self.output_names = [k for k in OUTPUTS if k in probe]
        self.embedding_dim = int(probe["embedding"].shape[-1])

    def __call__(self, x: np.ndarray) -> Outputs:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device, non_blocking=True))
        return {k: out[k].float().cpu().numpy() for k in self.output_names}

    def describe(self) -> list[str]:
        return [f"torch {torch.__version__} ({self.device.type})"]


def chosen_runtime(setting: str, bundle: Bundle) -> str:
    """``ZOO_RUNTIME`` when it names one, else what the export timed as faster, else ONNX
    Runtime (a version exported before runtimes were timed)."""
    setting = (setting or "auto").strip().lower()
    if setting != "auto":
        if setting not in RUNTIMES:
            raise ValueError(f"ZOO_RUNTIME={setting!r}: choose auto, {' or '.join(RUNTIMES)}")
        return setting
    return bundle.info.runtime if bundle.info.runtime in RUNTIMES else ONNXRUNTIME


def open_runtime(bundle: Bundle, setting: str, device: str, threads: int,
                 spin: bool) -> Runtime:
    """The runtime a worker serves with; an automatic choice of PyTorch falls back to ONNX
    Runtime (with a warning) when the version has no rebuildable weights."""
    name = chosen_runtime(setting, bundle)
    if name == PYTORCH:
        try:
            return TorchRuntime(bundle, device, threads)
        except (LookupError, ValueError) as exc:
            if (setting or "auto").strip().lower() != "auto":
                raise ValueError(f"ZOO_RUNTIME=pytorch: {exc}") from None
            log.warning("serving with ONNX Runtime: %s", exc)
    return OnnxRuntime(bundle, device, threads, spin)
