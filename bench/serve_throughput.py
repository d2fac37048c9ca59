"""The server under load, side by side with raw ONNX Runtime and MLflow's scoring server.

    python bench/serve_throughput.py [--markdown] [--seconds 10] [--baseline REV]

Two cases, each a resnet18 trained for one epoch on digits, registered and exported into a
temporary store (weights do not change speed), loaded by 1, 8, 32 and 64 concurrent
clients sending one image per request:

- compute-bound: 112 px. Raw ONNX Runtime on batches is the limit; the server should reach
  at least 0.8 of it at concurrency 32 (adaptive batching fills the batches). Raw speed is
  measured before and after every server measurement and averaged: this machine's speed
  drifts by 20-30 % from minute to minute.
- HTTP-bound: 32 px, the default. ONNX Runtime is fast; requests/s is set by HTTP handling,
  so the run also sends the image as the raw body (``Content-Type: image/png``) besides
  multipart, and breaks one request's CPU time down (decode, model, JSON, the rest).
  ``--baseline REV`` serves this case with another revision's server too (a temporary git
  worktree, multipart), so what a change gained is measured side by side in one run.

Each case also serves the same registered version with ``mlflow models serve`` (MLflow's
scoring server running the model's pyfunc, base64 images in ``dataframe_split`` JSON, the
same number of workers), what a user of MLflow would otherwise run. Every row prints
p99 / p50 (the target: at most 3).

The load generator runs on the same machine (one asyncio process, pre-built request bodies),
so it takes some of the CPU the servers could use: ratios are a lower bound.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.*


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """``revision`` of this repository in a temporary git worktree, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder),
                    revision], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)


@dataclass
class Load:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    server_cpu: float = math.nan  # CPU seconds of the server's processes meanwhile

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        """The server's CPU per request (all its processes and threads), microseconds: a
        steadier measure than requests/s on a machine whose speed drifts."""
        return self.server_cpu / max(self.requests, 1) * 1e6

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000


def prepare(image_size: int, root: Path) -> dict[str, str]:
    """Train, register and export a resnet18 at ``image_size``; the env a server needs."""
    import mlflow

    from training.config import TrainConfig
    from training.pipeline.export import ExportConfig, export_model
    from training.tracking.registration import register_best, runs_of_experiment
    from training.pipeline.run import train
    from zoo import names

    store = root / f"store-{image_size}"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    cwd = os.getcwd()
    os.chdir(store)
    try:
        experiment = "zoo-digits"
        train(TrainConfig.of(model="resnet18", loss="softmax", data="digits", epochs=1,
                             image_size=image_size, batch_size=64, experiment=experiment))
        register_best(runs_of_experiment(experiment), "test_precision_at_1")
        with contextlib.redirect_stdout(sys.stderr):  # the export's report is not the result
            export_model(ExportConfig(model_uri="models:/zoo-digits@champion", formats="onnx"))
        version = mlflow.MlflowClient().get_model_version_by_alias("zoo-digits", "champion")
        onnx = mlflow.artifacts.download_artifacts(
            f"runs:/{version.run_id}/{names.EXPORT_DIR}/{names.ONNX_FILE}",
            dst_path=str(store / "onnx"))
    finally:
        os.chdir(cwd)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(None)
    return {"MLFLOW_TRACKING_URI": uri, "ZOO_MODEL_URI": "models:/zoo-digits@champion",
            "ZOO_CACHE_DIR": str(store / "cache"), "ZOO_GALLERY_DIR": str(store / "gallery"),
            "onnx": onnx}


def digit_pngs(count: int = 64) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


class Raw:
    """ONNX Runtime alone on batches of 32 (the batches the server forms at 32 clients)."""

    def __init__(self, onnx: str, image_size: int) -> None:
        from zoo.export import onnx_session

        self.session = onnx_session(onnx, "cpu")
        self.x = np.random.default_rng(0).standard_normal((32, 3, image_size, image_size),
                                                          np.float32)
        self.session.run(None, {"input": self.x})

    def measure(self, seconds: float) -> float:
        """Images/s; then a pause, so ONNX Runtime's spinning threads are quiet again."""
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.session.run(None, {"input": self.x})
            done += len(self.x)
        rate = done / (time.perf_counter() - start)
        time.sleep(1.5)
        return rate


def raw_body(png: bytes) -> tuple[bytes, str]:
    return png, "image/png"


def scoring_json(png: bytes) -> tuple[bytes, str]:
    """MLflow's scoring-server input: a DataFrame of one ``image`` column, base64 text."""
    import base64
    import json

    data = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png).decode()]]}}
    return json.dumps(data).encode(), "application/json"


def multipart(image: bytes, content_type: str = "image/png", filename: str = "x.png"
              ) -> tuple[bytes, str]:
    """One image as the ``images`` field of a multipart form: the body and its content type."""
    boundary = "zoo-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode() \
        + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process and all its descendants (a server's workers), or NaN."""
    import psutil

    if pid is None:
        return math.nan
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return math.nan


async def load(url: str, bodies: list[tuple[bytes, str]], concurrency: int,
               seconds: float, route: str = "/embed", server_pid: int | None = None) -> Load:
    """``concurrency`` clients posting ``bodies`` in turn for ``seconds``, after one second
    of warm-up; with ``server_pid``, the server's CPU time over the same span."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + 1.0

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < stop:
            body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            async with session.post(f"{url}{route}", data=body,
                                    headers={"Content-Type": ctype}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(w, session) for w in range(min(concurrency, 4))))  # warm
        latencies.clear()
        errors = 0
        cpu = cpu_seconds(server_pid)
        stop = time.perf_counter() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(client(w, session) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(server_pid) - cpu
    return Load(concurrency, len(latencies), elapsed, latencies, errors, cpu)


def cpu_breakdown(onnx: str, pngs: list[bytes]) -> dict[str, float]:
    """Microseconds of CPU per single-image request spent outside HTTP handling."""
    from serving.inputs.images import images_to_array
    from serving.inputs.uploads import Upload
    from serving.schemas import EmbedResponse
    from serving.settings import ServeSettings
    from zoo.data.preprocessing import normalise, to_unit
    from zoo.export import onnx_session
    from zoo.export.onnx_format import read_record

    pre = read_record(Path(onnx)).pre
    settings, n = ServeSettings(), 2000
    t0 = time.process_time()
    for i in range(n):
        images_to_array([Upload("x.png", pngs[i % len(pngs)])], pre, settings)
    decode = (time.process_time() - t0) / n
    batch = np.concatenate([images_to_array([Upload("", p)], pre, settings)[0]
                            for p in pngs[:32]])
    t0 = time.process_time()
    for _ in range(50):
        x = normalise(to_unit(batch), pre.mean, pre.std).numpy()
    scale = (time.process_time() - t0) / (50 * len(batch))
    session = onnx_session(onnx, "cpu")
    session.run(None, {"input": x})
    t0 = time.process_time()
    for _ in range(20):
        out = session.run(None, {"input": x})
    model = (time.process_time() - t0) / (20 * len(batch))
    del session
    emb = out[0][:1]
    t0 = time.process_time()
    for _ in range(n):
        EmbedResponse(model="zoo-digits", version="1", embeddings=emb.tolist()).model_dump_json()
    answer = (time.process_time() - t0) / n
    return {"decode": decode * 1e6, "scale": scale * 1e6, "model": model * 1e6,
            "json": answer * 1e6}


def serve_case(env: dict[str, str], bodies: list[tuple[bytes, str]], seconds: float,
               concurrencies: list[int], raw: Raw, code: Path = REPO
               ) -> list[tuple[float, Load]]:
    """Each load measured between two raw measurements: (mean raw img/s, load). ``code``:
    the checkout whose server runs (another revision's, for ``--baseline``)."""
    from support.process import Server

    env = {k: v for k, v in env.items() if k != "onnx"}
    with Server("serving.service:ZooService", {**env, "PYTHONPATH": str(code)}, cwd=code) \
            as server:
        return measured(server.url, "/embed", bodies, seconds, concurrencies, raw,
                        server.process.pid)


def measured(url: str, route: str, bodies: list[tuple[bytes, str]], seconds: float,
             concurrencies: list[int], raw: Raw, pid: int) -> list[tuple[float, Load]]:
    asyncio.run(load(url, bodies, 4, 2, route))  # warm up
    before = raw.measure(seconds / 2)
    results = []
    for concurrency in concurrencies:
        result = asyncio.run(load(url, bodies, concurrency, seconds, route, pid))
        time.sleep(1)
        after = raw.measure(seconds / 2)
        results.append(((before + after) / 2, result))
        before = after
    return results


def mlflow_case(env: dict[str, str], pngs: list[bytes], seconds: float,
                concurrencies: list[int], raw: Raw, workers: int) -> list[tuple[float, Load]]:
    """``mlflow models serve`` of the same version, driven the same way."""
    import subprocess

    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from support.process import free_port

    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server starts uvicorn from PATH
    run_env = {**os.environ, "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"],
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m",
                             env["ZOO_MODEL_URI"], "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port), "-w", str(workers)], env=run_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ScoringServerClient("127.0.0.1", port).wait_server_ready(timeout=180,
                                                                 scoring_server_proc=proc)
        return measured(f"http://127.0.0.1:{port}", "/invocations",
                        [scoring_json(p) for p in pngs], seconds, concurrencies, raw, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def summary(rows: list[tuple[int, str, float, Load]], baseline: str | None) -> list[str]:
    """The targets, side by side: p99/p50 of the defaults, the zoo against MLflow's scoring
    server at 32 clients, the raw-body route against multipart (this revision's, and the
    ``baseline`` revision's)."""
    at = {(size, name, r.concurrency): r for size, name, _, r in rows}
    lines = []
    for size in sorted({s for s, *_ in rows}, reverse=True):
        worst = max((r.pct(99) / r.pct(50), c) for (s, n, c), r in at.items()
                    if s == size and n.startswith("default"))
        lines.append(f"{size} px: worst p99/p50 of the zoo's defaults {worst[0]:.1f} "
                     f"(at {worst[1]} clients; target <= 3)")
        ours = at.get((size, "default", 32))
        theirs = next((r for (s, n, c), r in at.items()
                       if s == size and c == 32 and n.startswith("mlflow")), None)
        if ours and theirs:
            lines.append(f"  32 clients: {ours.rps / theirs.rps:.2f}x MLflow's scoring server's "
                         f"requests/s ({ours.rps:.0f} vs {theirs.rps:.0f}; target >= 1.5), p99 "
                         f"{ours.pct(99):.0f} vs {theirs.pct(99):.0f} ms")
        light = at.get((size, "default, raw body", 32))
        if ours and light:
            lines.append("  32 clients: the raw-body route "
                         f"{light.rps / ours.rps:.2f}x multipart's "
                         f"requests/s ({light.rps:.0f} vs {ours.rps:.0f}), "
                         f"{light.cpu_us:.0f} vs {ours.cpu_us:.0f} us of server CPU each")
        before = at.get((size, f"{baseline}, default", 32))
        if before and ours:
            for name, now in (("multipart", ours), ("the raw-body route", light)):
                if now:
                    lines.append(
                        f"  32 clients: {name} {now.rps / before.rps:.2f}x {baseline}'s "
                        f"requests/s ({now.rps:.0f} vs {before.rps:.0f}; target >= 1.5), "
                        f"{now.cpu_us:.0f} vs {before.cpu_us:.0f} us of server CPU each")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also serve the 32 px case with this git revision's server "
                             "(multipart), side by side: what a change gained")
    args = parser.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    pngs = digit_pngs()
    concurrencies = [1, 8, 32, 64]
    multiparts, raws = [multipart(p) for p in pngs], [raw_body(p) for p in pngs]
    rows = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="zoo-serve-bench-"))
        baseline = stack.enter_context(checkout(args.baseline)) if args.baseline else None
        for size in (112, 32):
            print(f"preparing resnet18 at {size} px ...", file=sys.stderr, flush=True)
            env = prepare(size, Path(tmp))
            raw = Raw(env["onnx"], size)
            from serving.settings import ServeSettings

            workers = ServeSettings().worker_count
            cases = [("default", {}, multiparts, REPO),
                     ("1 worker", {"ZOO_WORKERS": "1"}, multiparts, REPO)]
            if size == 32:
                cases.insert(1, ("default, raw body", {}, raws, REPO))
                if baseline is not None:
                    cases.insert(0, (f"{args.baseline}, default", {}, multiparts, baseline))
            for name, extra, bodies, code in cases:
                print(f"  {size} px, {name} ...", file=sys.stderr, flush=True)
                for rate, result in serve_case({**env, **extra}, bodies, args.seconds,
                                               concurrencies, raw, code):
                    rows.append((size, name, rate, result))
            print(f"  {size} px, mlflow models serve ...", file=sys.stderr, flush=True)
            for rate, result in mlflow_case(env, pngs, args.seconds, concurrencies, raw,
                                            workers):
                rows.append((size, f"mlflow models serve ({workers} workers)", rate, result))
            del raw
            if size == 32:
                breakdown = cpu_breakdown(env["onnx"], pngs)
    sep = "|" if args.markdown else " "
    header = ["px", "server", "raw ORT img/s (b32)", "clients", "req/s", "p50 ms", "p99 ms",
              "p99/p50", "server CPU us/req", "errors", "server/raw"]
    lines = [sep.join(header)]
    if args.markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size, name, raw, r in rows:
        cells = [str(size), name, f"{raw:.0f}", str(r.concurrency), f"{r.rps:.0f}",
                 f"{r.pct(50):.1f}", f"{r.pct(99):.1f}", f"{r.pct(99) / r.pct(50):.1f}",
                 f"{r.cpu_us:.0f}", str(r.errors), f"{r.rps / raw:.2f}"]
        lines.append("| " + " | ".join(cells) + " |" if args.markdown else sep.join(cells))
    print("\n".join(lines))
    print()
    for line in summary(rows, args.baseline):
        print(line)
    best32 = max((r.rps for s, n, _, r in rows if s == 32 and n == "default"), default=0)
    if best32:
        cores = len(os.sched_getaffinity(0))
        total = cores / best32 * 1e6
        known = sum(breakdown.values())
        print(f"\n32 px, CPU per request at the best rate ({best32:.0f} req/s on {cores} cores, "
              f"client included): {total:.0f} us")
        for part, us in breakdown.items():
            print(f"  {part:>6}: {us:7.0f} us ({us / total:.0%})")
        print(f"  {'rest':>6}: {total - known:7.0f} us ({(total - known) / total:.0%}) "
              "HTTP, multipart parsing, BentoML, asyncio, the load generator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
