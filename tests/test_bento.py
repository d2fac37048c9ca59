"""The packaged server: what a Bento holds (the server's code, serving/ and zoo/, never
training/, and requirements that cover every package that code imports), a Bento built from
a clean clone and served where neither the checkout, the training code nor MLflow can be
imported, and the service module loading with the training code unimportable.

The served tests use a copy of test_serving.py's store (resnet18 on digits, one epoch), trained
once for the session by whichever pytest-xdist worker asks first.
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

from support.browser import browser_page, screenshot
from support.process import BENTOML, Server, isolated_env
from support.serving_store import (IMAGE_URI, Reference, clean_clone, digit_images, files,
                                   serving_store, store_env)
from zoo import names
from zoo.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "serving" / "bentofile.yaml"


def bento_files() -> list[Path]:
    spec = yaml.safe_load(BENTOFILE.read_text())
    left_out = {path for pattern in spec.get("exclude", []) for path in REPO.glob(pattern)}
    return sorted({path for pattern in spec["include"] for path in REPO.glob(pattern)}
                  - left_out)


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports that are neither the standard library
    nor the project's own."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "zoo", "serving", "training",
                                                   "mlflow_source"}


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
    assert {"serving/page/index.html", "serving/page/app.js", "serving/page/app.css",
            "serving/http/chain.py", "serving/gallery/store.py"} <= set(files)
    # no trainer, and no MLflow reader: the Bento's model is packed (tests/test_layout.py
    # checks that serving/ imports neither)
    assert not [f for f in files if f.startswith(("training/", "mlflow_source/"))]


def test_bento_requirements_cover_every_import() -> None:
    """Each package the Bento's modules import is one its bentofile installs (or a dependency
    of one), so the container that `bentoml containerize` builds can import them."""
    packages = yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]
    closure = installed_closure(packages)
    owners = metadata.packages_distributions()
    missing = {}
    for path in bento_files():
        if path.suffix != ".py":  # the page's HTML, CSS and JavaScript
            continue
        relative = path.relative_to(REPO).as_posix()
        for module in third_party_imports(path):
            dists = {_canonical(d) for d in owners.get(module) or _owners_by_files(module)}
            if not dists & closure:
                missing.setdefault(module, []).append(relative)
    assert not missing, ("imported by the Bento's code but not installed by its bentofile: "
                         f"{missing}")


# --- the built Bento, served alone -----------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The image model (and the tabular one) trained, registered and exported: a copy of the
    store test_serving.py serves from, trained once for the session."""
    return serving_store(tmp_path_factory, tmp_path_factory.mktemp("bento") / "store")


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    return digit_images()


@pytest.fixture(scope="module")
def bento_home(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's "as a Bento" build, from a clean clone: the BENTOML_HOME that holds it."""
    root = tmp_path_factory.mktemp("built")
    home = root / "bentoml"
    clone = clean_clone(root / "clone")
    env = {**os.environ, **store_env(store, IMAGE_URI, "gallery-bento"), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "true", **isolated_env(hide=("training",), checkout=False)}
    built = subprocess.run([BENTOML, "build", "-f", "serving/bentofile.yaml", ".", "--arg",
                            f"model_uri={IMAGE_URI}"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert 'Successfully built Bento(tag="zoo:' in built.stdout
    return home


def served_alone(home: Path, root: Path) -> dict[str, str]:
    """The environment of a Bento served as in a container: no MLflow store, and neither the
    checkout, the training code nor MLflow importable; state under ``root``."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'no-such-store.db'}",
            "BENTOML_HOME": str(home), "ZOO_CACHE_DIR": str(root / "empty-cache"),
            "ZOO_GALLERY_DIR": str(root / "bento-gallery"), "BENTOML_DO_NOT_TRACK": "true",
            "ZOO_WORKERS": "1",  # one process starts sooner; several are tested elsewhere
            **isolated_env(hide=("training", "mlflow"), checkout=False)}


@pytest.mark.slow
def test_built_bento_serves_alone(store, bento_home, digit_pngs, tmp_path: Path) -> None:
    """The README's "as a Bento" commands: built from a clean clone, then served from another
    folder as in a container: no MLflow store, and neither the checkout, the training code nor
    MLflow importable. The Bento holds serving/ and zoo/ and no training code."""
    import base64

    import httpx
    import openai

    src = next((bento_home / "bentos" / "zoo").glob("*/src"))
    assert (src / "serving" / "service.py").is_file() and (src / "zoo" / "names.py").is_file()
    assert (src / "serving" / "page" / "app.js").is_file()  # the page at /ui
    assert not (src / "training").exists()
    # served from elsewhere: the model, the code and every name come from the Bento alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gone = served_alone(bento_home, tmp_path)
    reference = Reference(store, IMAGE_URI)
    with Server("zoo:latest", gone, cwd=elsewhere) as server:
        info = httpx.get(f"{server.url}/model", timeout=30).json()
        assert info["uri"] == IMAGE_URI and info["name"] == "zoo-digits"
        expected = reference.images(digit_pngs[:4])["embedding"]
        got = httpx.post(f"{server.url}/embed", files=files(digit_pngs[:4]), timeout=60).json()
        assert np.abs(np.asarray(got["embeddings"]) - expected).max() <= 1e-5
        # /identify against the exported gallery (the training split) the Bento carries
        gallery = Gallery.load(Path(mlflow.artifacts.download_artifacts(
            f"runs:/{reference.run_id}/{names.EXPORT_DIR}/{names.GALLERY_DIR}",
            dst_path=str(tmp_path / "g"),
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
    """serving/ reads MLflow through mlflow_source alone: with ``training`` not
    importable the service module loads its model from the store."""
    code = ("import sys, serving.service as s; "
            "print(s.BUNDLE.info.uri, 'training' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=180,
                          env={**os.environ, **store_env(store, IMAGE_URI, "gallery-import"),
                               **isolated_env(hide=("training",))})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [IMAGE_URI, "False"]


# --- the page at /ui, on the built Bento, in a real browser (support/browser.py) --------------

API_KEY, ADMIN_KEY = "api-key-for-the-page", "admin-key-for-the-page"


@pytest.fixture(scope="module")
def page_server(bento_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """The built Bento with both keys set: the page is open, everything it calls is not."""
    root = tmp_path_factory.mktemp("page")
    env = {**served_alone(bento_home, root), "ZOO_API_KEY": API_KEY, "ZOO_ADMIN_KEY": ADMIN_KEY}
    with Server("zoo:latest", env, cwd=root) as server:
        yield server


@pytest.mark.slow
def test_page_is_static_files_under_a_policy_that_forbids_inline_scripts(page_server) -> None:
    import httpx

    url = page_server.url
    redirect = httpx.get(f"{url}/ui", timeout=30)
    assert redirect.status_code == 307 and redirect.headers["location"] in ("ui/", "/ui/")
    page = httpx.get(f"{url}/ui/", timeout=30)  # no key: the page is open, the model is not
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy and "frame-ancestors 'none'" in policy
    html = page.text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="app.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handlers are inline scripts"
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    script = httpx.get(f"{url}/ui/app.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "innerHTML" not in script.text  # server text is set as textContent only
    for path in ("/ui/service.py", "/ui/..%2Fservice.py", "/ui/index.html.bak"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 404, path
    assert httpx.get(f"{url}/model", timeout=30).status_code == 401


@pytest.mark.slow
def test_page_asks_for_a_key_and_shows_the_servers_401(page_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(f"{page_server.url}/ui/")
        expect(page.locator("#notice")).to_contain_text("this server needs an API key")
        page.fill("#key", "not-the-key")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#notice")).to_contain_text("401: invalid API key")
        assert page.evaluate("sessionStorage.getItem('zoo-key')") == "not-the-key"
        assert "not-the-key" not in page.url and not page.context.cookies()
        assert page.input_value("#key") == ""  # not left on the screen either
        screenshot(page, "ui-key.png", tmp_path)


def _use_key(page, key: str) -> None:
    from playwright.sync_api import expect

    page.fill("#key", key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#model-title")).to_contain_text("zoo-digits")


@pytest.mark.slow
def test_page_tries_photos_and_shows_classes_matches_gradcam_and_errors(
        page_server, digit_pngs, tmp_path: Path) -> None:
    import httpx
    from playwright.sync_api import expect

    paths = []
    for i, data in enumerate(digit_pngs[:2]):
        paths.append(tmp_path / f"digit-{i}.png")
        paths[-1].write_bytes(data)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    expected = httpx.post(f"{page_server.url}/classify", files=files(digit_pngs[:2]),
                          data={"top_k": "1"}, headers=auth, timeout=60).json()["predictions"]
    refused = httpx.post(f"{page_server.url}/identify", headers=auth, timeout=60,
                         files=[("images", ("broken.png", broken.read_bytes(), "image/png"))])
    assert refused.status_code == 400
    with browser_page() as page:
        page.goto(f"{page_server.url}/ui/")
        _use_key(page, API_KEY)
        page.set_input_files("#files", [str(p) for p in [*paths, broken]])
        cards = page.locator("article.result")
        expect(cards).to_have_count(3)
        expect(page.locator(".pending")).to_have_count(0)
        for path, prediction in zip(paths, expected):
            card = page.locator(f"article.result[data-file='{path.name}']")
            expect(card.locator(".class strong")).to_have_text(prediction[0]["label"])
            expect(card.locator(".identity")).to_contain_text("similarity")
            expect(card.locator(".identity")).to_contain_text("threshold")
            expect(card.locator(".matches li").first).to_be_visible()
        # the server's own message, beside the image that caused it
        error = page.locator("article.result[data-file='broken.png'] .error")
        expect(error).to_have_text(f"400: {refused.json()['error']}")
        first = page.locator(f"article.result[data-file='{paths[0].name}']")
        first.get_by_role("button", name="Show GradCAM").click()
        heat = first.locator("img.heatmap")
        expect(heat).to_be_visible(timeout=30_000)  # the first GradCAM loads its library
        heat.evaluate("img => img.decode()")
        assert heat.evaluate("img => img.complete && img.naturalWidth") > 0
        # /verify from the page: two photos, decided at the rate chosen, as the server says
        pair = httpx.post(f"{page_server.url}/verify", files=files(digit_pngs[:2]),
                          data={"far": "1e-4"}, headers=auth, timeout=60).json()
        page.select_option("#far", "1e-4")
        page.set_input_files("#verify-a", str(paths[0]))
        page.set_input_files("#verify-b", str(paths[1]))
        page.click("#verify-form button[type=submit]")
        shown = ("similarity shown to the admin only" if pair["similarity"] is None
                 else f"similarity {pair['similarity']:.3f}")
        expect(page.locator("#verify-result")).to_have_text(
            f"One person: {'yes' if pair['same'] else 'no'} ({shown}, "
            f"threshold {pair['threshold']:.3f} at FAR 1e-4)")
        screenshot(page, "ui-try.png", tmp_path)


@pytest.mark.slow
def test_page_enrolls_finds_and_deletes_an_identity(page_server, digit_pngs,
                                                    tmp_path: Path) -> None:
    import hashlib

    import httpx
    from playwright.sync_api import expect

    paths = []
    for i, data in enumerate(digit_pngs[3:5]):
        paths.append(tmp_path / f"person-{i}.png")
        paths[-1].write_bytes(data)
    with browser_page() as page:
        page.goto(f"{page_server.url}/ui/")
        _use_key(page, API_KEY)
        page.click("nav button[data-tab=gallery]")
        expect(page.locator("#gallery-message")).to_contain_text("needs the admin key")
        _use_key(page, ADMIN_KEY)
        page.click("nav button[data-tab=gallery]")
        expect(page.locator("#page-info")).to_contain_text("10 identities")  # digits 0-9
        page.fill("#enroll-name", "Ana <b>Lima</b>")  # shown as text, never as markup
        page.set_input_files("#enroll-files", [str(p) for p in paths])
        page.click("#enroll-form button[type=submit]")
        expect(page.locator("#enroll-message")).to_contain_text("Enrolled 2 into Ana <b>Lima</b>")
        page.fill("#search", "<b>lim")
        page.click("#search-form button")
        expect(page.locator("#page-info")).to_contain_text("1 identity")
        page.get_by_role("button", name="Ana <b>Lima</b>").click()
        entries = page.locator("#detail-entries tr")
        expect(entries).to_have_count(2)
        assert {entries.nth(i).locator("td.mono").inner_text() for i in range(2)} == {
            hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        screenshot(page, "ui-gallery.png", tmp_path)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete-identity")
        expect(page.locator("#gallery-message")).to_contain_text("Deleted Ana <b>Lima</b> (2")
        expect(page.locator("#identities tbody")).to_contain_text("no identity holds that text")
        page.click("nav button[data-tab=model]")
        expect(page.locator("#model-info")).to_contain_text("resnet18")
        expect(page.locator("#answering")).to_have_text("Answering: version 1")
        expect(page.locator("#migration-stage")).to_contain_text("No migration has run yet")
        page.fill("#migrate-to", "models:/zoo-digits/2")
        page.click("#migrate-start")  # the server's own words: a Bento holds one version
        expect(page.locator("#migrate-message")).to_contain_text(
            "409: a Bento answers with the model it holds")
        screenshot(page, "ui-model.png", tmp_path)
    gone = httpx.get(f"{page_server.url}/identities/Ana%20%3Cb%3ELima%3C%2Fb%3E", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert gone.status_code == 404
