"""Every shell and Python block of README.md and docs/ runs, as written, in the order its page
gives, in a fresh store: the docs cannot promise what the code does not do (Open Metric
Learning runs the code of its README the same way). test_docs.py checks the pages statically.

A block runs unless the HTML comment right before its fence (invisible on GitHub) says:

- ``<!-- docs-test: skip (why) -->``: nobody runs it, because it needs what a test cannot
  give (a server that runs until stopped, a user's folder, a sweep of many minutes). Each is
  a skipped test whose reason every run lists (``-ra``); ``NOT_RUN`` caps how many there are;
- ``<!-- docs-test: elsewhere tests/test_x.py (why) -->``: that test runs it (the client
  blocks of docs/serving.md, against a live server);
- ``<!-- docs-test: given NAME -->``: it runs once the test has made ``GIVEN[NAME]``, what
  the page's long commands before it would have left in the store (a trained run), at the
  smallest size that makes the block run.

Blocks run in one store, README.md first and then docs/ by name, so that a page goes on
where the README left the store (its ``given`` makes what it needs when the page runs
alone, ``-k export.md``); a block identical to one that ran already is not run again. Each
runs in a copy of the checkout (``mlflow run .`` is the project; nothing is written into
this one) holding a ``digit.png``, the image the snippets open, with the store as
``MLFLOW_TRACKING_URI`` and this environment's ``bin`` first on ``PATH`` (the docs assume the
environment is active): shell blocks with ``bash -e -o pipefail``, Python blocks with
``python -c``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS, PYTHONS = ("bash", "sh", "shell"), ("python", "py")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
#: The blocks nobody runs, at most: a new one needs a reason good enough to raise this.
NOT_RUN = 25


@dataclass(frozen=True)
class Block:
    """One fenced block of a page, with the marker before it."""

    page: str
    line: int  # of the opening fence, counted from 1
    language: str
    code: str
    marker: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        """run, skip, elsewhere or given."""
        return self.marker.split(None, 1)[0] if self.marker else "run"

    @property
    def argument(self) -> str:
        """What follows the kind: the reason, the test file and reason, or the given's name."""
        return self.marker.split(None, 1)[1] if " " in self.marker else ""


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` (indented ones too), each with its marker, if any."""
    lines = path.read_text().split("\n")
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = MARKER.match(before)
        found.append(Block(str(path.relative_to(REPO)), start + 1, language.lower(),
                           "\n".join(body) + "\n", marker.group(1) if marker else ""))
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CODE = [b for b in ALL if b.language in SHELLS + PYTHONS]


# --- what a block may be given -------------------------------------------------------------

def _digits_runs() -> None:
    """Two digits runs of one epoch, resnet18 with ArcFace and with the triplet loss, in the
    experiment ``Default``, where ``mlflow run . -e arcface`` (``make run``) and ``-e triplet``
    leave their runs: what the README's register step finds after the Quick start."""
    import mlflow

    from training.config import TrainConfig
    from training.pipeline.run import train

    if mlflow.search_runs(experiment_names=["Default"], output_format="list",
                          filter_string="tags.`zoo.dataset` = 'digits'"):
        return
    for loss in ("arcface", "triplet"):
        train(TrainConfig.of(loss=loss, epochs=1, experiment="Default", plots=False,
                             checkpoint=False))


def _champion() -> None:
    """``zoo-digits@champion``, registered from ``digits-runs`` and exported, as the README's
    register and export steps leave it (unless they did already)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.pipeline.export import ExportConfig, export_model
    from training.tracking.registration import experiment_runs, register_best

    try:
        version = mlflow.MlflowClient().get_model_version_by_alias("zoo-digits", "champion")
        if version.tags.get("zoo.exported") == "true":
            return
    except MlflowException:
        _digits_runs()
        register_best(experiment_runs("zoo-digits")[0])
    export_model(ExportConfig(model_uri="models:/zoo-digits@champion"))


GIVEN: dict[str, Callable[[], None]] = {"digits-runs": _digits_runs, "champion": _champion}


# --- the blocks, statically: fast -------------------------------------------------------------

def test_every_marker_is_understood() -> None:
    """A marker is one of the three kinds with what it needs: a reason, a test file that
    reads the page, a known given; a marker before something other than a code block (or a
    misspelt one) would silently run or skip nothing."""
    markers = [(page.name, n) for page in PAGES for n, line in
               enumerate(page.read_text().split("\n"), 1)
               if re.match(r"^\s*<!--.*docs?[-_ ]?test", line)]
    assert len(markers) == sum(bool(b.marker) for b in ALL), \
        f"a docs-test marker is not right before a fence: {markers}"
    for block in ALL:
        if not block.marker:
            continue
        assert block.language in SHELLS + PYTHONS, f"{block.where}: marker on a {block.language}"
        assert block.kind in ("skip", "elsewhere", "given"), f"{block.where}: {block.marker}"
        if block.kind == "skip":
            assert re.fullmatch(r"\(.{10,}\)", block.argument), \
                f"{block.where}: say why in parentheses: {block.marker}"
        elif block.kind == "elsewhere":
            test_file, _, why = block.argument.partition(" ")
            assert (REPO / test_file).is_file() and re.fullmatch(r"\(.{10,}\)", why), block.marker
            assert Path(block.page).name in (REPO / test_file).read_text(), \
                f"{block.where}: {test_file} does not read {block.page}"
        else:
            assert block.argument in GIVEN, f"{block.where}: no given {block.argument!r}"


def test_few_blocks_are_not_run() -> None:
    """The blocks nobody runs, with their reasons; their number may only go down."""
    skipped = [f"{b.where}: {b.argument}" for b in CODE if b.kind == "skip"]
    assert len(skipped) <= NOT_RUN, "\n".join(skipped)
    assert len(CODE) >= 35 and sum(b.kind in ("run", "given") for b in CODE) >= 8  # the parser


# --- the blocks, run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkout(module_tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict]:
    """A copy of the checkout with a ``digit.png``, the environment the blocks run in, and
    the blocks that ran (code → where)."""
    from support.serving_store import clean_clone, digit_images

    folder = clean_clone(tmp_path_factory.mktemp("checkout"))
    (folder / "digit.png").write_bytes(digit_images()[3])
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                        "PYTHONPATH")}
    # the server's commands keep their galleries, keys and fetched models in the checkout's
    # folder, not in the home of whoever runs the tests
    env.update(MLFLOW_TRACKING_URI=module_tracking_uri, HF_HUB_OFFLINE="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               XDG_STATE_HOME=str(folder / "state"), XDG_CACHE_HOME=str(folder / "cache"))
    yield {"folder": folder, "env": env, "ran": {}}


@pytest.mark.slow
@pytest.mark.parametrize("block", CODE, ids=lambda b: b.where)
def test_the_block_does_what_it_says(block: Block, checkout: dict) -> None:
    if block.kind == "skip":
        pytest.skip(f"{block.where} not run {block.argument}")
    if block.kind == "elsewhere":
        pytest.skip(f"{block.where} runs in {block.argument}")
    if block.kind == "given":
        GIVEN[block.argument]()
    if block.code in checkout["ran"]:
        return  # the same block ran above, in this store
    command = (["bash", "-e", "-o", "pipefail", "-c", block.code] if block.language in SHELLS
               else [sys.executable, "-c", block.code])
    done = subprocess.run(command, cwd=checkout["folder"], env=checkout["env"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{block.where} failed ({done.returncode}):\n{block.code}\n"
                                  f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    checkout["ran"][block.code] = block.where
