"""The BentoML server, over real HTTP: answers equal the exported ONNX model's, bad input gets
a 4xx and the server stays up, the gallery survives a restart (a built Bento: test_bento.py).

One image model (resnet18 on digits) and one tabular model (residual_mlp on emitters) are
trained for one epoch into a temporary store, registered and exported, once per module.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from support.process import BENTOML, REPO, Server
from support.serving_store import (IMAGE_URI, TABULAR_URI, Reference, digit_images, files,
                                   make_store, png, serving_store, store_env)
from training.config import TrainConfig
from zoo.data import preprocess_images
from zoo.data.emitters import emitters
from zoo.metrics._utils import far_key

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key-for-tests"  # the image server's: its gallery can be changed with it
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both models trained, registered and exported; the env a server needs to find them."""
    return serving_store(tmp_path_factory, tmp_path_factory.mktemp("serving") / "store")


_env = store_env


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    return digit_images()


@pytest.fixture(scope="module")
def image_server(store: dict[str, str]):
    # slow clients are cut off sooner than by default, so the test need not wait long
    env = _env(store, IMAGE_URI, "gallery-digits", ZOO_ADMIN_KEY=ADMIN_KEY,
               ZOO_HEADER_TIMEOUT_S="3", ZOO_BODY_TIMEOUT_S="3")
    with Server("serving.service:ZooService", env) as server:
        yield server


def test_image_answers_equal_the_onnx_model(image_server: Server, store, digit_pngs) -> None:
    import httpx

    ref = Reference(store, IMAGE_URI)
    sample = digit_pngs[:12]
    expected = ref.images(sample)
    got = httpx.post(f"{image_server.url}/embed", files=files(sample), timeout=60)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["model"], body["version"]) == ("zoo-digits", ref.version)
    embeddings = np.asarray(body["embeddings"])
    assert embeddings.shape == expected["embedding"].shape
    assert np.abs(embeddings - expected["embedding"]).max() <= 1e-5
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    got = httpx.post(f"{image_server.url}/classify", files=files(sample), data={"top_k": "3"},
                     timeout=60).json()
    logits = expected["logits"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, p in zip(got["predictions"], probs):
        assert len(row) == 3
        assert [c["label"] for c in row] == [ref.pre.class_names[j] for j in np.argsort(-p)[:3]]
        assert abs(row[0]["probability"] - p.max()) <= 1e-5

    info = httpx.get(f"{image_server.url}/model", timeout=30).json()
    assert info["uri"] == IMAGE_URI and info["version"] == ref.version
    assert info["classes"] == ref.pre.class_names and info["input_size"] == [3, 32, 32]
    assert "test_precision_at_1" in info["metrics"] and info["gallery"]["entries"] > 1000
    for probe in ("readyz", "livez"):
        assert httpx.get(f"{image_server.url}/{probe}", timeout=10).status_code == 200
    metrics = httpx.get(f"{image_server.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text


def test_identify_enroll_and_restart(image_server: Server, store, digit_pngs) -> None:
    import httpx

    digits = load_digits()
    got = httpx.post(f"{image_server.url}/identify", files=files(digit_pngs[:20]),
                     data={"top_k": "3"}, headers=ADMIN, timeout=60).json()
    threshold = got["threshold"]
    assert threshold is not None and -1 <= threshold <= 1
    labels = [str(digits.target[i]) for i in range(0, 1700, 17)][:20]
    right = 0
    for result, label in zip(got["results"], labels):
        assert result["known"] == (result["similarity"] >= threshold)
        assert result["identity"] == (result["matches"][0]["identity"] if result["known"]
                                      else "unknown")
        assert len({m["identity"] for m in result["matches"]}) == 3  # distinct identities
        right += result["matches"][0]["identity"] == label
    assert right >= 10  # one epoch of training already ranks most digits right
    # without the admin key: only the matches at or above the threshold, at most ZOO_MAX_TOP_K
    anyone = httpx.post(f"{image_server.url}/identify", files=files(digit_pngs[:20]),
                        data={"top_k": "3"}, timeout=60).json()
    listed = [m["similarity"] for r in anyone["results"] for m in r["matches"]]
    hidden = sum(m["similarity"] < threshold for r in got["results"] for m in r["matches"])
    assert all(v >= threshold for v in listed) and len(listed) == 60 - hidden and hidden > 0
    capped = httpx.post(f"{image_server.url}/identify", files=files(digit_pngs[:1]),
                        data={"top_k": "1000"}, timeout=60)
    assert capped.status_code == 400 and "ZOO_MAX_TOP_K" in capped.json()["error"]

    stranger = png(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    enrolled = httpx.post(f"{image_server.url}/enroll", files=files([stranger, stranger]),
                          data={"identity": " Ada Lovelace "}, headers=ADMIN, timeout=60)
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["identity"] == "Ada Lovelace" and enrolled.json()["entries"] == 2

    def who() -> dict:
        return httpx.post(f"{image_server.url}/identify", files=files([stranger]),
                          timeout=60).json()["results"][0]

    assert who()["identity"] == "Ada Lovelace" and who()["similarity"] > 0.999
    # The enrollment is on disk: a new server with the same gallery folder knows her.
    env = _env(store, IMAGE_URI, "gallery-digits", ZOO_ADMIN_KEY=ADMIN_KEY,
               ZOO_WORKERS="1")  # one process starts sooner
    with Server("serving.service:ZooService", env) as again:
        answer = httpx.post(f"{again.url}/identify", files=files([stranger]), timeout=60).json()
        assert answer["results"][0]["identity"] == "Ada Lovelace"

    # identity management, with the admin key: list, show (when, and each image's sha256), delete
    url = image_server.url
    refused = httpx.get(f"{url}/identities", timeout=10)
    assert refused.status_code == 401 and "admin key" in refused.json()["error"]
    listing = httpx.get(f"{url}/identities", params={"page_size": 4}, headers=ADMIN,
                        timeout=10).json()
    assert listing["total"] >= 11 and len(listing["identities"]) == 4  # 10 digits + Ada (+ ...)
    every = httpx.get(f"{url}/identities", params={"page_size": 1000}, headers=ADMIN,
                      timeout=10).json()["identities"]
    assert {"name": "Ada Lovelace", "entries": 2} in every and len(every) == listing["total"]
    assert every[:4] == listing["identities"]  # pages in name order
    far = httpx.get(f"{url}/identities", params={"page": "99999999999999999999"}, headers=ADMIN,
                    timeout=10)
    assert 400 <= far.status_code < 500, far.text  # not SQLite's OverflowError as a 500
    gallery = Path(env["ZOO_GALLERY_DIR"])  # names and embeddings: the server's user's only
    assert gallery.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in gallery.iterdir() if f.is_file())
    ada = httpx.get(f"{url}/identities/Ada Lovelace", headers=ADMIN, timeout=10).json()
    assert [e["sha256"] for e in ada["enrollments"]] == [hashlib.sha256(stranger).hexdigest()] * 2
    assert all(e["enrolled_at"].endswith("+00:00") for e in ada["enrollments"])
    gone = httpx.delete(f"{url}/identities/Ada Lovelace", headers=ADMIN, timeout=10)
    assert gone.status_code == 200 and gone.json()["removed"] == 2
    assert all(who()["identity"] != "Ada Lovelace" for _ in range(6))  # on every worker
    assert httpx.get(f"{url}/identities/Ada Lovelace", headers=ADMIN,
                     timeout=10).status_code == 404


def test_what_an_attacker_sends_stays_bounded(image_server: Server, digit_pngs) -> None:
    """Issue 34's findings over real HTTP: /metrics labelled by route, not by path; a JPEG
    scan bomb, a 30 MB JSON body and an oversized raw image refused at once; validation errors
    logged in one INFO line without the body; no Host echo; OpenAI-shaped /v1 errors that
    repeat nothing the client sent. The server keeps answering throughout."""
    import time

    import httpx

    from support.hostile import rows_json, scan_bomb_jpeg

    url = image_server.url
    with httpx.Client(base_url=url, timeout=60) as http:
        # warm every series once, then 300 random unknown paths and an enrolled-looking name
        for path in ("/no-such-route", "/identities/someone"):
            http.get(path)
        before = len(http.get("/metrics").text)
        rng = np.random.default_rng(0)
        for _ in range(300):
            http.get("/x" + "".join(rng.choice(list("abcdefgh/._-"), 200)))
        assert http.get("/identities/Alice Smith").status_code == 401
        metrics = http.get("/metrics").text
        assert len(metrics) - before < 20_000, len(metrics) - before
        assert "Alice" not in metrics, [line for line in metrics.splitlines() if "Alice" in line]
        assert 'endpoint="/identities/{name}"' in metrics
        assert 'endpoint="unmatched"' in metrics

        bomb = scan_bomb_jpeg()  # ~1,800 scans of 1024x1024 in a few hundred KB
        start = time.monotonic()
        got = http.post("/embed", files=files([bomb]))
        assert got.status_code == 400 and "scans" in got.json()["error"], got.text
        assert time.monotonic() - start < 1

        body = rows_json(30)
        for content in (body, iter([body[i:i + 2**20] for i in range(0, len(body), 2**20)])):
            start = time.monotonic()  # with a Content-Length, then streamed without one
            got = http.post("/embed", content=content,
                            headers={"Content-Type": "application/json"})
            assert got.status_code == 413 and "JSON" in got.json()["error"], got.text
            assert time.monotonic() - start < 1
        raw = http.post("/embed", content=b"\x89PNG" + bytes(11 * 2**20),
                        headers={"Content-Type": "image/png"})
        assert raw.status_code == 413 and "ZOO_MAX_IMAGE_BYTES" in raw.json()["error"]

        secret = "row-of-personal-data-7f3a"
        bad = http.post("/classify", json={"rows": [[secret]], "top_k": "many"})
        assert bad.status_code == 400
        log = image_server.output()
        assert secret not in log and "validation error" in log
        assert not [line for line in log.splitlines() if "ERROR" in line and "/classify" in line]

        moved = http.get("/model/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert "evil.example" not in moved.headers.get("location", "") + moved.text

        for body, status in (({"input": 5, "dimensions": "wide"}, 400),
                             ({"input": "data:image/png;base64,AA==", "model": "m" * 5000},
                              404)):
            got = http.post("/v1/embeddings", json=body)
            error = got.json()["error"]
            assert got.status_code == status and set(error) >= {"message", "type"}, got.text
            assert "m" * 100 not in got.text and "wide" not in got.text
        big = http.post("/v1/embeddings", content=rows_json(2),
                        headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and "message" in big.json()["error"], big.text

        start = time.monotonic()
        assert http.get("/livez").status_code == 200 and time.monotonic() - start < 1
        assert http.post("/embed", files=files(digit_pngs[:2])).status_code == 200


def test_a_third_attackers_findings_stay_fixed(image_server: Server, digit_pngs) -> None:
    """Issue 44's third review over real HTTP: form fields the route does not take are never
    parsed, declared ones have byte and value limits and deep nesting is a 400; slow headers,
    slow bodies and huge header lines are cut off; a client hanging up logs no traceback;
    answers repeat no long value and say nosniff; one error shape; "." and ".." are no
    names; search folds case beyond ASCII. The server keeps answering throughout."""
    import time

    import httpx
    import psutil

    from support.hostile import closed_after, many_objects, open_connection, status_of

    url = image_server.url
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    workers = psutil.Process(image_server.process.pid).children(recursive=True)
    rss = lambda: sum(w.memory_info().rss for w in workers if w.is_running())  # noqa: E731
    with httpx.Client(base_url=url, timeout=60) as http:
        # 31 undeclared fields of 1 MiB of [{},{},...]: dropped unread (680 MB before)
        before, start = rss(), time.monotonic()
        junk = {f"junk{i}": many_objects(1) for i in range(31)}
        got = http.post("/embed", files=files(digit_pngs[:1]), data=junk)
        assert got.status_code == 200, got.text
        assert time.monotonic() - start < 5 and rss() - before < 150 * 2**20
        # declared fields: a name over 64 KiB, JSON nested past Python's parser, and rows of
        # more values than any request of this model may hold
        for route, data, status, said in (
                ("/enroll", {"identity": "x" * 70_000}, 413, "65,536"),
                ("/classify", {"top_k": "[" * 1010}, 400, "too deeply"),
                ("/embed", {"rows": "[" * 200_000}, 413, "JSON values")):
            got = http.post(route, files=files(digit_pngs[:1]), data=data, headers=admin)
            assert got.status_code == status and said in got.json()["error"], got.text
            assert "x" * 100 not in got.text and "[[[[" not in got.text

        # answers repeat no long value, and every answer says nosniff
        for got in (http.get("/ui/" + "n" * 5000),
                    http.get("/identities", params={"page": "p" * 5000}, headers=admin),
                    http.post("/gradcam", files=files(digit_pngs[:1], "image"),
                              data={"target": "t" * 5000}),
                    http.get("/identities/" + "a" * 190, headers=admin)):
            assert got.status_code in (400, 404, 422) and set(got.json()) == {"error"}, got.text
            assert "n" * 100 not in got.text and "p" * 100 not in got.text
            assert "t" * 100 not in got.text and "a" * 100 not in got.text
            assert got.headers["x-content-type-options"] == "nosniff"
        assert http.post("/embed", files=files(digit_pngs[:1])).headers[
            "x-content-type-options"] == "nosniff"

        # "." and "..": no client can address them in /identities/<name>
        for name in (".", ".."):
            got = http.post("/enroll", files=files(digit_pngs[:1]), data={"identity": name},
                            headers=admin)
            assert got.status_code == 400 and "path segment" in got.json()["error"], got.text
        # search folds case for every script, as PostgreSQL's does
        assert http.post("/enroll", files=files(digit_pngs[:1]), data={"identity": "ÉMILE Zola"},
                         headers=admin).status_code == 200
        found = http.get("/identities", params={"search": "émile"}, headers=admin).json()
        assert [i["name"] for i in found["identities"]] == ["ÉMILE Zola"]
        http.delete("/identities/ÉMILE Zola", headers=admin)

    # slow clients: headers never finished, a body that stalls, a 20 MB header line
    host = url.split("//")[1]
    waiting = open_connection(url)
    waiting.sendall(f"GET /livez HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
    stalled = open_connection(url)
    stalled.sendall(f"POST /embed HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                    f"Content-Length: 100000\r\n\r\n".encode() + b"\x89PNG")
    huge = open_connection(url)  # a header line past 64 KiB, sent whole (no reset to race)
    huge.sendall(f"GET /livez HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode() + b"h" * 70_000)
    answer, after = closed_after(huge, 10)
    assert status_of(answer) == 431 and after is not None, answer[:200]
    answer, after = closed_after(waiting, 10)
    assert status_of(answer) == 408 and after is not None, answer[:200]
    answer, after = closed_after(stalled, 10)
    assert after is not None, "a stalled body kept its connection"
    # a client that hangs up mid-body: one debug line at most, never a traceback
    seen = len(image_server.output())
    dropped = open_connection(url)
    dropped.sendall(f"POST /embed HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                    f"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode())
    dropped.close()
    time.sleep(1)
    log = image_server.output()[seen:]
    assert "ClientDisconnect" not in log and "Traceback" not in log, log[-2000:]
    start = time.monotonic()
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
    assert time.monotonic() - start < 1


def test_bad_input_gets_a_4xx_and_the_server_stays_up(image_server: Server, digit_pngs) -> None:
    import httpx

    url = image_server.url
    big = png(np.random.default_rng(1).integers(0, 255, (2200, 2200, 3), dtype=np.uint8))
    cases = [
        ("not an image", "/embed", {"files": files([b"%PDF-1.4 not a picture"])}, 400,
         "not an image"),
        ("empty list", "/embed", {"json": {"images": []}}, 400, "no images"),
        ("no input", "/classify", {"json": {}}, 400, "no images"),
        ("too many images", "/embed", {"files": files(digit_pngs[:1] * 257)}, 413, "limit of 256"),
        ("image over the byte limit", "/embed", {"files": files([big])}, 413,
         "ZOO_MAX_IMAGE_BYTES"),
        ("rows for an image model", "/embed", {"json": {"rows": [[1.0, 2.0]]}}, 400, "not rows"),
        ("unknown GradCAM class", "/gradcam",
         {"files": files(digit_pngs[:1], "image"), "data": {"target": "eleven"}}, 400,
         "unknown class 'eleven'"),
        ("empty identity", "/enroll", {"files": files(digit_pngs[:1]), "data": {"identity": " "},
                                       "headers": ADMIN}, 400, "identity is empty"),
        ("bad top_k", "/classify", {"files": files(digit_pngs[:1]), "data": {"top_k": "0"}}, 400,
         "top_k"),
        ("truncated image", "/embed", {"files": files([digit_pngs[0][:40]])}, 400, "image 0"),
    ]
    for what, route, kwargs, status, message in cases:
        got = httpx.post(f"{url}{route}", timeout=60, **kwargs)
        assert got.status_code == status, (what, got.status_code, got.text)
        assert message in got.text, (what, got.text)
    # Still up, still right.
    good = httpx.post(f"{url}/embed", files=files(digit_pngs[:2]), timeout=60)
    assert good.status_code == 200 and len(good.json()["embeddings"]) == 2


def test_gradcam_overlays(image_server: Server, digit_pngs) -> None:
    import httpx

    url = image_server.url
    plain = httpx.post(f"{url}/gradcam", files=files(digit_pngs[:1], "image"), timeout=120)
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(plain.content)))
    assert overlay.shape == (256, 256, 3)  # an 8x8 digit, enlarged to be seen
    predicted = httpx.post(f"{url}/classify", files=files(digit_pngs[:1]),
                           timeout=60).json()["predictions"][0][0]["label"]
    assert plain.headers["x-zoo-target"] == predicted
    grey = np.asarray(Image.open(io.BytesIO(digit_pngs[0])).convert("RGB").resize((256, 256)))
    assert np.abs(overlay.astype(int) - grey.astype(int)).mean() > 5  # a heatmap is on it

    chosen = httpx.post(f"{url}/gradcam", files=files(digit_pngs[:1], "image"),
                        data={"target": "3", "method": "gradcam++"}, timeout=120)
    assert chosen.status_code == 200 and chosen.headers["x-zoo-target"] == "3"
    assert chosen.content != plain.content
    similar = httpx.post(f"{url}/gradcam", files=files(digit_pngs[:1], "image")
                         + files(digit_pngs[1:2], "reference"), timeout=120)
    assert similar.status_code == 200 and similar.headers["x-zoo-target"] == "similarity"
    assert -1 <= float(similar.headers["x-zoo-score"]) <= 1
    bad = httpx.post(f"{url}/gradcam", files=files(digit_pngs[:1], "image"),
                     data={"method": "lime"}, timeout=60)
    assert bad.status_code == 400 and "method" in bad.text


def test_page_model_tab_shows_the_version_answering_and_the_servers_refusals(
        image_server: Server) -> None:
    """The page's Model tab (support/browser.py) against this server: the version answering,
    no migration yet, and the server's own words for a migration to the version answering
    already (409) and to another registered model (400)."""
    from playwright.sync_api import expect

    from support.browser import browser_page, open_model_tab

    with browser_page() as page:
        open_model_tab(page, image_server.url, ADMIN_KEY, "1")
        page.fill("#migrate-to", "models:/zoo-digits/1")
        page.click("#migrate-start")
        expect(page.locator("#migrate-message")).to_have_text(
            "409: models:/zoo-digits/1 answers already")
        page.fill("#migrate-to", TABULAR_URI)
        page.click("#migrate-start")
        expect(page.locator("#migrate-message")).to_contain_text(
            f"400: {TABULAR_URI} is not a version of zoo-digits")
        expect(page.locator("#answering")).to_have_text("Answering: version 1")


def _trap() -> tuple[str, list[bytes], object]:
    """A listening socket that records every connection: a URL there must never be fetched."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    seen: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            seen.append(conn.recv(1024))
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/x.png", seen, sock


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_hostile_requests_get_a_4xx_and_nothing_is_fetched(image_server: Server,
                                                           digit_pngs) -> None:
    import httpx

    url = image_server.url
    trap, seen, sock = _trap()
    try:
        for target in (trap, "http://93.184.216.34/x.png", "https://example.com/face.jpg"):
            for route, field in (("/embed", "images"), ("/identify", "images"),
                                 ("/gradcam", "image")):
                # url-encoded, and multipart with the URL as a text part
                for kwargs in ({"data": {field: target}},
                               {"data": {field: target}, "files": {"x": ("x", b"x")}}):
                    got = httpx.post(f"{url}{route}", timeout=30, **kwargs)
                    assert got.status_code == 400, (route, got.status_code, got.text)
                    assert "not a file" in got.json()["error"] and "never fetched" in got.text
            got = httpx.post(f"{url}/gradcam", files=files(digit_pngs[:1], "image"),
                             data={"reference": target}, timeout=30)
            assert got.status_code == 400 and "not a file" in got.text
        assert seen == []  # no connection was ever made to the trap
    finally:
        sock.close()

    blank = _encoded(Image.new("L", (4096, 4096)), "PNG")  # 16.7 M pixels in ~17 KB
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    cases = [
        ("decoded pixels over the request's limit", "/embed", {"files": files([blank] * 3)},
         413, "ZOO_MAX_REQUEST_PIXELS"),
        ("EPS (Ghostscript)", "/embed", {"files": files([eps])}, 400, "accepted format"),
        ("GIF", "/embed", {"files": files([_encoded(Image.new("L", (8, 8)), "GIF")])}, 400,
         "accepted format"),
        ("NUL in a name", "/enroll", {"files": files(digit_pngs[:1]), "headers": ADMIN,
                                      "data": {"identity": "a\x00b"}}, 400, "U+0000"),
        ("bidi override in a name", "/enroll", {"files": files(digit_pngs[:1]), "headers": ADMIN,
                                                "data": {"identity": "abc\u202e"}}, 400,
         "U+202E"),
        ("a text part over 1 MiB", "/enroll", {"files": files(digit_pngs[:1]), "headers": ADMIN,
                                               "data": {"identity": "x" * (1 << 20 | 1)}},
         413, "text field"),
        ("more than 1,000 parts", "/embed",
         {"files": files(digit_pngs[:1]), "data": {f"f{i}": "1" for i in range(1001)}}, 413,
         "text fields"),
        ("more files than the form takes", "/embed", {"files": files(digit_pngs[:1] * 300)},
         413, "files"),
    ]
    for what, route, kwargs, status, message in cases:
        got = httpx.post(f"{url}{route}", timeout=60, **kwargs)
        assert got.status_code == status, (what, got.status_code, got.text[:300])
        assert message in got.text, (what, got.text[:300])

    def chunked():  # no Content-Length: counted as it streams in, refused past 64 MiB
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        for _ in range(70):
            yield b"0" * (1 << 20)

    got = httpx.post(f"{url}/embed", content=chunked(), timeout=60,
                     headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert got.status_code == 413 and "ZOO_MAX_REQUEST_BYTES" in got.json()["error"]

    # names are stored as sent (NFC), never re-read as JSON
    for name in ("12.50", "007", "Ame\u0301lie"):
        got = httpx.post(f"{url}/enroll", files=files(digit_pngs[:1]), headers=ADMIN,
                         data={"identity": name}, timeout=60)
        assert got.status_code == 200, got.text
        stored = unicodedata.normalize("NFC", name)
        assert got.json()["identity"] == stored
        assert httpx.delete(f"{url}/identities/{name}", headers=ADMIN,
                            timeout=10).json()["removed"] == 1

    info = httpx.get(f"{url}/model", timeout=10).json()
    assert "path" not in info["gallery"]
    assert not re.search(r'"/(tmp|home|root|var|Users)/', json.dumps(info))  # no file paths
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200


def _mutations(seeds: list[bytes], count: int, rng: np.random.Generator) -> list[bytes]:
    """``count`` damaged copies of ``seeds``: flipped bytes, cuts, insertions, splices."""
    out = []
    for _ in range(count):
        data = bytearray(seeds[rng.integers(len(seeds))])
        kind = rng.integers(5)
        if kind == 0:  # flip a few bytes, most often in the header
            for _ in range(rng.integers(1, 12)):
                i = int(min(len(data) - 1, rng.exponential(64)))
                data[i] = int(rng.integers(256))
        elif kind == 1:  # cut
            data = data[:rng.integers(1, len(data))]
        elif kind == 2:  # insert random bytes
            i = rng.integers(len(data))
            data[i:i] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
        elif kind == 3:  # another format's header on this body
            other = seeds[rng.integers(len(seeds))]
            data[:32] = other[:32]
        else:  # big numbers where sizes usually are
            for _ in range(4):
                i = int(rng.integers(min(len(data), 48)))
                data[i:i + 4] = b"\xff\xff\x7f\xff"
        out.append(bytes(data))
    return out


def test_fuzzed_images_and_bodies_never_get_a_500(image_server: Server, digit_pngs) -> None:
    """1,500 damaged images and 600 damaged request bodies: every answer is 2xx or 4xx, and
    the server answers a good request afterwards."""
    import httpx

    rng = np.random.default_rng(18)
    digit = Image.open(io.BytesIO(digit_pngs[3])).convert("RGB").resize((24, 24))
    seeds = [_encoded(digit, fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "PPM")]
    seeds += [_encoded(digit.convert(mode), "TIFF") for mode in ("L", "I;16", "F", "CMYK", "1")]
    seeds += [_encoded(digit.convert("P"), "PNG"), _encoded(digit.convert("LA"), "PNG")]
    images = _mutations(seeds, 1500, rng)
    good = httpx.Request("POST", f"{image_server.url}/embed", files=files(digit_pngs[:2]))
    body, ctype = good.read(), good.headers["content-type"]
    bodies = _mutations([body], 500, rng)
    jsons = _mutations([json.dumps({"images": ["x"], "rows": [[1.0] * 3]}).encode(),
                        json.dumps({"input": "data:image/png;base64,AAAA"}).encode()], 100, rng)
    jobs = ([("/embed", {"files": files([m])}) for m in images[:1200]]
            + [("/identify", {"files": files([m])}) for m in images[1200:1400]]
            + [("/gradcam", {"files": files([m], "image")}) for m in images[1400:]]
            + [("/embed", {"content": b, "headers": {"content-type": ctype}}) for b in bodies]
            + [("/embed", {"content": b, "headers": {"content-type": "application/json"}})
               for b in jsons[:50]]
            + [("/v1/embeddings", {"content": b, "headers": {"content-type": "application/json"}})
               for b in jsons[50:]])

    # one client per thread (making one costs ~30 ms of CPU: its TLS context), each request
    # on a connection of its own, so that no damaged request can spoil the next one's
    local, clients = threading.local(), []

    def send(job: tuple[str, dict]) -> tuple[int, str]:
        route, kwargs = job
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=image_server.url, timeout=120,
                                      headers={"Connection": "close"})
            clients.append(local.http)
        got = local.http.post(route, **kwargs)
        return got.status_code, f"{route}: {got.text[:200]}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    for client in clients:
        client.close()
    errors = [text for status, text in answers if status >= 500]
    assert not errors, f"{len(errors)} answers of 5xx, e.g. {errors[:3]}"
    assert sum(status == 200 for status, _ in answers) > 50  # many mutations still decode
    after = httpx.post(f"{image_server.url}/embed", files=files(digit_pngs[:2]), timeout=60)
    assert after.status_code == 200 and len(after.json()["embeddings"]) == 2


def test_load_64_clients_2000_requests(image_server: Server, store, digit_pngs) -> None:
    import httpx

    expected = Reference(store, IMAGE_URI).images(digit_pngs)["embedding"]
    errors: list[str] = []

    def client(worker: int) -> int:
        done = 0
        with httpx.Client(base_url=image_server.url, timeout=120) as http:
            for i in range(worker, 2000, 64):
                k = i % len(digit_pngs)
                got = http.post("/embed", files=files([digit_pngs[k]]))
                if got.status_code != 200:
                    errors.append(f"{got.status_code} {got.text[:200]}")
                    continue
                diff = np.abs(np.asarray(got.json()["embeddings"][0]) - expected[k]).max()
                if diff > 1e-5:
                    errors.append(f"request {i}: embedding of image {k} off by {diff}")
                done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        done = sum(pool.map(client, range(64)))
    assert not errors, errors[:5]
    assert done == 2000


def test_an_image_as_the_raw_body_is_embedded_like_a_multipart_one(
        image_server: Server, store, digit_pngs) -> None:
    """The light route: POST /embed with the image itself as the body (no multipart)."""
    import httpx

    expected = Reference(store, IMAGE_URI).images(digit_pngs[:3])["embedding"]
    with httpx.Client(base_url=image_server.url, timeout=60) as http:
        for i, (png, kind) in enumerate(zip(digit_pngs[:3], ("image/png", "IMAGE/PNG",
                                                            "application/octet-stream"))):
            got = http.post("/embed", content=png, headers={"Content-Type": kind})
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["model"] == "zoo-digits" and len(body["embeddings"]) == 1
            assert np.abs(np.asarray(body["embeddings"][0]) - expected[i]).max() <= 1e-5
        for bad, message in ((b"", "empty"), (b"not an image", "not an image"),
                             (digit_pngs[0][:40], "")):
            got = http.post("/embed", content=bad, headers={"Content-Type": "image/png"})
            assert got.status_code == 400 and message in got.json()["error"], got.text
        # the multipart and JSON forms are unchanged
        assert http.post("/embed", files=files(digit_pngs[:1])).status_code == 200


TABULAR_API = {"Authorization": "Bearer the-api-key"}
TABULAR_ADMIN = {"Authorization": "Bearer the-admin-key"}


@pytest.fixture(scope="module")
def tabular_server(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The emitters model behind 4 workers, with keys (the admin key from a file) and a small
    request limit (the image pixel limit is tested in test_serving_parts.py)."""
    root = tmp_path_factory.mktemp("tabular")
    (root / "admin.key").write_text("the-admin-key\n")
    env = _env(store, TABULAR_URI, "unused", ZOO_GALLERY_DIR=str(root / "gallery"),
               ZOO_WORKERS="4", ZOO_MAX_REQUEST_BYTES="20000", ZOO_API_KEY="the-api-key",
               ZOO_ADMIN_KEY_FILE=str(root / "admin.key"))
    with Server("serving.service:ZooService", env, timeout=180) as server:
        server.gallery = root / "gallery"
        yield server


def test_tabular_server(tabular_server: Server, store) -> None:
    import httpx

    ref = Reference(store, TABULAR_URI)
    data = emitters()
    rows = data.x[:10].tolist()
    expected = ref.rows(rows)
    api, admin, server = TABULAR_API, TABULAR_ADMIN, tabular_server
    # keys: the model routes need the API key (or the admin key), the gallery the admin key
    for probe in ("livez", "readyz", "metrics"):
        assert httpx.get(f"{server.url}/{probe}", timeout=10).status_code == 200
    one = {"json": {"rows": rows[:1]}, "timeout": 60}
    missing = httpx.post(f"{server.url}/embed", **one)
    assert missing.status_code == 401 and "needs an API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{server.url}/embed", headers={"Authorization": "Bearer no"}, **one)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API key"
    assert httpx.get(f"{server.url}/model", timeout=10).status_code == 401
    for docs in ("/docs", "/openapi.json", "/docs.json", "/"):  # the API's description too
        assert httpx.get(f"{server.url}{docs}", timeout=10).status_code == 401, docs
    assert httpx.get(f"{server.url}/docs", headers=api, timeout=10).status_code == 200
    assert httpx.post(f"{server.url}/embed", headers=admin, **one).status_code == 200
    enroll = {"json": {"rows": rows[:2], "identity": "radar-7"}, "timeout": 60}
    assert httpx.post(f"{server.url}/enroll", **enroll).status_code == 401
    refused = httpx.post(f"{server.url}/enroll", headers=api, **enroll)
    assert refused.status_code == 403 and "admin key" in refused.json()["error"]
    assert httpx.get(f"{server.url}/identities", headers=api, timeout=10).status_code == 403
    assert httpx.delete(f"{server.url}/identities/radar-7", headers=api,
                        timeout=10).status_code == 403
    got = httpx.post(f"{server.url}/embed", json={"rows": rows * 100}, headers=api, timeout=60)
    assert got.status_code == 413 and "ZOO_MAX_REQUEST_BYTES" in got.json()["error"]
    got = httpx.post(f"{server.url}/embed", json={"rows": rows}, headers=api, timeout=60)
    assert got.status_code == 200, got.text
    assert np.abs(np.asarray(got.json()["embeddings"]) - expected["embedding"]).max() <= 1e-5
    top = httpx.post(f"{server.url}/classify", json={"rows": rows, "top_k": 1},
                     headers=api, timeout=60).json()["predictions"]
    assert [r[0]["label"] for r in top] == [ref.pre.class_names[j]
                                            for j in expected["logits"].argmax(1)]
    who = httpx.post(f"{server.url}/identify", json={"rows": rows[:3]}, headers=api,
                     timeout=60).json()
    assert len(who["results"]) == 3
    width = ref.pre.num_features
    huge = [rows[0], [1e300] + rows[1][1:]]  # finite as float64, infinite as float32
    for body, message in (({"rows": [rows[0][:-1]]}, f"row 0 has {width - 1} values"),
                          ({"rows": huge}, "row 1 has a value too large for float32"),
                          ({"rows": huge, "identity": "x"}, "row 1 has a value too large"),
                          ({"rows": []}, "no rows"), ({}, "no rows")):
        route = "/enroll" if "identity" in body else "/embed"
        bad = httpx.post(f"{server.url}{route}", json=body, headers=admin, timeout=60)
        assert bad.status_code == 400 and message in bad.json()["error"], bad.text
    bad = httpx.post(f"{server.url}/embed", files=files([png(np.zeros((8, 8), np.uint8))]),
                     headers=api, timeout=60)
    assert bad.status_code == 400 and "not images" in bad.json()["error"]
    bad = httpx.post(f"{server.url}/gradcam", files=files([png(np.zeros((8, 8), np.uint8))],
                                                          "image"), headers=api, timeout=60)
    assert bad.status_code == 400 and "image models" in bad.json()["error"]
    # the raw-image route sits behind the keys, and a tabular model refuses images there too
    raw = {"content": png(np.zeros((8, 8), np.uint8)), "headers": {"Content-Type": "image/png"}}
    assert httpx.post(f"{server.url}/embed", timeout=60, **raw).status_code == 401
    raw["headers"].update(api)
    bad = httpx.post(f"{server.url}/embed", timeout=60, **raw)
    assert bad.status_code == 400 and "not images" in bad.json()["error"]
    ok = httpx.post(f"{server.url}/enroll", headers=admin, **enroll)
    assert ok.status_code == 200 and ok.json()["entries"] == 2
    # the OpenAI client with rows of numbers; its api_key is the bearer token
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="the-api-key",
                           max_retries=0)
    answer = client.embeddings.create(model="zoo-emitters", input=rows[:3])
    assert np.abs(np.asarray([d.embedding for d in answer.data])
                  - expected["embedding"][:3]).max() <= 1e-5
    single = client.embeddings.create(model="zoo-emitters", input=rows[0],
                                      encoding_format="float")
    assert np.abs(np.asarray(single.data[0].embedding) - expected["embedding"][0]).max() <= 1e-5
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong",
                      max_retries=0).embeddings.create(model="zoo-emitters", input=rows[0])


CONCURRENT_SECONDS = 30


def test_rows_are_read_strictly_and_gaps_take_the_training_mean(tabular_server: Server,
                                                                 store) -> None:
    """Issue 44's eighth finding on a model of numbers only: a record's left-out column and
    a null are the feature's training mean (what the page sends for an empty cell), numbers
    sent as text are plain decimals only, and a form's refusal has the one error shape."""
    import httpx

    ref = Reference(store, TABULAR_URI)
    names, mean = ref.pre.feature_names, ref.pre.mean
    row = emitters().x[0].tolist()
    filled = [mean[0], *row[1:]]
    api = {**TABULAR_API}
    with httpx.Client(base_url=tabular_server.url, headers=api, timeout=60) as http:
        want = http.post("/embed", json={"rows": [filled]}).json()["embeddings"]
        for rows in ([{n: v for n, v in zip(names[1:], row[1:])}], [[None, *row[1:]]]):
            got = http.post("/embed", json={"rows": rows})
            assert got.status_code == 200, got.text
            assert np.abs(np.asarray(got.json()["embeddings"]) - want).max() <= 1e-6
        assert http.post("/embed", json={"rows": [[str(row[0]), *row[1:]]]}).status_code == 200
        for loose in ("1_000", " 12 ", "\u0661\u0662", "nan", True):
            got = http.post("/embed", json={"rows": [[loose, *row[1:]]]})
            assert got.status_code == 400 and "not a number" in got.json()["error"], got.text
        form = http.post("/embed", data={f"f{i}": "1" for i in range(40)})
        assert form.status_code == 413 and isinstance(form.json(), dict), form.text
        assert "text fields" in form.json()["error"]


def test_four_workers_lose_no_enrollment_and_find_each_at_once(tabular_server: Server) -> None:
    """8 clients enroll and 8 identify for 30 s against 4 workers sharing one gallery table:
    every acknowledged enrollment is in the table once, and every identify sent after an
    acknowledgement finds that identity, whichever worker answers either request."""
    import random
    import time

    import httpx

    x = emitters().x.numpy()
    spread = x.std(0) * 0.3  # each enrolled row: a known row moved by 0.3 of each feature's std
    acked: list[tuple[str, list[float]]] = []
    problems: list[str] = []
    lock = threading.Lock()
    identified = [0]
    url = tabular_server.url
    before = httpx.get(f"{url}/identities", headers=TABULAR_ADMIN, timeout=30).json()["total"]
    deadline = time.monotonic() + CONCURRENT_SECONDS

    def enroller(client: int) -> None:
        rng = np.random.default_rng(client)
        with httpx.Client(base_url=url, headers=TABULAR_ADMIN, timeout=60) as http:
            n = 0
            while time.monotonic() < deadline:
                row = (x[rng.integers(len(x))] + rng.normal(0, 1, x.shape[1]) * spread).tolist()
                name = f"c{client}-{n}"
                got = http.post("/enroll", json={"identity": name, "rows": [row]})
                if got.status_code != 200 or got.json()["entries"] != 1:
                    problems.append(f"enroll {name}: {got.status_code} {got.text[:200]}")
                    continue
                with lock:
                    acked.append((name, row))
                n += 1

    def identifier(client: int) -> None:
        pick = random.Random(client)
        with httpx.Client(base_url=url, headers=TABULAR_API, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    known = ((acked[-1] if pick.random() < 0.5 else pick.choice(acked))
                             if acked else None)
                if known is None:
                    time.sleep(0.05)
                    continue
                name, row = known
                got = http.post("/identify", json={"rows": [row], "top_k": 10})
                matches = {m["identity"]: m["similarity"]
                           for m in got.json()["results"][0]["matches"]}
                if matches.get(name, 0) < 0.999:
                    problems.append(f"{name}, acknowledged, not found: {matches}")
                identified[0] += 1

    threads = [threading.Thread(target=enroller, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=identifier, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = httpx.get(f"{url}/identities", headers=TABULAR_ADMIN, timeout=30).json()["total"]

    assert not problems, problems[:5]
    assert len(acked) > 100 and identified[0] > 100, (len(acked), identified[0])
    with sqlite3.connect(tabular_server.gallery / "gallery.db") as db:
        counts = dict(db.execute("SELECT identity, count(*) FROM zoo_gallery_entries "
                                 "WHERE identity LIKE 'c%-%' GROUP BY identity"))
    assert counts == {name: 1 for name, _ in acked}  # none lost, none twice
    assert total == before + len(counts)


def test_missing_model_stops_the_server(store) -> None:
    env = {**os.environ, **_env(store, "models:/zoo-digits@nope", "gallery-none")}
    done = subprocess.run([BENTOML, "serve", "serving.service:ZooService", "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert "registered model 'zoo-digits' has no alias @nope" in done.stderr
    assert "mlflow run . -e sweep" in done.stderr and "Traceback" not in done.stderr


def test_predict_folder(store, digit_pngs, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for i, data in enumerate(digit_pngs[:3]):
        (folder / f"{i}.png").write_bytes(data)
    (folder / "more" / "3.png").write_bytes(digit_pngs[3])
    (folder / "broken.png").write_bytes(b"nope")
    env = {**os.environ, **_env(store, IMAGE_URI, "gallery-predict")}
    done = subprocess.run([sys.executable, "-m", "serving.predict", "--images", str(folder),
                           "--model-uri", IMAGE_URI, "--output", str(tmp_path / "p.csv"),
                           "--gradcam-dir", str(tmp_path / "cams")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "p.csv").open())}
    assert set(rows) == {"0.png", "1.png", "2.png", "more/3.png", "broken.png"}
    assert "not an image" in rows["broken.png"]["error"]
    ref = Reference(store, IMAGE_URI)
    logits = ref.images(digit_pngs[:4])["logits"]
    for i, name in enumerate(["0.png", "1.png", "2.png", "more/3.png"]):
        assert rows[name]["label"] == ref.pre.class_names[int(logits[i].argmax())]
        assert rows[name]["identity"] and rows[name]["error"] == ""
    cams = sorted(p.relative_to(tmp_path / "cams").as_posix()
                  for p in (tmp_path / "cams").rglob("*.png"))
    assert cams == ["0.png", "1.png", "2.png", "more/3.png"]


def _photo(seed: int) -> bytes:
    """A smooth colour picture like no digit (a photo compresses as this does)."""
    cells = np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return png(np.asarray(Image.fromarray(cells).resize((30, 30), Image.BICUBIC)))


def test_a_store_trained_again_gets_its_own_gallery(store, digit_pngs, tmp_path: Path,
                                                     monkeypatch, capsys, request) -> None:
    """mlruns/ deleted and the model trained again: zoo-digits v1 is registered anew, and its
    predictions and server must use its own gallery, never the earlier model's (which once
    answered 'unknown' for 20 of 20 digits). The people enrolled with the earlier model are
    carried to it by serving.migrate from what their enrollments kept, and the gate judges
    it on them."""
    import socket

    import httpx
    import psutil

    state = tmp_path / "state"
    images = tmp_path / "images"
    images.mkdir()
    for i, data in enumerate(digit_pngs[:20]):
        (images / f"{i:02d}.png").write_bytes(data)

    threads = torch.get_num_threads()  # the in-process ServedModel sets 1; put back below
    request.addfinalizer(lambda: torch.set_num_threads(threads))

    def use(where: dict[str, str], **extra: str) -> None:
        for key in ("ZOO_GALLERY_DIR", "ZOO_MODEL_URI"):
            monkeypatch.delenv(key, raising=False)
        for key, value in {"MLFLOW_TRACKING_URI": where["MLFLOW_TRACKING_URI"],
                           "ZOO_CACHE_DIR": where["ZOO_CACHE_DIR"],
                           "XDG_STATE_HOME": str(state), **extra}.items():
            monkeypatch.setenv(key, value)

    def predict(where: dict[str, str], **extra: str) -> tuple[int, list, str]:
        """``python -m serving.predict`` in this process: exit code, rows, stderr."""
        from serving.predict import main as predict_main

        use(where, **extra)
        out = tmp_path / "p.csv"
        out.unlink(missing_ok=True)
        code = predict_main(["--images", str(images), "--model-uri", IMAGE_URI,
                             "--output", str(out)])
        rows = list(csv.DictReader(out.open())) if out.exists() else []
        return code, rows, capsys.readouterr().err

    code, _, err = predict(store)
    assert code == 0, err[-2000:]
    # people enrolled with the first model: five with a photo sent twice (so that both
    # models find each one's other entry first, and the gate's verdict is certain), and Ada;
    # photos like no digit, so no training-split entry comes near them
    photo = _photo
    people = tmp_path / "people"
    for person in range(5):
        (people / f"p{person}").mkdir(parents=True)
        for copy in ("a", "b"):
            (people / f"p{person}" / f"{copy}.png").write_bytes(photo(50 + person))
    stranger = photo(5)
    (people / "Ada").mkdir()
    (people / "Ada" / "1.png").write_bytes(stranger)
    from serving.enroll import main as enroll_main

    # what the folder must not lead to: links out of it, and a file larger than an image may be
    (tmp_path / "elsewhere" / "Mallory").mkdir(parents=True)
    (tmp_path / "elsewhere" / "Mallory" / "1.png").write_bytes(stranger)
    (people / "Mallory").symlink_to(tmp_path / "elsewhere" / "Mallory")
    (people / "Ada" / "2.png").symlink_to(tmp_path / "elsewhere" / "Mallory" / "1.png")
    with open(people / "Ada" / "3.png", "wb") as big:
        big.truncate(11 * 2**20)  # sparse: checked by size, never read
    use(store)
    assert enroll_main(["--images", str(people), "--model-uri", IMAGE_URI]) == 0
    said = capsys.readouterr().out
    assert "enrolled 11 images of 6 identities" in said and "(2 images refused)" in said

    again = make_store(tmp_path / "again", [TrainConfig.of(
        model="resnet18", loss="arcface", data="digits", epochs=1, batch_size=64,
        embedding_dim=32, experiment="zoo-digits", plots=False, seed=1)])
    code, rows, err = predict(again)
    assert code == 0, err[-2000:]
    similarity = np.median([float(r["similarity"]) for r in rows])
    assert similarity > 0.5 and sum(r["known"] == "True" for r in rows) >= 10, rows[:3]
    # one folder for every version of zoo-digits: both galleries, and the key that seals
    # what enrollments keep
    (folder,) = (state / "model-zoo" / "galleries").iterdir()
    assert folder.name == "zoo-digits" and (folder / "gallery.key").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(folder / "gallery.db") as db:
        contracts = [json.loads(c) for (c,) in db.execute("SELECT contract FROM zoo_galleries")]
    new_run = mlflow.MlflowClient(again["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "zoo-digits", "champion").run_id
    assert len(contracts) == 2 and {c["version"] for c in contracts} == {"1"}
    assert new_run in {c["run_id"] for c in contracts}
    assert set(contracts[0]) == {"name", "version", "run_id", "weights_sha256", "dim",
                                 "preprocessing_sha256"}

    # the people carried to the new model from what their enrollments kept, then gated
    from serving.migrate import main as migrate_main

    use(again)
    code = migrate_main(["--to", IMAGE_URI])
    told = capsys.readouterr()
    assert code == 0, told.err[-2000:]
    assert "gating: both versions identify the enrolled people" in told.err  # the stage
    said = told.out
    assert "11 kept entries embedded now, 11 of 11 done" in said and "gate against" in said
    tags = mlflow.MlflowClient(again["MLFLOW_TRACKING_URI"]).get_model_version(
        "zoo-digits", "1").tags
    assert tags["zoo.gate.passed"] == "true" and json.loads(tags["zoo.gate.figures"])["new"]

    server_env = {"MLFLOW_TRACKING_URI": again["MLFLOW_TRACKING_URI"], "ZOO_MODEL_URI": IMAGE_URI,
                  "ZOO_CACHE_DIR": again["ZOO_CACHE_DIR"], "XDG_STATE_HOME": str(state),
                  "ZOO_WORKERS": "1"}
    with Server("serving.service:ZooService", server_env,
                host=None) as server:  # the service's own default address
        answer = httpx.post(f"{server.url}/identify", files=files([stranger] + digit_pngs[:20]),
                            timeout=60).json()["results"]
        assert answer[0]["identity"] == "Ada" and answer[0]["similarity"] > 0.99
        assert sum(a["known"] for a in answer[1:]) >= 10
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        assert model["gate"]["passed"] and model["gate"]["new"]["identities"] == 5
        assert model["gallery"]["kept"] == {"keeping": True, "entries": 11}
        for person in range(5):  # each carried person found by one of their own photos
            photo = next((people / f"p{person}").iterdir()).read_bytes()
            found = httpx.post(f"{server.url}/identify", files=files([photo]),
                               timeout=60).json()["results"][0]
            assert found["identity"] == f"p{person}" and found["similarity"] > 0.99, found
        outside = [a.address for addresses in psutil.net_if_addrs().values()
                   for a in addresses if a.family == socket.AF_INET
                   and not a.address.startswith("127.")]
        for ip in outside[:1]:  # listening on loopback only: refused from another address
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{ip}:{server.port}/livez", timeout=5)


def test_a_server_following_its_alias_takes_the_next_champion_without_a_failed_request(
        store, tmp_path: Path) -> None:
    """ZOO_FOLLOW_ALIAS: people enrolled over HTTP with v1; v2 registered and exported, and
    `champion` moved to it. The server carries the people to v2 and gates it while v1
    answers, then switches: a client identifying all along sees no error, each answer from
    one version, and X-Zoo-Model-Version change once; everyone is listed and identified by
    v2. The admin cannot move a following server elsewhere."""
    import httpx

    root = tmp_path / "store"  # a copy of the registry: v2 is registered in it alone
    root.mkdir()
    with sqlite3.connect(Path(store["root"]) / "mlflow.db") as source, \
            sqlite3.connect(root / "mlflow.db") as copy:
        source.backup(copy)  # with what its write-ahead log holds
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": tracking, "ZOO_MODEL_URI": IMAGE_URI,
           "ZOO_CACHE_DIR": str(tmp_path / "cache"), "ZOO_GALLERY_DIR": str(tmp_path / "gallery"),
           "ZOO_ADMIN_KEY": ADMIN_KEY, "ZOO_WORKERS": "1", "ZOO_FOLLOW_ALIAS": "true",
           "ZOO_FOLLOW_EVERY_S": "0.5"}
    photos = {f"p{i}": [_photo(70 + i), _photo(70 + i)] for i in range(5)}
    photos["Ada"] = [_photo(90)]
    with Server("serving.service:ZooService", env) as server:
        for name, pngs in photos.items():
            answer = httpx.post(f"{server.url}/enroll", data={"identity": name},
                                files=files(pngs), headers=ADMIN, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-zoo-model-version"] == "1"
        moved = httpx.post(f"{server.url}/gallery/migrate", json={"to": "models:/zoo-digits/1"},
                           headers=ADMIN, timeout=30)
        assert moved.status_code == 409 and "move the alias" in moved.json()["error"]

        seen: list[tuple[int, str, str, str]] = []  # status, header, body's version, identity
        stop = threading.Event()

        def identify_all_along() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    r = client.post("/identify", files=files(photos["Ada"]))
                    body = r.json() if r.status_code == 200 else {}
                    seen.append((r.status_code, r.headers.get("x-zoo-model-version", ""),
                                 str(body.get("version")),
                                 (body.get("results") or [{}])[0].get("identity", "")))

        streaming = threading.Thread(target=identify_all_along)
        streaming.start()
        try:
            mlflow.set_tracking_uri(tracking)  # where the registry finds the logged model
            try:
                client = mlflow.MlflowClient()
                v1 = client.get_model_version_by_alias("zoo-digits", "champion")
                v2 = client.create_model_version("zoo-digits", v1.source, v1.run_id,
                                                 tags=v1.tags)  # exported, as v1 is
                client.set_registered_model_alias("zoo-digits", "champion", v2.version)
            finally:
                mlflow.set_tracking_uri(None)
            deadline = time.monotonic() + 120
            status: dict = {}
            while time.monotonic() < deadline:
                status = httpx.get(f"{server.url}/gallery/migration", headers=ADMIN,
                                   timeout=10).json()
                if status["answering"]["version"] == "2":
                    break
                time.sleep(0.3)
            time.sleep(1.0)  # a few answers from v2 too
        finally:
            stop.set()
            streaming.join()
        assert status["answering"]["version"] == "2", (status, server.output()[-3000:])
        migration = status["migration"]
        assert migration["stage"] == "switched" and migration["done"] == migration["total"] == 11
        assert migration["gate"]["passed"] and migration["gate"]["new"]["identities"] == 5

        assert seen and all(code == 200 for code, *_ in seen), [s for s in seen if s[0] != 200]
        assert all(header == body for _, header, body, _ in seen)  # one version per answer
        versions = [header for _, header, _, _ in seen]
        changes = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
        assert versions[0] == "1" and versions[-1] == "2" and len(changes) == 1, versions
        assert all(identity == "Ada" for *_, identity in seen)

        listed = httpx.get(f"{server.url}/identities", headers=ADMIN, timeout=10).json()
        assert {i["name"]: i["entries"] for i in listed["identities"]
                if i["name"] in photos} == {name: len(p) for name, p in photos.items()}
        for name, pngs in photos.items():
            found = httpx.post(f"{server.url}/identify", files=files(pngs[:1]), timeout=60)
            assert found.headers["x-zoo-model-version"] == "2"
            assert found.json()["results"][0]["identity"] == name
        assert httpx.get(f"{server.url}/model", timeout=10).json()["version"] == "2"


# --- real clients: BentoML's, OpenAI's, MLflow's scoring server; keys; identities ---------

def test_verify_answers_whether_two_photos_or_a_photo_and_a_name_are_one_person(
        image_server: Server, store, digit_pngs, tmp_path: Path) -> None:
    """/verify with BentoML's client: two photos' similarity is their embeddings' (the ONNX
    model's), `same` at the version's threshold; a photo against an enrolled name is its
    nearest entry's; an unknown name is a 404 for the admin, and a caller without the admin
    key sees a similarity only when it is the same person."""
    import bentoml
    import httpx

    paths = []
    for i, data in enumerate(digit_pngs[:3]):
        paths.append(tmp_path / f"v{i}.png")
        paths[-1].write_bytes(data)
    emb = Reference(store, IMAGE_URI).images(digit_pngs[:3])["embedding"]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with bentoml.SyncHTTPClient(image_server.url, token=ADMIN_KEY, timeout=120) as client:
        pair = client.verify(images=paths[:2])
        assert pair["similarity"] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
        assert pair["same"] == (pair["similarity"] >= pair["threshold"])
        assert pair["identity"] is None and pair["version"] == "1"
        client.enroll(identity="verify-me", images=[paths[2]])
        claim = client.verify(images=[paths[2]], identity="verify-me")
        assert claim["similarity"] == pytest.approx(1.0, abs=1e-5) and claim["same"] is True
        other = client.verify(images=[paths[0]], identity="verify-me")
        assert other["similarity"] == pytest.approx(float(emb[0] @ emb[2]), abs=1e-5)
    url = image_server.url
    unknown = httpx.post(f"{url}/verify", data={"identity": "nobody-at-all"},
                         files=files(digit_pngs[:1]), headers=ADMIN, timeout=60)
    assert unknown.status_code == 404 and "nobody-at-all" in unknown.json()["error"]
    for name in ("nobody-at-all", "verify-me"):  # without the admin key: alike unless same
        answer = httpx.post(f"{url}/verify", data={"identity": name},
                            files=files(digit_pngs[:1]), timeout=60).json()
        assert answer["same"] is (name == "verify-me" and other["same"])
        assert (answer["similarity"] is None) is (not answer["same"])
    wrong = httpx.post(f"{url}/verify", files=files(digit_pngs[:3]), timeout=60)
    assert wrong.status_code == 400 and "send two images" in wrong.json()["error"]

def test_a_request_chooses_the_threshold_at_a_false_accept_rate(
        image_server: Server, store, digit_pngs, tmp_path: Path) -> None:
    """The export keeps the run's thresholds at FAR 1e-2, 1e-3 and 1e-4 with the model; `far=`
    chooses one on /identify and /verify (BentoML's client), 1e-3 by default, and a rate the
    model has no threshold at is a 400 that lists those it has."""
    import bentoml
    import httpx

    client_ml = mlflow.MlflowClient(store["MLFLOW_TRACKING_URI"])
    run = client_ml.get_run(client_ml.get_model_version_by_alias("zoo-digits", "champion").run_id)
    thresholds = httpx.get(f"{image_server.url}/model", timeout=10).json()["thresholds"]
    assert thresholds == {far: pytest.approx(run.data.metrics[f"test_threshold_at_far_{far}"])
                          for far in ("1e-2", "1e-3", "1e-4")}
    assert thresholds["1e-4"] >= thresholds["1e-3"] >= thresholds["1e-2"]
    paths = []
    for i, data in enumerate(digit_pngs[:6]):
        paths.append(tmp_path / f"f{i}.png")
        paths[-1].write_bytes(data)
    with bentoml.SyncHTTPClient(image_server.url, token=ADMIN_KEY, timeout=120) as client:
        default = client.identify(images=paths)
        assert (default["far"], default["threshold"]) == (1e-3, pytest.approx(thresholds["1e-3"]))
        for far in ("1e-4", "0.01"):  # as the key spells it, or any spelling of the number
            strict = client.identify(images=paths, far=far)
            assert strict["far"] == float(far)
            assert strict["threshold"] == pytest.approx(thresholds[far_key(float(far))])
            for answer in strict["results"]:
                assert answer["known"] == (answer["similarity"] >= strict["threshold"])
        pair = client.verify(images=paths[:2], far="1e-2")
        assert (pair["far"], pair["threshold"]) == (1e-2, pytest.approx(thresholds["1e-2"]))
        assert pair["same"] == (pair["similarity"] >= thresholds["1e-2"])
    for far in ("1e-5", "often"):
        refused = httpx.post(f"{image_server.url}/identify", data={"far": far},
                             files=files(digit_pngs[:1]), timeout=60)
        assert refused.status_code == 400, refused.text
        assert "thresholds at the false accept rates 1e-2, 1e-3, 1e-4" in refused.json()["error"]


def test_bentoml_clients_call_every_endpoint(image_server: Server, store, digit_pngs,
                                             tmp_path: Path) -> None:
    """BentoML's own clients, with pathlib.Path and PIL images as BentoML documents them."""
    import asyncio

    import bentoml

    paths = []
    for i, data in enumerate(digit_pngs[:3]):
        paths.append(tmp_path / f"digit-{i}.png")
        paths[-1].write_bytes(data)
    expected = Reference(store, IMAGE_URI).images(digit_pngs[:3])
    with bentoml.SyncHTTPClient(image_server.url, token=ADMIN_KEY, timeout=120) as client:
        embedded = client.embed(images=paths)
        assert np.abs(np.asarray(embedded["embeddings"]) - expected["embedding"]).max() <= 1e-5
        pictures = [Image.open(path) for path in paths]
        same = client.embed(images=pictures)
        assert np.abs(np.asarray(same["embeddings"]) - expected["embedding"]).max() <= 1e-5
        classes = client.classify(images=paths[:1], top_k=2)["predictions"][0]
        assert classes[0]["label"] == str(int(expected["logits"][0].argmax()))
        assert len(client.identify(images=paths, top_k=1)["results"]) == 3
        heatmap = client.gradcam(image=paths[0])
        assert isinstance(heatmap, Image.Image) and heatmap.size == (256, 256)
        enrolled = client.enroll(identity="client-test", images=[Image.open(paths[2])])
        assert enrolled["identity"] == "client-test" and enrolled["added"] == 1

    async def asynchronous() -> dict:
        async with bentoml.AsyncHTTPClient(image_server.url, timeout=120) as client:
            return await client.embed(images=[paths[0], Image.open(paths[1])])

    answer = asyncio.run(asynchronous())
    assert np.abs(np.asarray(answer["embeddings"]) - expected["embedding"][:2]).max() <= 1e-5


def test_openai_client_gets_embeddings(image_server: Server, store, digit_pngs) -> None:
    import base64

    import openai

    client = openai.OpenAI(base_url=f"{image_server.url}/v1", api_key="not-checked-here",
                           max_retries=0, timeout=60)
    urls = [f"data:image/png;base64,{base64.b64encode(b).decode()}" for b in digit_pngs[:3]]
    expected = Reference(store, IMAGE_URI).images(digit_pngs[:3])["embedding"]
    got = client.embeddings.create(model="zoo-digits", input=urls)  # base64, as the client asks
    assert got.object == "list" and got.model == "zoo-digits"
    assert [d.index for d in got.data] == [0, 1, 2]
    assert np.abs(np.asarray([d.embedding for d in got.data]) - expected).max() <= 1e-5
    one = client.embeddings.create(model="zoo-digits", input=urls[1], encoding_format="float")
    assert np.abs(np.asarray(one.data[0].embedding) - expected[1]).max() <= 1e-5
    assert client.models.list().data[0].id == "zoo-digits"
    for kwargs, error, message in (
            (dict(model="gpt-4o"), openai.NotFoundError, "not served here"),
            (dict(dimensions=8), openai.BadRequestError, "dimensions=8"),
            (dict(input="http://example.com/face.png"), openai.BadRequestError, "never fetched"),
            (dict(input="data:image/png;base64,%%%"), openai.BadRequestError, "base64"),
            (dict(input=[1.0, 2.0]), openai.BadRequestError, "embeds images")):
        with pytest.raises(error, match=message) as caught:
            client.embeddings.create(**{"model": "zoo-digits", "input": urls[0], **kwargs})
        assert caught.value.body["type"] == "invalid_request_error"  # OpenAI's error shape


def client_doc_blocks() -> list[tuple[str, str]]:
    """(language, code) of every code block in the "Clients" section of docs/serving.md."""
    import re

    text = (REPO / "docs" / "serving.md").read_text()
    section = text.split("### Clients", 1)[1].split("\n#", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.DOTALL)


def test_mlflow_pyfunc_scoring_server_and_the_documented_clients(
        image_server: Server, store, digit_pngs, tmp_path: Path) -> None:
    """Every registered version works with MLflow's own tools: the pyfunc and the scoring
    server (driven by MLflow's own client), preprocessed arrays and encoded images alike;
    then every client block of docs/serving.md runs against the live servers."""
    import base64

    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from support.process import free_port

    ref = Reference(store, IMAGE_URI)
    expected = ref.images(digit_pngs[:4])
    x = preprocess_images([Image.open(io.BytesIO(b)) for b in digit_pngs[:4]], ref.pre).numpy()
    mlflow.set_tracking_uri(store["MLFLOW_TRACKING_URI"])
    try:
        model = mlflow.pyfunc.load_model(IMAGE_URI)
        tabular = mlflow.pyfunc.load_model(TABULAR_URI)
    finally:
        mlflow.set_tracking_uri(None)
    arrays = model.predict(x)
    images = model.predict(pd.DataFrame({"image": digit_pngs[:4]}))
    for answer in (arrays, images):
        assert np.abs(np.stack(answer["embedding"]) - expected["embedding"]).max() <= 1e-4
        assert list(answer["label"]) == [ref.pre.class_names[j]
                                         for j in expected["logits"].argmax(1)]
    data = emitters()
    table = pd.DataFrame(data.x[:5].numpy().astype(float), columns=data.feature_names)
    rows = tabular.predict(table)
    tab_ref = Reference(store, TABULAR_URI).rows(data.x[:5].tolist())
    assert np.abs(np.stack(rows["embedding"]) - tab_ref["embedding"]).max() <= 1e-4

    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["MLFLOW_TRACKING_URI"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve",
                             "-m", IMAGE_URI, "--env-manager", "local", "-h", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        client = ScoringServerClient("127.0.0.1", port)
        try:
            client.wait_server_ready(timeout=180, scoring_server_proc=proc)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {proc.stderr.read()[-3000:]}") from None
        by_array = client.invoke(x).get_predictions()
        encoded = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in digit_pngs[:4]]})
        by_image = client.invoke(encoded).get_predictions()
        for answer in (by_array, by_image):
            assert np.abs(np.stack(answer["embedding"].map(np.asarray))
                          - expected["embedding"]).max() <= 1e-4
            assert list(answer["label"]) == list(images["label"])

        blocks = client_doc_blocks()
        assert [lang for lang, _ in blocks].count("python") >= 4 and len(blocks) >= 6
        (tmp_path / "digit.png").write_bytes(digit_pngs[0])
        run_env = {**env, "ZOO_ADMIN_KEY": ADMIN_KEY}
        host = image_server.url.removeprefix("http://")
        for lang in ("python", "bash"):  # one process per language: the blocks in turn
            code = "\n\n".join(block for kind, block in blocks if kind == lang)
            code = (code.replace("localhost:3000", host)
                    .replace("localhost:5001", f"127.0.0.1:{port}"))
            command = ([sys.executable, "-c", code] if lang == "python"
                       else ["bash", "-c", "set -euo pipefail\n" + code])
            done = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, (code, done.stderr[-2000:])
            printed = done.stdout.strip().splitlines()
            assert printed and '"error"' not in done.stdout, (code, done.stdout)
            if lang == "python":  # each block prints at least one line
                assert len(printed) >= sum(kind == lang for kind, _ in blocks), printed
    finally:
        proc.terminate()
        proc.wait(timeout=30)
