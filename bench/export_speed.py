"""Eager PyTorch vs TorchScript vs ONNX Runtime, measured side by side on the same inputs.

For each curated image model at each input size: latency at batch 1 (median of repeated
calls) and throughput at batch 64 (images/s), each printed as a ratio to eager PyTorch.
ONNX Runtime runs twice: on an opset-18 file with plain ``SessionOptions()`` (what a
straightforward export gives) and on the zoo's export (opset 20) with ``session_options()``
(what the server uses), so the table shows what the choices buy.

The runtimes take turns in blocks of calls, several rounds each, with a pause between
blocks: this machine's speed drifts by tens of percent over a minute, and ONNX Runtime's
spinning threads would slow whatever runs right after them.

    python bench/export_speed.py                     # all curated models, 32 and 112 px
    python bench/export_speed.py --models resnet18 --sizes 64 --markdown
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from zoo.export import export_format, onnx_providers, session_options
from zoo.export.onnx_format import MIN_OPSET
from zoo.export.torchscript_format import load_torchscript
from zoo.models import CURATED_IMAGE_MODELS, create_model

Call = Callable[[np.ndarray], object]


@dataclass
class Row:
    model: str
    size: int
    latency_ms: dict[str, float]  # runtime → median ms at batch 1
    throughput: dict[str, float]  # runtime → images/s at batch 64


def interleaved_medians(calls: dict[str, Call], x: np.ndarray, rounds: int, block: int
                        ) -> dict[str, float]:
    """Median seconds per call of each runtime, the runtimes taking turns in blocks."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():  # warm-up: allocations, prepacking, oneDNN primitive caches
        fn(x)
        fn(x)
    for _ in range(rounds):
        for name, fn in calls.items():
            time.sleep(0.05)  # let the previous runtime's spinning threads go idle
            fn(x)
            for _ in range(block):
                started = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def runtimes(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> dict[str, Call]:
    """name → a callable on a float32 NumPy batch, for every runtime compared."""
    onnx_path = export_format("onnx", model, example, folder).path
    plain_folder = folder / "opset18"
    plain_folder.mkdir()
    plain_path = export_format("onnx", model, example, plain_folder, opset=MIN_OPSET).path
    ts_path = export_format("torchscript", model, example, folder).path
    traced, _ = load_torchscript(ts_path)

    def torch_call(module: torch.nn.Module) -> Call:
        def call(x: np.ndarray) -> object:
            with torch.inference_mode():
                return module(torch.from_numpy(x))
        return call

    providers = onnx_providers("cpu")
    plain = ort.InferenceSession(str(plain_path), providers=providers)
    tuned = ort.InferenceSession(str(onnx_path), sess_options=session_options(),
                                 providers=providers)
    return {
        "eager": torch_call(model),
        "torchscript": torch_call(traced),
        "ort_plain": lambda x: plain.run(None, {"input": x}),
        "ort_zoo": lambda x: tuned.run(None, {"input": x}),
    }


def measure(name: str, size: int, batch: int, rounds: int) -> Row:
    torch.manual_seed(0)
    model = create_model(name, 10, 128, image_size=size).eval()
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    many = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        calls = runtimes(model, torch.from_numpy(many[:2]), Path(tmp))
        single = interleaved_medians(calls, one, rounds, block=15)
        batched = interleaved_medians(calls, many, rounds, block=2)
    return Row(name, size, {k: 1e3 * v for k, v in single.items()},
               {k: batch / v for k, v in batched.items()})


def table(rows: list[Row], batch: int, markdown: bool) -> str:
    others = ("torchscript", "ort_plain", "ort_zoo")
    head = (["model", "px", "eager b1 ms"] + [f"{o} b1 ×" for o in others]
            + [f"eager b{batch} img/s"] + [f"{o} b{batch} ×" for o in others])
    lines = []
    for r in rows:
        lines.append([r.model, str(r.size), f"{r.latency_ms['eager']:.2f}"]
                     + [f"{r.latency_ms['eager'] / r.latency_ms[o]:.2f}" for o in others]
                     + [f"{r.throughput['eager']:.0f}"]
                     + [f"{r.throughput[o] / r.throughput['eager']:.2f}" for o in others])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CURATED_IMAGE_MODELS))
    parser.add_argument("--sizes", default="32,112")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size")
    parser.add_argument("--rounds", type=int, default=4,
                        help="turns each runtime takes at each batch size")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(name.strip(), size, args.batch, args.rounds))
            print(f"measured {name} at {size} px", flush=True)
    print(f"\ntorch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{ort.__version__}; ratios are speed relative to eager PyTorch (higher is faster);\n"
          "ort_plain: opset 18, SessionOptions(); ort_zoo: the zoo's export and session options\n")
    print(table(rows, args.batch, args.markdown))


if __name__ == "__main__":
    main()
