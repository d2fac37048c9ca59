"""The server under the heaviest requests its limits allow: memory stays bounded and the event
loop keeps answering.

    python bench/hostile_load.py [--seconds 20] [--clients 8]

A resnet18 (32 px) is trained for one epoch on digits, registered and exported into a
temporary store and served with the default settings. Then ``--clients`` clients each send,
over and over, the largest request the default limits allow: images of 4096x4096 RGBA
(``ZOO_MAX_IMAGE_PIXELS``), as many as ``ZOO_MAX_REQUEST_PIXELS`` admits, each a PNG of a few
dozen KB on the wire but 64 MiB decoded. Meanwhile the server's resident memory (every
process, summed) is sampled every 50 ms and ``/livez`` is timed every 100 ms.

The same is then done with attacks the server refuses before any work: progressive JPEGs of
1,800 scans (a decoding bomb), 30 MB JSON bodies of numbers (1.3 GB once parsed), and forms
of 31 text fields the route does not take, each 1 MiB of ``[{},{},...]`` (680 MB parsed, when
every field was). Last, slow clients: ``--slow`` connections that never finish their headers
and as many that trickle a body a byte at a time, held open past ``ZOO_BODY_TIMEOUT_S``,
after which it counts how many the server still keeps open.

It prints, for each, the memory with the model loaded, the peak under load and the
``/livez`` latency, and for the largest images the bound the pixel budget sets: per worker,
at most ``ZOO_MAX_REQUEST_PIXELS`` pixels decoded at once, each RGBA pixel held as up to four
4-byte copies while it is composited onto white, converted and resized (16 bytes a pixel).
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


def attack(url: str, pid: int, send, clients: int, seconds: float) -> dict:
    """``clients`` threads calling ``send(http)`` for ``seconds``, while the server's memory
    (every process) is sampled every 50 ms and ``/livez`` timed every 100 ms."""
    import httpx

    baseline = tree_rss(pid)
    stop = threading.Event()
    peak, livez, answers = [baseline], [], []

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(pid))
            time.sleep(0.05)

    def probe() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.perf_counter()
                http.get(f"{url}/livez")
                livez.append(time.perf_counter() - start)
                time.sleep(0.1)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while not stop.is_set():
                answers.append(send(http).status_code)

    threads = [threading.Thread(target=f) for f in (sample, probe, *[client] * clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {"baseline": baseline, "peak": peak[0], "livez": np.asarray(livez) * 1000,
            "answers": answers}


def report(title: str, result: dict) -> None:
    mib, lat, answers = 2 ** 20, result["livez"], result["answers"]
    print(f"{title}")
    if answers:
        print(f"  requests answered: {len(answers)} "
              f"({', '.join(f'{s}: {answers.count(s)}' for s in sorted(set(answers)))})")
    print(f"  RSS before: {result['baseline'] / mib:.0f} MiB; peak under load: "
          f"{result['peak'] / mib:.0f} MiB (+{(result['peak'] - result['baseline']) / mib:.0f} "
          "MiB)")
    print(f"  /livez: {len(lat)} probes, p50 {np.percentile(lat, 50):.1f} ms, "
          f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms "
          f"({'all' if lat.max() < 100 else 'NOT all'} under 100 ms)")


def slow_clients(url: str, pid: int, count: int, settings) -> dict:
    """``count`` connections sending partial headers and ``count`` trickling a body (a byte
    every half second), held past both timeouts while ``/livez`` is timed; how many the
    server still keeps open then."""
    import httpx

    from support.hostile import open_connection

    host = url.split("//")[1]
    baseline = tree_rss(pid)
    partial, trickling = [], []
    for _ in range(count):
        partial.append(open_connection(url))
        partial[-1].sendall(f"GET /livez HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        trickling.append(open_connection(url))
        trickling[-1].sendall(f"POST /embed HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                              "image/png\r\nContent-Length: 1000000\r\n\r\n".encode())
    hold = settings.body_timeout_s + 5
    livez, peak, start = [], baseline, time.monotonic()
    with httpx.Client(timeout=30) as http:
        while time.monotonic() - start < hold:
            for sock in trickling:
                try:
                    sock.sendall(b"x")
                except OSError:
                    pass
            began = time.perf_counter()
            http.get(f"{url}/livez")
            livez.append(time.perf_counter() - began)
            peak = max(peak, tree_rss(pid))
            time.sleep(0.5)
    still = {name: sum(_still_open(s) for s in socks)
             for name, socks in (("partial headers", partial), ("trickled bodies", trickling))}
    for sock in partial + trickling:
        sock.close()
    return {"baseline": baseline, "peak": peak, "livez": np.asarray(livez) * 1000,
            "answers": [], "still_open": still, "held_s": hold}


def _still_open(sock) -> bool:
    """Whether the server has not closed ``sock`` (nothing to read, no end of stream)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False  # read to the end: closed
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> None:
    import httpx

    from support.hostile import many_objects, rows_json, scan_bomb_jpeg
    from support.process import Server
    from serving.settings import ServeSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slow", type=int, default=400,
                        help="slow connections of each kind (default %(default)s)")
    args = parser.parse_args()
    limits = ServeSettings()
    side = int(limits.max_image_pixels ** 0.5)
    count = max(1, limits.max_request_pixels // (side * side))
    image = largest_image(side)
    bomb, body = scan_bomb_jpeg(), rows_json(30)
    files = [("images", (f"{i}.png", image, "image/png")) for i in range(count)]
    junk = {f"junk{i}": many_objects(1) for i in range(31)}
    small = largest_image(32)
    attacks = {
        f"the largest images: {count} x {side}x{side} RGBA PNG per request "
        f"({len(image) * count / 1024:.0f} KB on the wire, "
        f"{count * side * side * 4 / 2**20:.0f} MiB decoded)":
            lambda http: http.post("/embed", files=files),
        f"JPEG scan bombs: {bomb.count(bytes([0xFF, 0xDA])):,} scans of 1024x1024 in "
        f"{len(bomb) / 2**20:.1f} MiB (refused before decoding)":
            lambda http: http.post("/embed", files=[("images", ("b.jpg", bomb, "image/jpeg"))]),
        f"JSON bodies of {len(body) / 1e6:.0f} MB of numbers (refused before parsing)":
            lambda http: http.post("/embed", content=body,
                                   headers={"Content-Type": "application/json"}),
        "forms of 31 text fields the route does not take, 1 MiB of [{},{},...] each "
        "(never parsed)":
            lambda http: http.post("/embed", data=junk,
                                   files=[("images", ("s.png", small, "image/png"))]),
    }
    with tempfile.TemporaryDirectory(prefix="zoo-hostile-") as tmp:
        env = prepare(32, Path(tmp))
        env.pop("onnx")
        with Server("serving.service:ZooService", env) as server:
            for _ in range(3):  # warm: the model, the first decode
                httpx.post(f"{server.url}/embed", files=files[:1], timeout=300)
            workers = ServeSettings.from_env(env).worker_count
            results = {title: attack(server.url, server.process.pid, send, args.clients,
                                     args.seconds) for title, send in attacks.items()}
            slow = slow_clients(server.url, server.process.pid, args.slow, limits)
    print(f"{args.clients} clients, {args.seconds:.0f} s each, {workers} workers")
    for title, result in results.items():
        report(title, result)
    report(f"slow clients: {args.slow} connections with partial headers and {args.slow} "
           f"trickling a body, held {slow['held_s']:.0f} s", slow)
    print(f"  still open after {slow['held_s']:.0f} s: "
          + ", ".join(f"{n}: {k} of {args.slow}" for n, k in slow["still_open"].items())
          + f" (ZOO_HEADER_TIMEOUT_S={limits.header_timeout_s:g}, "
          f"ZOO_BODY_TIMEOUT_S={limits.body_timeout_s:g})")
    first = next(iter(results.values()))
    bound = workers * limits.max_request_pixels * BYTES_PER_PIXEL_AT_WORST
    print(f"bound set by the pixel budget on the largest images: {bound / 2**20:.0f} MiB "
          f"({workers} workers x {limits.max_request_pixels:,} px x "
          f"{BYTES_PER_PIXEL_AT_WORST} B): "
          f"{'within' if first['peak'] - first['baseline'] <= bound else 'OVER'}")


if __name__ == "__main__":
    main()
