"""The server under the heaviest requests its limits allow: memory stays bounded and the event
loop keeps answering.

    python bench/hostile_load.py [--seconds 20] [--clients 8]

A resnet18 (32 px) is trained for one epoch on digits, registered and exported into a
temporary store and served with the default settings. Then ``--clients`` clients each send,
over and over, the largest request the default limits allow: images of 4096x4096 RGBA
(``ZOO_MAX_IMAGE_PIXELS``), as many as ``ZOO_MAX_REQUEST_PIXELS`` admits, each a PNG of a few
dozen KB on the wire but 64 MiB decoded. Meanwhile the server's resident memory (every
process, summed) is sampled every 50 ms and ``/livez`` is timed every 100 ms.

It prints the memory with the model loaded (before the load), the peak under load, and the
bound the pixel budget sets: per worker, at most ``ZOO_MAX_REQUEST_PIXELS`` pixels decoded at
once, each RGBA pixel held as up to four 4-byte copies while it is composited onto white,
converted and resized (16 bytes a pixel).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.*

from bench.serve_throughput import prepare

BYTES_PER_PIXEL_AT_WORST = 16  # RGBA decoded, a white RGBA, the composite, then RGB


def largest_image(side: int) -> bytes:
    """A ``side``² RGBA PNG with a gradient and transparency: tiny on the wire, big decoded."""
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    rgba = np.empty((side, side, 4), np.uint8)
    rgba[..., 0], rgba[..., 1] = ramp[None, :], ramp[:, None]
    rgba[..., 2], rgba[..., 3] = 128, ramp[None, :]
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def main() -> None:
    import httpx

    from support.process import Server
    from serving.settings import ServeSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    limits = ServeSettings()
    side = int(limits.max_image_pixels ** 0.5)
    count = max(1, limits.max_request_pixels // (side * side))
    image = largest_image(side)
    with tempfile.TemporaryDirectory(prefix="zoo-hostile-") as tmp:
        env = prepare(32, Path(tmp))
        env.pop("onnx")
        with Server("serving.service:ZooService", env) as server:
            files = [("images", (f"{i}.png", image, "image/png")) for i in range(count)]
            for _ in range(3):  # warm: the model, the first decode
                httpx.post(f"{server.url}/embed", files=files[:1], timeout=300)
            workers = ServeSettings.from_env(env).worker_count
            baseline = tree_rss(server.process.pid)
            stop = threading.Event()
            peak, livez, answers = [baseline], [], []

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], tree_rss(server.process.pid))
                    time.sleep(0.05)

            def probe() -> None:
                with httpx.Client(timeout=30) as http:
                    while not stop.is_set():
                        start = time.perf_counter()
                        http.get(f"{server.url}/livez")
                        livez.append(time.perf_counter() - start)
                        time.sleep(0.1)

            def client() -> None:
                with httpx.Client(timeout=600) as http:
                    while not stop.is_set():
                        answers.append(http.post(f"{server.url}/embed", files=files).status_code)

            threads = [threading.Thread(target=f) for f in
                       (sample, probe, *[client] * args.clients)]
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            for thread in threads:
                thread.join()
    mib = 2 ** 20
    bound = workers * limits.max_request_pixels * BYTES_PER_PIXEL_AT_WORST
    lat = np.asarray(livez) * 1000
    print(f"{args.clients} clients, each request {count} x {side}x{side} RGBA PNG "
          f"({len(image) * count / 1024:.0f} KB on the wire, "
          f"{count * side * side * 4 / mib:.0f} MiB decoded), {args.seconds:.0f} s, "
          f"{workers} workers")
    print(f"requests answered: {len(answers)} "
          f"({', '.join(f'{s}: {answers.count(s)}' for s in sorted(set(answers)))})")
    print(f"RSS with the model loaded: {baseline / mib:.0f} MiB; peak under load: "
          f"{peak[0] / mib:.0f} MiB (+{(peak[0] - baseline) / mib:.0f} MiB)")
    print(f"bound set by the pixel budget: {bound / mib:.0f} MiB ({workers} workers x "
          f"{limits.max_request_pixels:,} px x {BYTES_PER_PIXEL_AT_WORST} B): "
          f"{'within' if peak[0] - baseline <= bound else 'OVER'}")
    print(f"/livez: {len(lat)} probes, p50 {np.percentile(lat, 50):.1f} ms, "
          f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms "
          f"({'all' if lat.max() < 100 else 'NOT all'} under 100 ms)")


if __name__ == "__main__":
    main()
