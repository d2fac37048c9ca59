"""The packaged server: what a Bento holds (the server's code, serving/ and zoo/, never
training/, and requirements that cover every package that code imports), a Bento built from
a clean clone and served where neither the checkout, the training code nor MLflow can be
imported, and the service module loading with the training code unimportable.

The served tests train one image model (resnet18 on digits, one epoch) of their own, so this
file runs beside tests/test_serving.py on the other pytest-xdist worker.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

from support.process import BENTOML, Server, isolated_env
from support.serving_store import (IMAGE_URI, Reference, clean_clone, digit_images, files,
                                   make_store, store_env)
from training.config import TrainConfig
from zoo.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "serving" / "bentofile.yaml"
#: Imported only to read an MLflow store, which a Bento never does (its model is packed;
#: the served Bento is tested with MLflow unimportable).
STORE_ONLY = {"serving/mlflow_source.py": {"mlflow"}}


def bento_files() -> list[Path]:
    spec = yaml.safe_load(BENTOFILE.read_text())
    return sorted({path for pattern in spec["include"] for path in REPO.glob(pattern)})


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports that are neither the standard library
    nor the project's own."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "zoo", "serving", "training"}


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install here, their dependencies included."""
    env = default_environment()
    todo = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = _canonical(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for extra in req.extras or {""}:
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({**env, "extra": extra}):
                    todo.append(sub)
    return seen


def _owners_by_files(module: str) -> list[str]:
    """The distributions that install ``module``'s package folder: for wheels whose
    top_level.txt omits it (dlib-bin lists only its extension, ``_dlib_pybind11``)."""
    wanted = f"{module}/__init__.py"
    return [d.metadata["Name"] for d in metadata.distributions()
            if any(str(f) == wanted for f in d.files or ())]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_bento_holds_the_server_code_and_no_training_code() -> None:
    files = [p.relative_to(REPO).as_posix() for p in bento_files()]
    assert "serving/service.py" in files and "zoo/names.py" in files
    assert not [f for f in files if f.startswith("training/")]
    for path in (REPO / "serving").glob("*.py"):  # the server never imports the trainer
        assert "training" not in {m.split(".")[0] for m in _imported(path)}, path


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_bento_requirements_cover_every_import() -> None:
    """Each package the Bento's modules import is one its bentofile installs (or a dependency
    of one), so the container that `bentoml containerize` builds can import them."""
    packages = yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]
    closure = installed_closure(packages)
    owners = metadata.packages_distributions()
    missing = {}
    for path in bento_files():
        relative = path.relative_to(REPO).as_posix()
        for module in third_party_imports(path) - STORE_ONLY.get(relative, set()):
            dists = {_canonical(d) for d in owners.get(module) or _owners_by_files(module)}
            if not dists & closure:
                missing.setdefault(module, []).append(relative)
    assert not missing, ("imported by the Bento's code but not installed by its bentofile: "
                         f"{missing}")


# --- the built Bento, served alone -----------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One image model trained, registered and exported into a store of this module's."""
    return make_store(tmp_path_factory.mktemp("bento"), [
        TrainConfig.of(model="resnet18", loss="arcface", data="digits", epochs=1, batch_size=64,
                       embedding_dim=32, experiment="zoo-digits", plots=False)])


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    return digit_images()


@pytest.mark.slow
def test_built_bento_serves_alone(store, digit_pngs, tmp_path: Path) -> None:
    """The README's "as a Bento" commands: built from a clean clone, then served from another
    folder as in a container: no MLflow store, and neither the checkout, the training code nor
    MLflow importable. The Bento holds serving/ and zoo/ and no training code."""
    import base64

    import httpx
    import openai

    home = tmp_path / "bentoml"
    clone = clean_clone(tmp_path / "clone")
    env = {**os.environ, **store_env(store, IMAGE_URI, "gallery-bento"), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "true", **isolated_env(hide=("training",), checkout=False)}
    built = subprocess.run([BENTOML, "build", "-f", "serving/bentofile.yaml", ".", "--arg",
                            f"model_uri={IMAGE_URI}"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert 'Successfully built Bento(tag="zoo:' in built.stdout
    src = next((home / "bentos" / "zoo").glob("*/src"))
    assert (src / "serving" / "service.py").is_file() and (src / "zoo" / "names.py").is_file()
    assert not (src / "training").exists()
    # served from elsewhere: the model, the code and every name come from the Bento alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gone = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no-such-store.db'}",
            "BENTOML_HOME": str(home), "ZOO_CACHE_DIR": str(tmp_path / "empty-cache"),
            "ZOO_GALLERY_DIR": str(tmp_path / "bento-gallery"), "BENTOML_DO_NOT_TRACK": "true",
            "ZOO_WORKERS": "1",  # one process starts sooner; several are tested elsewhere
            **isolated_env(hide=("training", "mlflow"), checkout=False)}
    reference = Reference(store, IMAGE_URI)
    with Server("zoo:latest", gone, cwd=elsewhere) as server:
        info = httpx.get(f"{server.url}/model", timeout=30).json()
        assert info["uri"] == IMAGE_URI and info["name"] == "zoo-digits"
        expected = reference.images(digit_pngs[:4])["embedding"]
        got = httpx.post(f"{server.url}/embed", files=files(digit_pngs[:4]), timeout=60).json()
        assert np.abs(np.asarray(got["embeddings"]) - expected).max() <= 1e-5
        # /identify against the exported gallery (the training split) the Bento carries
        gallery = Gallery.load(Path(mlflow.artifacts.download_artifacts(
            f"runs:/{reference.run_id}/export/gallery", dst_path=str(tmp_path / "g"),
            tracking_uri=store["MLFLOW_TRACKING_URI"])))
        similarity = expected @ gallery.vectors().T
        results = httpx.post(f"{server.url}/identify", files=files(digit_pngs[:4]),
                             timeout=60).json()["results"]
        for result, row in zip(results, similarity, strict=True):
            best = gallery.labels[int(row.argmax())]
            assert abs(result["similarity"] - row.max()) <= 1e-4
            assert result["identity"] == (best if result["known"] else "unknown")
            # no admin key: only the matches at or above the threshold are listed
            assert [m["identity"] for m in result["matches"][:1]] == [best] * result["known"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                               timeout=60)
        urls = [f"data:image/png;base64,{base64.b64encode(b).decode()}" for b in digit_pngs[:2]]
        answer = client.embeddings.create(model="zoo-digits", input=urls)
        assert np.abs(np.asarray([d.embedding for d in answer.data]) - expected[:2]).max() <= 1e-5
        # no admin key here: the gallery is read-only
        refused = httpx.post(f"{server.url}/enroll", files=files(digit_pngs[:1]),
                             data={"identity": "x"}, timeout=60)
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert not (tmp_path / "no-such-store.db").exists()


@pytest.mark.slow
def test_service_imports_without_the_training_code(store) -> None:
    """serving/ reads MLflow through serving.mlflow_source alone: with ``training`` not
    importable the service module loads its model from the store."""
    code = ("import sys, serving.service as s; "
            "print(s.BUNDLE.info.uri, 'training' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=180,
                          env={**os.environ, **store_env(store, IMAGE_URI, "gallery-import"),
                               **isolated_env(hide=("training",))})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [IMAGE_URI, "False"]
