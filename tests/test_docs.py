"""The docs cannot drift from the code: README.md stays short, every table renders, every
relative link lands on a file and heading that exist, every ``mlflow run`` and
``python -m training.commands...`` command they show names a real entry point and only
parameters its config has, and every ``zoo.*`` tag they name is one ``zoo.names`` defines.
(test_docs_run.py runs the blocks themselves, as written; the client blocks of
docs/serving.md run against a live server in test_serving.py.)"""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from training.config import params_of
from training.mlproject import entries
from zoo import names

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300


def prose_lines(path: Path) -> list[str]:
    """The page's lines, with fenced code blanked out (line numbers kept)."""
    out, fence = [], None
    for line in path.read_text().split("\n"):
        opening = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and opening:
            fence = opening.group(1)[:3]
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        else:
            out.append("" if fence else line)
            continue
        out.append("")
    return out


def code_lines(path: Path) -> list[str]:
    """The lines inside fenced code blocks, backslash continuations joined."""
    raw, prose = path.read_text().split("\n"), prose_lines(path)
    return _joined([line for line, p in zip(raw, prose) if not p and line.strip()])


def _joined(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line.strip()
        else:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            seen[base] = seen.get(base, -1) + 1
    return {base if n == 0 else f"{base}-{n}" for base, count in seen.items()
            for n in range(count + 1)}


def test_the_readme_is_short_and_links_every_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in PAGES[1:]:
        assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    assert "make test" in readme  # CI runs the test command the README names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_land_on_files_and_headings_that_exist(page: Path) -> None:
    link = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
    for number, line in enumerate(prose_lines(page), 1):
        for target in link.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}:{number}: {target} does not exist"
            if anchor:
                assert anchor in anchors(dest), f"{page.name}:{number}: no heading #{anchor}"


def _importable(dotted: str) -> bool:
    """``zoo.export.onnx_session`` and the like: a module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr, None)
        return found is not None
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_tag_named_is_one_the_code_writes(page: Path) -> None:
    """Tests read tags through ``zoo.names``; this keeps the names people search by (and older
    runs hold) from being renamed there without the docs, or misspelt in them."""
    tags = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    for number, line in enumerate(page.read_text().split("\n"), 1):
        for token in re.findall(r"`(zoo\.[\w.]+(?:<\w+>)?)", line):
            token = token.rstrip(".")
            if token in tags or _importable(token):
                continue
            assert token == f"{names.RESOLVED_PREFIX}<param>", (
                f"{page.name}:{number}: `{token}` is neither a tag in zoo/names.py nor code")


def _cells(row: str) -> int:
    row = row.strip().removeprefix("|")
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(re.split(r"(?<!\\)\|", row))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_renders(page: Path) -> None:
    """A blank line before, a header, a |---| row, then rows of the header's width with no
    blank lines between them (a blank line ends a table: the rest shows as text)."""
    lines, i = prose_lines(page), 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            i += 1
        block, where = lines[start:i], f"{page.name}:{start + 1}"
        assert start == 0 or not lines[start - 1].strip(), f"{where}: no blank line before"
        assert len(block) >= 2 and re.match(r"^\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*$", block[1]), \
            f"{where}: the second row is not a |---| separator"
        widths = {_cells(row) for row in block}
        assert len(widths) == 1, f"{where}: rows of {sorted(widths)} cells (an unescaped | ?)"


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``mlflow run`` and ``python -m training.commands`` line."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            shown = re.search(r"(mlflow run \.|python -m training\.commands\.)[^#<\"]*",
                              line.replace("<br/>", '"'))
            if shown:
                found.append((page.name, shown.group(0).strip()))
    return found


def test_every_shown_command_parses_into_its_entry_points_config() -> None:
    """Each command names a real entry point (or command module), and its parameters, with
    the entry point's fixed ones, build that entry point's config: names, types and choices
    are all checked as the command itself would check them before training."""
    by_name = {entry.name: entry for entry in entries()}
    by_module = {entry.module: entry for entry in entries() if not entry.fixed}
    mlproject = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    commands = shown_commands()
    assert len(commands) >= 20, "the docs show fewer commands than expected: is the parser right?"
    for page, command in commands:
        words = shlex.split(command)
        if words[:2] == ["mlflow", "run"]:
            name = words[words.index("-e") + 1] if "-e" in words else "main"
            assert name in mlproject, f"{page}: `{command}`: no entry point {name}"
            entry = by_name[name]
            given = dict(words[k + 1].split("=", 1) for k, w in enumerate(words) if w == "-P")
        else:
            module = words[words.index("-m") + 1]
            assert module in by_module, f"{page}: `{command}`: no command {module}"
            entry = by_module[module]
            flags = words[words.index("-m") + 2:]
            given = {flag[2:]: value for flag, value in zip(flags[::2], flags[1::2])}
        unknown = sorted(set(given) - {p.name for p in params_of(entry.config)})
        assert not unknown, f"{page}: `{command}`: {entry.config.__name__} has no {unknown}"
        entry.config.from_dict({**dict(entry.fixed), **given})  # raises on a bad value
