"""A real browser for the page at /ui: Debian's chromium, driven by Playwright for Python.

Playwright's own browsers are never downloaded: it launches the system's ``chromium``
(``executable_path``), which ``.ci/run`` installs where it is missing. Without one the tests
are skipped with the reason. Screenshots go to ``ZOO_SCREENSHOTS`` when it is set
(a path relative to the repository: ``ZOO_SCREENSHOTS=docs/img make test`` refreshes the
README's), else to the test's folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from support.process import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: the flags a closed network needs: without the background ones chromium keeps trying to
#: reach Google's hosts
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium() -> str:
    """The system browser, or a skip that says how to install one."""
    found = os.environ.get("ZOO_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not found:
        pytest.skip("no chromium on this machine: `apt-get install chromium chromium-driver` "
                    "(.ci/run installs them), or set ZOO_CHROMIUM to a Chromium binary")
    return found


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator["Page"]:
    """A fresh page (its own session storage and cookies) in headless chromium."""
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright for Python is not installed (pip install "
                                          "-e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def screenshot(page: "Page", name: str, fallback: Path) -> Path:
    """Save the page as ``name`` in ``ZOO_SCREENSHOTS`` (else ``fallback``)."""
    chosen = os.environ.get("ZOO_SCREENSHOTS")
    folder = REPO / chosen if chosen else fallback  # relative to the repository (tests chdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def open_model_tab(page: "Page", url: str, admin_key: str, version: str) -> None:
    """The page's Model tab as a user meets it: ``version`` answering, migrations hidden
    without the admin key, then the key given and no migration run yet."""
    from playwright.sync_api import expect

    page.goto(f"{url}/ui/")
    page.click("nav button[data-tab=model]")  # no key: /model is open, migrations not
    expect(page.locator("#answering")).to_have_text(f"Answering: version {version}")
    expect(page.locator("#migration-hint")).to_contain_text("need the admin key")
    expect(page.locator("#migrate-form")).to_be_hidden()
    page.fill("#key", admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#migration-stage")).to_contain_text("No migration has run yet")
