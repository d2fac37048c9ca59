"""ONNX Runtime sessions: the CUDA provider only where a GPU is, tuned CPU options elsewhere.

``onnxruntime-gpu`` carries the CPU provider too, but asking it for CUDA on a machine without
a GPU logs provider errors on every session; so CUDA is requested only when torch sees a
device, after ``onnxruntime.preload_dlls()`` has loaded the CUDA and cuDNN libraries that
torch's wheels bring (no separate CUDA install).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries from torch's nvidia-* wheels, once per process."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21: torch has loaded them already
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - ORT falls back to the system's libraries
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def onnx_providers(device: str = "auto") -> list[Any]:
    """Execution providers for ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` takes CUDA when torch sees a GPU and this onnxruntime has the CUDA provider.
    """
    device = device.strip().lower() or "auto"
    if device == "cpu":
        return [CPU_PROVIDER]
    if device != "auto" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    has_cuda = torch.cuda.is_available() and CUDA_PROVIDER in ort.get_available_providers()
    if not has_cuda:
        if device != "auto":
            raise RuntimeError(
                f"device {device!r} asked for, but "
                + ("torch sees no CUDA device" if not torch.cuda.is_available() else
                   f"this onnxruntime ({ort.__version__}) has no {CUDA_PROVIDER}; "
                   "install onnxruntime-gpu"))
        return [CPU_PROVIDER]
    _preload_cuda_libraries()
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]


def session_options(threads: int = 0, spin: bool = True) -> ort.SessionOptions:
    """Full graph optimisation (with the NCHWc layout that makes convolutions fast on CPU),
    sequential execution, ``threads`` intra-op threads (0: one per physical core).

    ``spin`` keeps idle intra-op threads spinning between calls: batch-1 latency is 20-50 %
    better with it (bench/export_speed.py), at the price of busy cores while a server waits
    for the next request, which slows other work in the same process for a moment.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # errors only: no per-node placement chatter
    return options


def onnx_session(model: str | os.PathLike | bytes, device: str = "auto", threads: int = 0,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An inference session on ``device`` with :func:`session_options`."""
    source = model if isinstance(model, bytes) else str(Path(model))
    providers = onnx_providers(device)
    session = ort.InferenceSession(source, sess_options=options or session_options(threads),
                                   providers=providers)
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if wanted not in session.get_providers():
        log.warning("ONNX Runtime could not use %s; running on %s", wanted,
                    ", ".join(session.get_providers()))
    return session
