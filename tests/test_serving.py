"""The BentoML server, over real HTTP: answers equal the exported ONNX model's, bad input gets
a 4xx and the server stays up, the gallery survives a restart, a built Bento serves alone.

One image model (resnet18 on digits) and one tabular model (residual_mlp on emitters) are
trained for one epoch into a temporary store, registered and exported, once per module.
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from serving.process import BENTOML, REPO, Server
from training.config import TrainConfig
from training.export import ExportConfig, export_model
from training.registration import register_best, runs_of_experiment
from training.run import train
from zoo.data import Preprocessing, preprocess_images, preprocess_rows
from zoo.data.emitters import emitters
from zoo.export.onnx_format import read_metadata

pytestmark = pytest.mark.slow

IMAGE_URI = "models:/zoo-digits@champion"
TABULAR_URI = "models:/zoo-emitters@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both models trained, registered and exported; the env a server needs to find them."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for cfg in (TrainConfig(model="resnet18", loss="arcface", data="digits", epochs=1,
                                batch_size=64, embedding_dim=32, experiment="zoo-digits",
                                plots=False),
                    TrainConfig(model="residual_mlp", loss="arcface", data="emitters", epochs=1,
                                batch_size=64, embedding_dim=16, experiment="zoo-emitters",
                                plots=False)):
            train(cfg)
            register_best(runs_of_experiment(cfg.experiment), "test_precision_at_1")
        for model_uri in (IMAGE_URI, TABULAR_URI):
            export_model(ExportConfig(model_uri=model_uri, formats="onnx"))
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mlflow.set_tracking_uri(None)
    return {"MLFLOW_TRACKING_URI": uri, "ZOO_CACHE_DIR": str(root / "cache"),
            "root": str(root)}


def _env(store: dict[str, str], model_uri: str, gallery: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": store["MLFLOW_TRACKING_URI"], "ZOO_MODEL_URI": model_uri,
            "ZOO_CACHE_DIR": store["ZOO_CACHE_DIR"],
            "ZOO_GALLERY_DIR": str(Path(store["root"]) / gallery), **extra}


class Reference:
    """The exported ONNX model run directly: what every served answer must equal."""

    def __init__(self, store: dict[str, str], model_uri: str) -> None:
        mlflow.set_tracking_uri(store["MLFLOW_TRACKING_URI"])
        try:
            version = mlflow.MlflowClient().get_model_version_by_alias(
                *model_uri.removeprefix("models:/").split("@"))
            path = mlflow.artifacts.download_artifacts(
                f"runs:/{version.run_id}/export/model.onnx",
                dst_path=str(Path(store["root"]) / f"ref-{version.name}"))
        finally:
            mlflow.set_tracking_uri(None)
        self.version = str(version.version)
        self.pre = Preprocessing.from_dict(read_metadata(Path(path))["preprocessing"])
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {"input": x})))

    def images(self, pngs: list[bytes]) -> dict[str, np.ndarray]:
        return self(preprocess_images([Image.open(io.BytesIO(b)) for b in pngs], self.pre).numpy())

    def rows(self, rows: list[list[float]]) -> dict[str, np.ndarray]:
        return self(preprocess_rows(np.asarray(rows), self.pre).numpy())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    digits = load_digits()
    return [png((digits.images[i] * 255 / 16).astype(np.uint8)) for i in range(0, 1700, 17)]


def files(pngs: list[bytes], field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]


@pytest.fixture(scope="module")
def image_server(store: dict[str, str]):
    with Server("serving.service:ZooService", _env(store, IMAGE_URI, "gallery-digits")) as server:
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
                     data={"top_k": "3"}, timeout=60).json()
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

    stranger = png(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    enrolled = httpx.post(f"{image_server.url}/enroll", files=files([stranger, stranger]),
                          data={"identity": " Ada Lovelace "}, timeout=60)
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["identity"] == "Ada Lovelace" and enrolled.json()["entries"] == 2

    def who() -> dict:
        return httpx.post(f"{image_server.url}/identify", files=files([stranger]),
                          timeout=60).json()["results"][0]

    assert who()["identity"] == "Ada Lovelace" and who()["similarity"] > 0.999
    # The enrollment is on disk: a new server with the same gallery folder knows her.
    env = _env(store, IMAGE_URI, "gallery-digits")
    with Server("serving.service:ZooService", env) as again:
        answer = httpx.post(f"{again.url}/identify", files=files([stranger]), timeout=60).json()
        assert answer["results"][0]["identity"] == "Ada Lovelace"


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
        ("image over the byte limit", "/embed", {"files": files([big])}, 413, "ZOO_MAX_IMAGE_BYTES"),
        ("rows for an image model", "/embed", {"json": {"rows": [[1.0, 2.0]]}}, 400, "not rows"),
        ("unknown GradCAM class", "/gradcam",
         {"files": files(digit_pngs[:1], "image"), "data": {"target": "eleven"}}, 400,
         "unknown class 'eleven'"),
        ("empty identity", "/enroll", {"files": files(digit_pngs[:1]), "data": {"identity": " "}},
         400, "identity is empty"),
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


def test_tabular_server(store) -> None:
    import httpx

    ref = Reference(store, TABULAR_URI)
    data = emitters()
    rows = data.x[:10].tolist()
    expected = ref.rows(rows)
    # a small request limit too (the image pixel limit is tested in test_serving_parts.py)
    env = _env(store, TABULAR_URI, "gallery-em", ZOO_MAX_REQUEST_BYTES="20000")
    with Server("serving.service:ZooService", env) as server:
        got = httpx.post(f"{server.url}/embed", json={"rows": rows * 100}, timeout=60)
        assert got.status_code == 413 and "ZOO_MAX_REQUEST_BYTES" in got.json()["error"]
        got = httpx.post(f"{server.url}/embed", json={"rows": rows}, timeout=60)
        assert got.status_code == 200, got.text
        assert np.abs(np.asarray(got.json()["embeddings"]) - expected["embedding"]).max() <= 1e-5
        top = httpx.post(f"{server.url}/classify", json={"rows": rows, "top_k": 1},
                         timeout=60).json()["predictions"]
        assert [r[0]["label"] for r in top] == [ref.pre.class_names[j]
                                                for j in expected["logits"].argmax(1)]
        who = httpx.post(f"{server.url}/identify", json={"rows": rows[:3]}, timeout=60).json()
        assert len(who["results"]) == 3
        width = ref.pre.num_features
        for body, message in (({"rows": [rows[0][:-1]]}, f"row 0 has {width - 1} values"),
                              ({"rows": []}, "no rows"), ({}, "no rows")):
            bad = httpx.post(f"{server.url}/embed", json=body, timeout=60)
            assert bad.status_code == 400 and message in bad.json()["error"], bad.text
        bad = httpx.post(f"{server.url}/embed", files=files([png(np.zeros((8, 8), np.uint8))]),
                         timeout=60)
        assert bad.status_code == 400 and "not images" in bad.json()["error"]
        bad = httpx.post(f"{server.url}/gradcam", files=files([png(np.zeros((8, 8), np.uint8))],
                                                              "image"), timeout=60)
        assert bad.status_code == 400 and "image models" in bad.json()["error"]
        ok = httpx.post(f"{server.url}/enroll", json={"rows": rows[:2], "identity": "radar-7"},
                        timeout=60)
        assert ok.status_code == 200 and ok.json()["entries"] == 2


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


def test_built_bento_serves_without_the_store(store, digit_pngs, tmp_path: Path) -> None:
    import httpx

    home = tmp_path / "bentoml"
    env = {**os.environ, **_env(store, IMAGE_URI, "gallery-bento"), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "true"}
    built = subprocess.run([BENTOML, "build", "-f", "serving/bentofile.yaml", "."], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert 'Successfully built Bento(tag="zoo:' in built.stdout
    # No MLflow store where the Bento is served: the model must come from the Bento itself.
    gone = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no-such-store.db'}",
            "BENTOML_HOME": str(home), "ZOO_CACHE_DIR": str(tmp_path / "empty-cache"),
            "ZOO_GALLERY_DIR": str(tmp_path / "bento-gallery"), "BENTOML_DO_NOT_TRACK": "true"}
    with Server("zoo:latest", gone, cwd=tmp_path) as server:
        info = httpx.get(f"{server.url}/model", timeout=30).json()
        assert info["uri"] == IMAGE_URI and info["name"] == "zoo-digits"
        expected = Reference(store, IMAGE_URI).images(digit_pngs[:4])["embedding"]
        got = httpx.post(f"{server.url}/embed", files=files(digit_pngs[:4]), timeout=60).json()
        assert np.abs(np.asarray(got["embeddings"]) - expected).max() <= 1e-5
    assert not (tmp_path / "no-such-store.db").exists()
