"""Which runtime answers faster for one model on this machine: ONNX Runtime or PyTorch.

ONNX Runtime is not always the faster one: resnet18 at 112 px, batch 1, ran 2.9x eager
PyTorch on two cores, convnext_atto at batch 64 0.93x (bench/export_speed.py). So each
export times both, at batch 1 (a lone request's latency) and batch 64 (a busy server's
batches), with the threads one server worker gets, and records the result on the model
version; the server then runs the faster one unless ``ZOO_RUNTIME`` says otherwise.

Both sides run the same float32 input; the runtimes take turns within each round, and each
figure is the best of its rounds, so a machine's drift from minute to minute (20-30 % here)
does not decide the choice.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

ONNXRUNTIME, PYTORCH = "onnxruntime", "pytorch"
RUNTIMES = (ONNXRUNTIME, PYTORCH)
TIMED_BATCHES = (1, 64)


def auto_workers(device: str = "auto") -> int:
    """Server workers when ``ZOO_WORKERS`` is not set: one per core up to 4 on CPU, one
    with a GPU (the serving default, shared with the timing so both see the same threads)."""
    if device != "cpu" and torch.cuda.is_available():
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0))))


def worker_threads(workers: int = 0, device: str = "auto") -> int:
    """Intra-op threads of one server worker: the cores shared among the workers."""
    return max(1, len(os.sched_getaffinity(0)) // (workers or auto_workers(device)))


@dataclass
class RuntimeTiming:
    """Milliseconds per batch of each runtime at each timed batch size, and where."""

    ms: dict[str, dict[str, float]]  # runtime -> batch size (as text: JSON keys) -> ms
    threads: int
    machine: str

    def cost(self, runtime: str) -> float:
        """The geometric mean of the per-image times over the batch sizes: latency and
        throughput weigh the same."""
        times = [ms / int(batch) for batch, ms in self.ms[runtime].items()]
        return math.exp(sum(math.log(t) for t in times) / len(times))

    @property
    def faster(self) -> str:
        return min(self.ms, key=self.cost)

    def speedup(self) -> float:
        """How many times faster the faster runtime is than the other (>= 1)."""
        costs = sorted(self.cost(r) for r in self.ms)
        return costs[-1] / costs[0] if len(costs) > 1 else 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RuntimeTiming":
        d = json.loads(text)
        return cls({r: {str(b): float(v) for b, v in m.items()} for r, m in d["ms"].items()},
                   int(d["threads"]), str(d["machine"]))

    def summary(self) -> str:
        batches = list(next(iter(self.ms.values())))
        lines = [f"runtime timing ({self.threads} thread(s), {self.machine}), ms per batch:",
                 "  runtime      " + "".join(f"{'batch ' + b:>12}" for b in batches)]
        for runtime, ms in self.ms.items():
            lines.append(f"  {runtime:<12} " + "".join(f"{ms[b]:>12.2f}" for b in batches))
        lines.append(f"  faster: {self.faster} ({self.speedup():.2f}x)")
        return "\n".join(lines)


def machine() -> str:
    """What the figures were measured on (they hold for that kind of machine only)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores{gpu}"


def _best_ms(run: Callable[[], object], min_seconds: float) -> float:
    """The fastest of repeated calls (after one warm-up), repeated for ``min_seconds``."""
    run()
    best, start = math.inf, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start >= min_seconds:
            return best * 1000


def time_runtimes(onnx_path: str | Path, module: torch.nn.Module,
                  input_shape: tuple[int, ...], threads: int | None = None,
                  rounds: int = 2, min_seconds: float = 0.05,
                  batches: tuple[int, ...] = TIMED_BATCHES) -> RuntimeTiming:
    """ONNX Runtime (the exported file) and eager PyTorch (``module``) on the same random
    batches of ``input_shape``, with ``threads`` intra-op threads (default: one server
    worker's share), on the device a server here would use."""
    from zoo.export.onnx_runtime import onnx_session, session_options

    threads = threads or worker_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    session = onnx_session(str(onnx_path), "auto", threads,
                           options=session_options(threads, spin=False))
    name = session.get_inputs()[0].name
    module = module.to(device).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *input_shape)).astype(np.float32) for b in batches}
    tensors = {b: torch.from_numpy(x).to(device) for b, x in inputs.items()}

    def eager(batch: int) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                out = module(tensors[batch])
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    ms: dict[str, dict[str, float]] = {r: {str(b): math.inf for b in batches} for r in RUNTIMES}
    try:
        for _ in range(rounds):
            for b in batches:
                ms[ONNXRUNTIME][str(b)] = min(ms[ONNXRUNTIME][str(b)], _best_ms(
                    lambda b=b: session.run(None, {name: inputs[b]}), min_seconds))
                ms[PYTORCH][str(b)] = min(ms[PYTORCH][str(b)], _best_ms(eager(b), min_seconds))
    finally:
        torch.set_num_threads(previous)
        module.cpu()
    timing = RuntimeTiming(ms, threads, machine())
    log.info("%s", timing.summary())
    return timing
