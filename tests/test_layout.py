"""Rooms a newcomer can predict: the packages import each other one way only, every command
is a thin parser over ``training/pipeline``, and every catalogue registry is a
``zoo.registry.Registry`` in a module named registry.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from zoo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p for p in (ROOT / "training" / "commands").glob("*.py")
                  if p.name != "__init__.py")
#: what a command may hold besides ``main``: train's early check of --nproc
COMMAND_HELPERS = {"requested_nproc", "export_entry"}


#: what each package may not import, anywhere in it (inside functions too): ``zoo`` knows
#: nothing of MLflow, BentoML or the others; the trainer and the server share only ``zoo``
#: and the MLflow reader, which imports neither of them
FORBIDDEN = {
    "zoo": {"training", "serving", "mlflow_source", "mlflow", "bentoml"},
    "mlflow_source": {"training", "serving", "bentoml"},
    "training": {"serving"},
    "serving": {"training", "mlflow"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports by its absolute name, wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_each_other_one_way(package: str) -> None:
    wrong = {str(p.relative_to(ROOT)): sorted({m.split('.')[0] for m in imported_modules(p)}
                                                  & FORBIDDEN[package])
             for p in (ROOT / package).rglob("*.py")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{package}/ imports what it must not: {wrong}"


def test_the_edge_patches_bentoml_only_through_its_list() -> None:
    """Private BentoML modules are named in serving/http/bentoml_private.py alone."""
    private = ("_bentoml_impl", "_bentoml_sdk", "bentoml._internal")
    wrong = [str(p.relative_to(ROOT)) for p in (ROOT / "serving").rglob("*.py")
             if p.name != "bentoml_private.py"
             and any(m.startswith(private) for m in imported_modules(p))]
    assert not wrong, f"private BentoML imported outside bentoml_private.py: {wrong}"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.stem)
def test_every_command_is_thin_over_the_pipeline(path: Path) -> None:
    tree = ast.parse(path.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "main" in functions, f"{path.name} has no main()"
    assert functions <= {"main"} | COMMAND_HELPERS, f"{path.name} holds work: {functions}"
    assert not classes, f"{path.name} defines {classes}: configs live in training/pipeline"
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert any(m.startswith("training.pipeline.") for m in imported), \
        f"{path.name} does not call into training.pipeline"
    assert not any(m.startswith("training.commands") for m in imported), \
        f"{path.name} imports another command"


def test_every_registry_is_built_the_same_way() -> None:
    from zoo.data.registry import DATASETS
    from zoo.losses.registry import LOSSES
    from zoo.models.registry import MODELS

    for registry in (DATASETS, LOSSES, MODELS):
        assert isinstance(registry, Registry)
        assert registry.names(), f"the {registry.kind} registry is empty"
    defined = [p.relative_to(ROOT) for p in (ROOT / "zoo").rglob("*.py")
               if "Registry(" in p.read_text() and p.name != "registry.py"]
    assert not defined, f"registries built outside a registry.py: {defined}"
