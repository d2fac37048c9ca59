"""Requests an attacker sends, for the tests and bench/hostile_load.py."""
from __future__ import annotations

import io

import numpy as np


def scan_bomb_jpeg(side: int = 1024, repeats: int = 300) -> bytes:
    """A greyscale progressive JPEG whose scans are repeated ``repeats`` times: small on the
    wire, each scan a pass over the whole image for a decoder (the real bomb: 148 KB, 4096²,
    6,500 scans, 4.4 s to decode)."""
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = ((ramp[:, None] + ramp[None, :]) / 2).astype(np.uint8)  # smooth: a few KB
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "JPEG", progressive=True, quality=30)
    data = buffer.getvalue()
    first = data.index(b"\xff\xda")  # the first scan; everything after it up to EOI is scans
    return data[:first] + data[first:-2] * repeats + b"\xff\xd9"


def rows_json(megabytes: float, width: int = 12) -> bytes:
    """``{"rows": [[...], ...]}`` of about ``megabytes`` MB of numbers."""
    row = "[" + ",".join(["-1.2345678901234567"] * width) + "]"
    count = int(megabytes * 1e6 / (len(row) + 1))
    return ('{"rows": [' + ",".join([row] * count) + "]}").encode()


def many_objects(megabytes: float) -> str:
    """``[{},{},...]`` of about ``megabytes`` MB: a Python object for every three bytes once
    parsed."""
    return "[" + ",".join(["{}"] * int(megabytes * 2**20 / 3)) + "]"


def open_connection(url: str, timeout: float = 30):
    """A raw TCP connection to the server at ``url`` (``http://host:port``)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def closed_after(sock, seconds: float) -> tuple[bytes, float | None]:
    """What the server sends on ``sock`` before it closes it, and after how many seconds it
    did (None: still open after ``seconds``)."""
    import socket
    import time

    start, got = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:  # reset: closed
            return got, time.monotonic() - start
        if not chunk:
            return got, time.monotonic() - start
        got += chunk
    return got, None


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer (None for none)."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None
