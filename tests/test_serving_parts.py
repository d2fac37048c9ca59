"""The server's parts without HTTP: batching, GradCAM layers, inputs, settings (the gallery
store: test_gallery_store.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.errors import RequestError
from serving.gallery.names import identity_name
from serving.inputs.images import PixelBudget, decode_images, open_image
from serving.inputs.reader import model_input
from serving.inputs.uploads import NotAFile, Upload, _to_upload
from serving.model.batcher import Batcher
from serving.model.gradcam import Explainer, default_target_layer
from serving.model.served import check_finite
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.models import create_model


def test_batcher_coalesces_concurrent_calls_and_splits_answers() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)  # hold the first batch so the others queue behind it
        return {"double": x * 2}

    batcher = Batcher(model, max_batch_size=8, on_batch=sizes.append)

    async def main() -> list[dict[str, np.ndarray]]:
        first = asyncio.ensure_future(batcher(np.full((1, 2), 0, np.float32)))
        await asyncio.sleep(0.2)  # the model thread has taken it and waits for `release`
        rest = [asyncio.ensure_future(batcher(np.full((n, 2), i, np.float32)))
                for i, n in enumerate([2, 3, 1, 20], start=1)]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(main())
    batcher.close()
    for i, (n, answer) in enumerate(zip([1, 2, 3, 1, 20], answers)):
        assert answer["double"].shape == (n, 2) and (answer["double"] == 2 * i).all()
    # 2 + 3 + 1 queued behind the first call share one batch; the 20 go in chunks of 8.
    assert sizes == [1, 6, 8, 8, 4]


def test_batcher_gives_a_failure_to_every_caller_of_the_batch() -> None:
    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x}

    batcher = Batcher(model, max_batch_size=4)

    async def main() -> tuple:
        bad = batcher(np.array([[-1.0]]))
        good = batcher(np.array([[1.0]]))
        return await asyncio.gather(bad, good, return_exceptions=True)

    first, second = asyncio.run(main())
    batcher.close()
    assert isinstance(first, ValueError)
    # The second call either shared the failing batch or ran alone and succeeded.
    assert isinstance(second, ValueError) or second["y"][0, 0] == 1.0


def test_a_bad_output_fails_only_the_caller_it_belongs_to() -> None:
    """The batcher checks outputs once per batch; when the batch fails, only the caller
    whose rows are not finite gets the error, naming its own input."""
    release = threading.Event()
    sizes: list[int] = []

    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)
        with np.errstate(invalid="ignore"):
            return {"embedding": np.log(x)}  # log(-1) is NaN

    batcher = Batcher(model, max_batch_size=8, on_batch=sizes.append, check=check_finite)

    async def main() -> list:
        first = asyncio.ensure_future(batcher(np.ones((1, 2))))
        await asyncio.sleep(0.2)  # the model holds the first batch; the next three queue
        rest = [asyncio.ensure_future(batcher(x)) for x in
                (np.ones((2, 2)), np.array([[1.0, 1.0], [1.0, -1.0]]), np.full((1, 2), 2.0))]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    first, good, bad, last = asyncio.run(main())
    big = np.ones((20, 2))  # in chunks of 8; the index is the request's, not the chunk's
    big[17, 1] = -1
    with pytest.raises(RequestError, match="embedding of input 17 is not finite"):
        asyncio.run(batcher(big))
    batcher.close()
    assert sizes[:2] == [1, 5]  # the three shared one batch
    assert isinstance(bad, RequestError) and "embedding of input 1 is not finite" in str(bad)
    assert (good["embedding"] == 0).all() and first["embedding"].shape == (1, 2)
    assert np.allclose(last["embedding"], np.log(2.0))


def test_one_small_image_is_decoded_on_the_loop_and_others_in_threads(monkeypatch) -> None:
    """One small image skips the two thread hops (the light, frequent request); several
    images, or a large one, are decoded in threads. Both give the offline arrays."""
    import anyio.to_thread

    import serving.inputs.images as inputs

    settings = ServeSettings()
    pre = Preprocessing("image", (3, 32, 32), [0.5] * 3, [0.25] * 3, ["a"])
    rng = np.random.default_rng(0)
    small = Upload("s.png", _png(rng.integers(0, 255, (8, 8), np.uint8)))
    large = Upload("l.png", _png(rng.integers(0, 255, (200, 200), np.uint8)))
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(fn, *args, **kwargs):
        hops.append(fn.__name__)
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(inputs.anyio.to_thread, "run_sync", counted)
    budget = PixelBudget(settings.max_request_pixels)
    for uploads, expected in (([small], []),
                              ([small, small], ["checked_headers", "_decode", "_decode"]),
                              ([large], ["checked_headers", "_decode"])):
        hops.clear()
        x, _ = asyncio.run(decode_images(uploads, pre, settings, budget))
        assert hops == expected
        assert np.array_equal(x, inputs.images_to_array(uploads, pre, settings)[0])
    assert len(small.data) <= inputs.SMALL_IMAGE_BYTES < len(large.data)


@pytest.mark.parametrize("name,size,layer", [
    ("resnet18", 32, "backbone.layer2"),  # layer4 is 1x1 at 32 px: a uniform map
    ("resnet18", 112, "backbone.layer4"),
    ("convnext_atto", 32, "backbone.stages.1"),
    ("mobilenetv3_small_100", 64, "backbone.blocks.3"),
    ("hybrid", 32, "backbone.cnn.stages.1"),  # the ConvNeXt branch; Swin's maps are NHWC
])
def test_gradcam_layer_has_a_map_of_at_least_4x4(name: str, size: int, layer: str) -> None:
    model = create_model(name, num_classes=3, embedding_dim=8, image_size=size).eval()
    assert default_target_layer(model, (3, size, size)).name == layer


def test_gradcam_explains_a_stage_read_out_with_that_stage() -> None:
    model = create_model("timm/vgg11_bn", num_classes=3, embedding_dim=8, in_chans=1,
                         image_size=32, stage=2, grid=2).eval()
    explainer = Explainer(model, (1, 32, 32))
    assert explainer.layer.name == "backbone.body"  # the 8x8 map the grid pools
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))
    result = explainer.explain(torch.randn(1, 1, 32, 32), image, "gradcam",
                               class_names=["a", "b", "c"])
    assert result.overlay.size == (256, 256) and result.target in "abc"


def test_gradcam_on_a_vision_transformer_reshapes_tokens() -> None:
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, embedding_dim=8,
                         image_size=32).eval()
    explainer = Explainer(model, (3, 32, 32))
    assert explainer.layer.name.endswith(".norm1") and explainer.layer.reshape is not None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    x = torch.randn(1, 3, 32, 32)
    for method in ("gradcam", "gradcam++"):
        result = explainer.explain(x, image, method, class_names=["a", "b", "c"])
        assert result.overlay.size == (256, 256) and result.target in "abc"
    similar = explainer.explain(x, image, "gradcam", reference=explainer.embedding(x + 0.1))
    assert similar.target == "similarity" and 0.5 < similar.score <= 1.0


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_inputs_are_checked_before_decoding() -> None:
    settings = ServeSettings(max_image_bytes=5000, max_image_pixels=64 * 64, max_images=3)
    pre = Preprocessing("image", (3, 16, 16), [0.5] * 3, [0.25] * 3, ["a", "b"])
    small = _png(np.zeros((20, 20), np.uint8))
    x, images = model_input([Upload("a.png", small)] * 2, None, pre, settings)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.uint8 and images == []
    cases = [
        ([Upload("n.png", _png(np.random.default_rng(0).integers(0, 255, (90, 90), np.uint8)))],
         413, "ZOO_MAX_IMAGE_BYTES"),
        ([Upload("w.png", _png(np.zeros((70, 70), np.uint8)))], 413, "70x70 pixels"),
        ([Upload("x.txt", b"hello")], 400, "'x.txt') is not an image"),
        ([Upload("", b"")], 400, "image 0 is empty"),
        ([Upload("a.png", small)] * 4, 413, "4 images in one request"),
        ([], 400, "no images"),
    ]
    for uploads, status, message in cases:
        with pytest.raises(RequestError, match=re.escape(message)) as err:
            model_input(uploads, None, pre, settings)
        assert err.value.status == status
    with pytest.raises(RequestError, match="not rows"):
        model_input(None, [[1.0, 2.0]], pre, settings)
    tabular = Preprocessing("tabular", (3,), [0.0] * 3, [1.0] * 3, ["a", "b"], ["f", "g", "h"])
    rows, _ = model_input(None, [[1, 2, 3]], tabular, settings)
    assert rows.dtype == np.float32 and rows.shape == (1, 3)
    with pytest.raises(RequestError,
                       match=r"row 1 has 2 values; the model takes 3 features \(f, g"):
        model_input(None, [[1, 2, 3], [1, 2]], tabular, settings)
    with pytest.raises(RequestError, match="not images"):
        model_input([Upload("a.png", small)], None, tabular, settings)
    assert open_image(Upload("a.png", small), 0, settings).size == (20, 20)


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_hostile_images_get_a_4xx_that_names_the_problem() -> None:
    settings = ServeSettings(max_image_pixels=64 * 64, max_request_pixels=3 * 40 * 40)
    pre = Preprocessing("image", (3, 16, 16), [0.5] * 3, [0.25] * 3, ["a", "b"])
    grey = Image.fromarray(np.full((40, 40), 90, np.uint8))
    cases = [
        # a text value where a file is expected: refused, never fetched
        ([_to_upload("http://example.com/x.png")], 400, "a text value, not a file"),
        ([Upload("a.png", _encoded(grey, "PNG"))] * 4, 413, "ZOO_MAX_REQUEST_PIXELS"),
        ([Upload("a.gif", _encoded(grey, "GIF"))], 400, "not an image in an accepted format"),
        ([Upload("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")], 400,
         "not an image in an accepted format"),
        ([Upload("cut.png", _encoded(grey, "PNG")[:60])], 400, "broken image"),
    ]
    for uploads, status, message in cases:
        with pytest.raises(RequestError, match=re.escape(message)) as err:
            model_input(uploads, None, pre, settings)
        assert err.value.status == status
    grey_model = Preprocessing("image", (1, 16, 16), [0.5], [0.25], ["a", "b"])
    with pytest.raises(RequestError, match="in mode LAB, which cannot be converted to grey"):
        model_input([Upload("lab.tif", _encoded(Image.new("LAB", (20, 20)), "TIFF"))], None,
                    grey_model, settings)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"):
        fmt = {"CMYK": "JPEG", "YCbCr": "JPEG"}.get(mode, "TIFF")
        image = Image.new(mode, (20, 20))
        data = _encoded(image.convert("RGB") if mode == "YCbCr" else image, fmt)
        assert model_input([Upload("m", data)], None, pre, settings)[0].shape == (1, 3, 16, 16)
    tabular = Preprocessing("tabular", (2,), [0.0] * 2, [1.0] * 2, ["a", "b"], ["f", "g"])
    with pytest.raises(RequestError, match="row 1 has a value too large for float32"):
        model_input(None, [[1, 2], [1e300, 0]], tabular, settings)
    assert isinstance(_to_upload(["x"]), NotAFile)


def _png_in_chunks(image: Image.Image, size: int) -> bytes:
    """``image`` as a PNG whose compressed data is split into IDAT chunks of ``size`` bytes."""
    import struct
    import zlib

    data = _encoded(image, "PNG")
    chunks, at, compressed = [], 8, b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IDAT":
            compressed += body
        elif kind != b"IEND":
            chunks.append(data[at:at + 12 + length])
        at += 12 + length

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    pieces = [chunk(b"IDAT", compressed[i:i + size]) for i in range(0, len(compressed), size)]
    return data[:8] + b"".join(chunks) + b"".join(pieces) + chunk(b"IEND", b"")


def test_files_that_cost_more_to_decode_than_their_pixels_are_refused_first() -> None:
    """Decoding bombs in every accepted format, refused before a pixel is decoded: a JPEG of
    too many scans, a TIFF of too many strips, a PNG of too many chunks, several frames."""
    from support.hostile import scan_bomb_jpeg

    settings = ServeSettings()
    pre = Preprocessing("image", (1, 16, 16), [0.5], [0.25], ["a", "b"])
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    tall = Image.new("L", (4, 5000))
    pages = io.BytesIO()
    noise.save(pages, "TIFF", save_all=True, append_images=[noise])
    moving = io.BytesIO()
    inverse = Image.fromarray(255 - np.asarray(noise))
    noise.convert("RGB").save(moving, "WEBP", save_all=True,
                              append_images=[inverse.convert("RGB")])
    strips = io.BytesIO()
    tall.save(strips, "TIFF", tiffinfo={278: 1})  # one row per strip: 5,000 strips
    cases = [(scan_bomb_jpeg(side=256, repeats=20), "JPEG of 120 scans"),
             (strips.getvalue(), "5,000 pieces"),
             (_png_in_chunks(noise, 4), "data chunks"),
             (pages.getvalue(), "several frames"), (moving.getvalue(), "several frames")]
    for data, message in cases:
        with pytest.raises(RequestError, match=message) as err:
            model_input([Upload("bomb", data)], None, pre, settings)
        assert err.value.status == 400
    # what real encoders write passes: progressive JPEG, a PNG in 8 KiB chunks, one TIFF page
    fine = [_encoded(noise, "PNG"), _png_in_chunks(noise, 8192), _encoded(noise, "TIFF")]
    progressive = io.BytesIO()
    noise.save(progressive, "JPEG", progressive=True)
    for data in (*fine, progressive.getvalue()):
        assert model_input([Upload("ok", data)], None, pre, settings)[0].shape == (1, 1, 16, 16)


def test_identity_names_are_normalised_and_plain() -> None:
    assert identity_name("  Ame\u0301lie ") == "Am\u00e9lie"  # NFC
    assert identity_name("12.50") == "12.50"
    for bad, message in (("a\x00b", "U+0000"), ("\x1b[31mred", "U+001B"),
                         ("abc\u202edcba", "U+202E"), ("", "empty"), ("x" * 201, "over the limit")):
        with pytest.raises(RequestError, match=re.escape(message)):
            identity_name(bad)


def test_the_pixel_budget_bounds_what_is_decoded_at_once(monkeypatch) -> None:
    """Eight requests of four images each, decoded together: never more than the budget's
    pixels at once, and every image done."""
    import time

    import serving.inputs.images as inputs

    settings = ServeSettings(max_request_pixels=4 * 64 * 64)
    pre = Preprocessing("image", (1, 8, 8), [0.5], [0.25], ["a"])
    budget = PixelBudget(2 * 64 * 64)
    data = _encoded(Image.fromarray(np.full((64, 64), 7, np.uint8)), "PNG")
    lock, now, peak = threading.Lock(), [0], [0]
    decode = inputs._decode

    def watched(image, *args):
        with lock:
            now[0] += image.size[0] * image.size[1]
            peak[0] = max(peak[0], now[0])
        time.sleep(0.005)
        try:
            return decode(image, *args)
        finally:
            with lock:
                now[0] -= image.size[0] * image.size[1]

    monkeypatch.setattr(inputs, "_decode", watched)

    async def main():
        return await asyncio.gather(*(decode_images([Upload("a", data)] * 4, pre, settings,
                                                    budget) for _ in range(8)))

    results = asyncio.run(main())
    assert [r[0].shape for r in results] == [(4, 1, 8, 8)] * 8
    assert peak[0] == budget.total and budget.free == budget.total  # full, never over


def test_forms_never_fetch_and_keep_text_as_sent(monkeypatch) -> None:
    """BentoML's reader downloads a text value of a file field; the zoo's hands it on."""
    import httpx
    from starlette.requests import Request

    from serving.http.multipart import FormReader, install
    from _bentoml_impl import serde

    def no_client(*args, **kwargs):
        raise AssertionError("an HTTP client was created: the server tried to fetch a URL")

    monkeypatch.setattr(httpx, "AsyncClient", no_client)
    monkeypatch.setattr(serde, "ALL_SERDE", dict(serde.ALL_SERDE))
    install(max_files=4)
    reader = serde.ALL_SERDE["multipart/form-data"]
    assert issubclass(reader, FormReader)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"images\"\r\n\r\n"
            b"http://93.184.216.34/x.png\r\n--b\r\nContent-Disposition: form-data; "
            b"name=\"identity\"\r\n\r\n12.50\r\n--b\r\nContent-Disposition: form-data; "
            b"name=\"target\"\r\n\r\n\"007\"\r\n--b--\r\n")

    class Form:
        multipart_fields = ["images"]
        model_fields = {"images": dataclasses.make_dataclass("F", [("annotation", object)])(
            list[str]), "identity": dataclasses.make_dataclass("F", [("annotation", object)])(str),
            "target": dataclasses.make_dataclass("F", [("annotation", object)])(str)}

        @classmethod
        def model_validate(cls, data):
            return data

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/enroll", "headers": [
        (b"content-type", b"multipart/form-data; boundary=b")]}, receive)
    data = asyncio.run(reader().parse_request(request, Form))
    # a JSON string literal (what BentoML's clients send for text) is unwrapped, nothing else
    assert data == {"images": ["http://93.184.216.34/x.png"], "identity": "12.50",
                    "target": "007"}
    assert isinstance(_to_upload(data["images"][0]), NotAFile)


def test_settings_come_from_the_environment_with_named_errors() -> None:
    settings = ServeSettings.from_env({"ZOO_MAX_IMAGES": "12", "ZOO_SPIN": "yes",
                                       "ZOO_MODEL_URI": "models:/x@y"})
    assert (settings.max_images, settings.spin, settings.model_uri) == (12, True, "models:/x@y")
    with pytest.raises(ValueError, match="ZOO_MAX_IMAGES='many' is not a valid int"):
        ServeSettings.from_env({"ZOO_MAX_IMAGES": "many"})
    with pytest.raises(ValueError, match="ZOO_WORKERS must be 0 \\(auto\\) or more"):
        ServeSettings.from_env({"ZOO_WORKERS": "-1"})
    assert ServeSettings(workers=3).worker_count == 3 and ServeSettings().worker_count >= 1


def test_keys_decide_each_route() -> None:
    from serving.http.keys import Keys

    keys = Keys(api="a", admin="b")
    assert keys.refusal("/livez", None) is None and keys.refusal("/metrics", None) is None
    assert keys.refusal("/embed", None)[0] == 401 and keys.refusal("/embed", "x")[0] == 401
    assert keys.refusal("/embed", "a") is None and keys.refusal("/v1/embeddings", "b") is None
    assert keys.refusal("/enroll", "a")[0] == 403 and keys.refusal("/enroll", None)[0] == 401
    assert keys.refusal("/identities/x/y", "b") is None
    closed, opened = Keys(), Keys(open_enroll=True)
    assert closed.refusal("/embed", None) is None  # no API key: the model is open
    assert closed.refusal("/enroll", "anything")[0] == 403  # no admin key: read-only
    assert "ZOO_OPEN_ENROLL" in closed.refusal("/identities", None)[1]
    assert opened.refusal("/enroll", None) is None
    # the docs need the API key when one is set, unless ZOO_OPEN_DOCS=true
    assert keys.refusal("/docs", None)[0] == 401 and keys.refusal("/openapi.json", "a") is None
    assert Keys(api="a", open_docs=True).refusal("/docs", None) is None
    assert closed.refusal("/docs", None) is None
    assert keys.refusal("/static_content/index.css", None) is None
    # who may see the matches below the threshold: the admin key, or anyone on an open gallery
    assert keys.is_admin("b") and not keys.is_admin("a") and not keys.is_admin(None)
    assert opened.is_admin(None) and not closed.is_admin("anything")


def test_key_settings_come_from_variables_or_files(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("  secret\n")
    keys = ServeSettings.from_env({"ZOO_API_KEY_FILE": str(key), "ZOO_ADMIN_KEY": "other"}).keys()
    assert (keys.api, keys.admin) == ("secret", "other")
    assert "secret" not in repr(ServeSettings.from_env({"ZOO_API_KEY": "secret"}))
    for env, message in (({"ZOO_API_KEY": "a", "ZOO_API_KEY_FILE": str(key)}, "not both"),
                         ({"ZOO_ADMIN_KEY_FILE": str(tmp_path / "none")}, "cannot read"),
                         ({"ZOO_API_KEY": "same", "ZOO_ADMIN_KEY": "same"}, "the same key")):
        with pytest.raises(ValueError, match=message):
            ServeSettings.from_env(env)


def test_header_values_are_safe_and_read_back() -> None:
    from urllib.parse import unquote

    from serving.schemas import header_value

    for name in ("3", "Ada Lovelace", "\u540d\u524d", "Zo\u00eb", "a%b", "x\r\nSet-Cookie: y"):
        value = header_value(name)
        value.encode("ascii")
        assert unquote(value) == name and "\r" not in value and "\n" not in value


def test_a_finished_request_leaves_no_timer_and_a_slow_one_still_gets_its_504() -> None:
    """BentoML's TimeoutMiddleware kept every request's timer (and its future) alive for the
    whole traffic timeout; the full garbage collections that walked them were the tail
    latency (serving/http/latency.py). Patched, a finished request leaves no timer behind."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving.http.latency import cancel_finished_request_timers

    cancel_finished_request_timers()
    cancel_finished_request_timers()  # idempotent

    async def quick(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(5)

    async def serve(app, timeout: float, count: int) -> tuple[list[int], int]:
        middleware, statuses = TimeoutMiddleware(app, timeout=timeout), []

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        await asyncio.gather(*(middleware({"type": "http"}, receive, send)
                               for _ in range(count)))
        loop = asyncio.get_running_loop()
        return statuses, sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    statuses, live = asyncio.run(serve(quick, 300.0, 200))
    assert statuses == [200] * 200 and live == 0
    statuses, live = asyncio.run(serve(slow, 0.05, 3))
    assert statuses == [504] * 3 and live == 0


def test_every_private_bentoml_name_the_edge_patches_is_there() -> None:
    """An upgrade of BentoML that moves one of them fails here, naming it and its user."""
    from serving.http.bentoml_private import NAMES, BentoMLChanged, PrivateName, check_all

    check_all()
    assert {n.used_by for n in NAMES} == {"route_metrics", "latency", "multipart",
                                           "request_logs", "connections"}
    for name in NAMES:
        assert (Path(__file__).parents[1] / "serving" / "http" / f"{name.used_by}.py").is_file()
    gone = PrivateName("bentoml._internal.server.http.traffic", "NoSuchMiddleware", "latency")
    with pytest.raises(BentoMLChanged, match=r"no bentoml\._internal\.server\.http\.traffic"
                                             r"\.NoSuchMiddleware, which serving/http/latency"):
        gone.load()
