"""What a Bento holds: the server's code (serving/ and zoo/, never training/) and requirements
that cover every package that code imports. The built Bento is served alone in
tests/test_serving.py (``test_built_bento_serves_alone``)."""
from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

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
            dists = {_canonical(d) for d in owners.get(module, [])}
            if not dists & closure:
                missing.setdefault(module, []).append(relative)
    assert not missing, ("imported by the Bento's code but not installed by its bentofile: "
                         f"{missing}")
