"""A face model served over real HTTP: every face of a photo answered with its box, the
embedding of each face equal to the training-time embedding of its chip, identities right
after enrolling other photos of the same people, and a 422 for a photo without a face.

A resnet18 is trained with ``faces=align`` on a folder of photos (ORL faces pasted into
larger frames), registered and exported once per module; skipped without ORL or dlib.
"""
from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.process import REPO, Server
from support.serving_store import Reference, make_store, store_env
from support.faces import ORL_FACES, background, contains, paste_faces
from training.config import TrainConfig
from zoo.faces import FaceStage

pytest.importorskip("dlib", reason="the face stage needs the faces extra (dlib-bin)")
pytestmark = pytest.mark.slow

FACE_URI = "models:/zoo-faces@champion"
TRAINED = [f"s{i}" for i in range(3, 12)]  # the people the model trains on
ADMIN_KEY = "admin-key-for-face-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _photo(source: Path, rng: np.random.Generator) -> Image.Image:
    return paste_faces([source], rng, size=(320, 240), scale=(1.0, 1.6))[0]


@pytest.fixture(scope="module")
def face_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Photos of the trained people in ``faces/<person>/``; the model trained on them,
    registered as zoo-faces and exported to ONNX."""
    if not ORL_FACES.is_dir():
        pytest.skip(f"ORL faces not found at {ORL_FACES}")
    root = tmp_path_factory.mktemp("face-serving")
    rng = np.random.default_rng(0)
    for person in TRAINED:
        (root / "faces" / person).mkdir(parents=True)
        for k in range(1, 9):
            _photo(ORL_FACES / person / f"{k}.pgm", rng).save(root / "faces" / person / f"{k}.jpg",
                                                              quality=95)
    cfg = TrainConfig.of(model="resnet18", loss="softmax", data=str(root / "faces"),
                         faces="align", image_size=32, channels=1, epochs=25, lr=3e-3,
                         batch_size=16, embedding_dim=32, hflip=True, val_fraction=0.0,
                         test_fraction=0.25, monitor="none", experiment="zoo-faces",
                         plots=False, checkpoint=False)  # a checkpoint an epoch: +1 minute
    # 25 epochs: in the group photo each person's own name is 0.13-0.20 above anyone else's
    # (split seeds 0 and 1; 15 epochs left 0.01, 40 took 30 s more)
    return make_store(root, [cfg], {"ZOO_FACE_CACHE": str(root / "chips")})


@pytest.fixture(scope="module")
def face_server(face_store: dict[str, str]):
    env = store_env(face_store, FACE_URI, "gallery-faces", ZOO_ADMIN_KEY=ADMIN_KEY)
    with Server("serving.service:ZooService", env) as server:
        yield server


def _chip_embedding(ref: Reference, photo: Path, store: dict[str, str]) -> np.ndarray:
    """The training-time chip of ``photo`` (the chip cache's, as training read it) through
    the exported ONNX model."""
    from zoo.data.preprocessing import normalise, to_unit
    from zoo.faces.chips import FaceChipper

    chipper = FaceChipper(FaceStage(size=32), 1, cache_dir=Path(store["ZOO_FACE_CACHE"]))
    pixels, outcome = chipper(photo)
    assert outcome.cached  # read back as training read it
    x = normalise(to_unit(pixels[None]), ref.pre.mean, ref.pre.std).numpy()
    return ref(x)["embedding"][0]


def test_every_face_is_answered_with_its_box_and_its_chip_embedding(face_server, face_store
                                                                    ) -> None:
    import httpx

    ref = Reference(face_store, FACE_URI)
    photo = Path(face_store["root"]) / "faces" / TRAINED[0] / "1.jpg"
    got = httpx.post(f"{face_server.url}/embed", timeout=60,
                     files=[("images", ("1.jpg", photo.read_bytes(), "image/jpeg"))])
    assert got.status_code == 200, got.text
    body = got.json()
    (face,), = body["faces"]
    expected = _chip_embedding(ref, photo, face_store)
    assert np.abs(np.asarray(face["embedding"]) - expected).max() <= 1e-5
    assert body["embeddings"] == [face["embedding"]]
    assert len(face["landmarks"]) == 5 and face["score"] > 0

    # a group photo: three faces, each where it was pasted, largest first
    rng = np.random.default_rng(5)
    frame, pasted = paste_faces([ORL_FACES / p / "9.pgm" for p in TRAINED[:3]], rng)
    body = httpx.post(f"{face_server.url}/embed", timeout=60,
                      files=[("images", ("group.jpg", _jpeg(frame), "image/jpeg"))]).json()
    faces = body["faces"][0]
    assert len(faces) == 3
    for p in pasted:
        assert sum(contains(p.place, tuple(f["box"])) for f in faces) == 1
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True) and body["embeddings"][0] == faces[0]["embedding"]
    capped = httpx.post(f"{face_server.url}/embed", timeout=60, data={"max_faces": "2"},
                        files=[("images", ("group.jpg", _jpeg(frame), "image/jpeg"))]).json()
    assert [f["box"] for f in capped["faces"][0]] == [f["box"] for f in faces[:2]]

    # the raw-body route answers the same
    raw = httpx.post(f"{face_server.url}/embed", content=_jpeg(frame),
                     headers={"Content-Type": "image/jpeg"}, timeout=60).json()
    assert [f["box"] for f in raw["faces"][0]] == [f["box"] for f in faces]

    info = httpx.get(f"{face_server.url}/model", timeout=30).json()
    assert info["faces"]["mode"] == "align" and info["faces"]["size"] == 32


def test_enrolled_people_are_identified_in_a_group_photo(face_server) -> None:
    """Three people enrolled under new names from photos training never read are found in a
    group photo (by their new name, or by the class the exported gallery holds them as)."""
    import httpx

    rng = np.random.default_rng(7)
    people = TRAINED[3:6]
    names = {person: f"guest {person}" for person in people}
    for person in people:
        # photo 9 twice, at two places and scales; the group photo shows photo 10
        photos = [("images", (f"{k}.jpg", _jpeg(_photo(ORL_FACES / person / "9.pgm", rng)),
                              "image/jpeg")) for k in range(2)]
        got = httpx.post(f"{face_server.url}/enroll", data={"identity": names[person]},
                         files=photos, headers=ADMIN, timeout=60)
        assert got.status_code == 200, got.text
        assert got.json()["added"] == 2
    frame, pasted = paste_faces([ORL_FACES / p / "10.pgm" for p in people], rng)
    got = httpx.post(f"{face_server.url}/identify", timeout=60, data={"top_k": "3"},
                     headers=ADMIN,  # every match listed, those below the threshold too
                     files=[("images", ("group.jpg", _jpeg(frame), "image/jpeg"))])
    assert got.status_code == 200, got.text
    body = got.json()
    faces = body["faces"][0]
    assert len(faces) == 3 and body["results"][0]["identity"] == faces[0]["identity"]
    for p in pasted:
        (face,) = [f for f in faces if contains(p.place, tuple(f["box"]))]
        assert face["matches"][0]["identity"] in (names[p.person], p.person), faces


def test_photos_without_one_face_get_a_422_that_says_so(face_server) -> None:
    import httpx

    rng = np.random.default_rng(9)
    empty = _jpeg(background(rng))
    for route in ("embed", "identify", "classify"):
        got = httpx.post(f"{face_server.url}/{route}", timeout=60,
                         files=[("images", ("empty.jpg", empty, "image/jpeg"))])
        assert got.status_code == 422, got.text
        assert got.json()["error"] == "no face found in image 0 ('empty.jpg')"
    pair, _ = paste_faces([ORL_FACES / "s3" / "9.pgm", ORL_FACES / "s4" / "9.pgm"], rng)
    files = [("images", ("pair.jpg", _jpeg(pair), "image/jpeg"))]
    got = httpx.post(f"{face_server.url}/enroll", data={"identity": "two"}, files=files,
                     headers=ADMIN, timeout=60)
    assert got.status_code == 422 and "holds 2 faces" in got.json()["error"]
    got = httpx.post(f"{face_server.url}/enroll", data={"identity": "two", "face": "largest"},
                     files=files, headers=ADMIN, timeout=60)
    assert got.status_code == 200 and got.json()["added"] == 1, got.text
    got = httpx.post(f"{face_server.url}/embed", data={"max_faces": "0"}, files=files,
                     timeout=60)
    assert got.status_code in (400, 422)
    assert httpx.get(f"{face_server.url}/readyz", timeout=10).status_code == 200


def test_a_request_that_would_scan_too_many_pixels_is_refused_at_once(face_server) -> None:
    """32 photos of 1024x1024 (134M pixels for the detector, upsampled once) are over
    ZOO_MAX_DETECTOR_PIXELS: refused from their headers, before any is decoded."""
    import time

    import httpx

    grey = _jpeg(Image.new("RGB", (1024, 1024), (90, 90, 90)))
    start = time.monotonic()
    got = httpx.post(f"{face_server.url}/embed", timeout=60,
                     files=[("images", (f"{i}.jpg", grey, "image/jpeg")) for i in range(32)])
    assert got.status_code == 413 and "ZOO_MAX_DETECTOR_PIXELS" in got.json()["error"], got.text
    assert time.monotonic() - start < 3


def test_openai_pyfunc_and_predict_embed_the_largest_face(face_server, face_store,
                                                          tmp_path) -> None:
    import httpx
    import openai

    rng = np.random.default_rng(11)
    frame, pasted = paste_faces([ORL_FACES / "s5" / "10.pgm", ORL_FACES / "s6" / "10.pgm"],
                                rng, scale=(1.0, 1.0))
    jpeg = _jpeg(frame)
    served = httpx.post(f"{face_server.url}/embed", timeout=60,
                        files=[("images", ("g.jpg", jpeg, "image/jpeg"))]).json()
    largest = np.asarray(served["embeddings"][0])

    client = openai.OpenAI(base_url=f"{face_server.url}/v1", api_key="unused")
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    answer = client.embeddings.create(model="zoo-faces", input=[data_url])
    assert np.abs(np.asarray(answer.data[0].embedding) - largest).max() <= 1e-5

    mlflow.set_tracking_uri(face_store["MLFLOW_TRACKING_URI"])
    try:
        model = mlflow.pyfunc.load_model(FACE_URI)
        frame_out = model.predict(pd.DataFrame({"image": [jpeg]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert frame_out["face_box"][0] == served["faces"][0][0]["box"]
    assert np.abs(np.asarray(frame_out["embedding"][0]) - largest).max() <= 1e-4

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "group.jpg").write_bytes(jpeg)
    background(rng).save(folder / "empty.png")
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "MLFLOW_TRACKING_URI": face_store["MLFLOW_TRACKING_URI"],
           "ZOO_CACHE_DIR": face_store["ZOO_CACHE_DIR"],
           "ZOO_GALLERY_DIR": str(tmp_path / "gallery")}
    done = subprocess.run([sys.executable, "-m", "serving.predict", "--images", str(folder),
                           "--model-uri", FACE_URI, "--output", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    faces = [r for r in rows if r["file"] == "group.jpg"]
    assert [r["face"] for r in faces] == [" ".join(map(str, f["box"]))
                                          for f in served["faces"][0]]
    (empty,) = [r for r in rows if r["file"] == "empty.png"]
    assert empty["error"].startswith("no face found in image") and "empty.png" in empty["error"]


def test_gradcam_draws_the_box_and_the_map_on_the_whole_photo(face_server) -> None:
    import httpx

    rng = np.random.default_rng(13)
    frame, _ = paste_faces([ORL_FACES / "s7" / "10.pgm", ORL_FACES / "s8" / "10.pgm"], rng)
    files = [("images", ("g.jpg", _jpeg(frame), "image/jpeg"))]
    faces = httpx.post(f"{face_server.url}/embed", files=files, timeout=60).json()["faces"][0]
    got = httpx.post(f"{face_server.url}/gradcam", timeout=60,
                     files=[("image", ("g.jpg", _jpeg(frame), "image/jpeg"))])
    assert got.status_code == 200, got.text
    overlay = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGB"))
    assert overlay.shape == (384, 512, 3)  # the whole 640x480 photo, at most 512 px a side
    x0, y0, x1, y1 = (round(v * 0.8) for v in faces[0]["box"])  # the largest face's box
    middle = (y0 + y1) // 2
    assert tuple(overlay[middle, x0]) == (0, 255, 0) and tuple(overlay[y0, (x0 + x1) // 2]) \
        == (0, 255, 0)
    assert got.headers["X-Zoo-Target"] in TRAINED


def test_page_draws_a_box_on_each_face_and_says_why_a_photo_has_none(face_server,
                                                                      tmp_path: Path) -> None:
    """The page at /ui (support/browser.py): a group photo gets one box per face the server
    found, where it found it; a photo without a face gets the server's 422 beside it."""
    import httpx
    from playwright.sync_api import expect

    from support.browser import browser_page

    rng = np.random.default_rng(11)
    frame, _ = paste_faces([ORL_FACES / p / "10.pgm" for p in TRAINED[:3]], rng)
    group, empty = tmp_path / "group.jpg", tmp_path / "no-face.jpg"
    group.write_bytes(_jpeg(frame))
    empty.write_bytes(_jpeg(background(rng, (320, 240))))
    found = httpx.post(f"{face_server.url}/identify", timeout=60, files=[
        ("images", ("group.jpg", group.read_bytes(), "image/jpeg"))]).json()["faces"][0]
    refused = httpx.post(f"{face_server.url}/identify", timeout=60, files=[
        ("images", ("no-face.jpg", empty.read_bytes(), "image/jpeg"))])
    assert refused.status_code == 422
    with browser_page() as page:
        page.goto(f"{face_server.url}/ui/")  # no API key on this server: no key asked for
        expect(page.locator("#model-title")).to_contain_text("zoo-faces")
        page.set_input_files("#files", [str(group), str(empty)])
        boxes = page.locator("article.result[data-file='group.jpg'] .box")
        expect(boxes).to_have_count(len(found))
        photo = page.locator("article.result[data-file='group.jpg'] img.photo").bounding_box()
        for i, face in enumerate(found):  # each box where the server found its face
            box = boxes.nth(i).bounding_box()
            x0, y0, x1, y1 = face["box"]
            scale = photo["width"] / frame.width
            assert abs(box["x"] - (photo["x"] + x0 * scale)) <= 2
            assert abs(box["y"] - (photo["y"] + y0 * scale)) <= 2
            assert abs(box["width"] - (x1 - x0) * scale) <= 2
            expect(boxes.nth(i).locator(".label")).to_contain_text(face["identity"])
        expect(page.locator("article.result[data-file='no-face.jpg'] .error")).to_have_text(
            f"422: {refused.json()['error']}")
        # not to ZOO_SCREENSHOTS: the photo holds ORL's faces, which stay out of the repository
        page.screenshot(path=str(tmp_path / "ui-faces.png"), full_page=True)
