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
