"""The page's Model tab through a migration, in a real browser (support/browser.py), against a
stand-in for the server: the page's own routes (serving/page/routes.py) beside ``/model``,
``GET /gallery/migration`` and ``POST /gallery/migrate`` answering as the service does, so a
migration's every stage is shown in seconds. The real server's answers to the page are tested
in test_serving.py (the version answering, a 409) and test_bento.py (a Bento's 409)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from serving.page.routes import add_routes
from support.browser import browser_page, open_model_tab

ADMIN = "admin-key"
RUNNING = {"started_at": 1_700_000_000.0, "finished_at": None, "gate": None, "uncarried": 0,
           "error": None, "force": False, "to": "models:/zoo-digits@champion", "version": "2"}
FIGURES = {"old": {"identities": 12, "queries": 36, "top1": 0.9167, "unknown": 0.0556,
                   "threshold": 0.41},
           "new": {"identities": 12, "queries": 36, "top1": 0.9444, "unknown": 0.0278,
                   "threshold": 0.43}}


class StandIn:
    """The service's answers for the Model tab; a migration goes one stage a request."""

    def __init__(self) -> None:
        self.version, self.stages, self.migration, self.asked = "1", [], None, []
        self.follow: dict[str, Any] | None = None
        self.refused = {"models:/zoo-digits/3": "the gate: the new version identifies the "
                                                "enrolled people worse (top-1 0.5 < 0.9)"}

    def status(self) -> dict[str, Any]:
        if self.stages:
            self.migration = {**RUNNING, **self.stages.pop(0)}
            if self.migration["stage"] == "switched":
                self.version = "2"
        running = bool(self.migration) and self.migration["stage"] in (
            "waiting", "loading", "carrying", "gating")
        return {"answering": {"uri": f"models:/zoo-digits/{self.version}",
                              "version": self.version},
                "serving": f"models:/zoo-digits/{self.version}", "running": running,
                "migration": self.migration, "refused": self.refused, "follow": self.follow}


def app_for(stand_in: StandIn) -> FastAPI:
    app = FastAPI()
    add_routes(app)

    def admin(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {ADMIN}":
            return JSONResponse({"error": "changing or listing the gallery needs the admin "
                                          "key"}, 401)
        return None

    @app.get("/model")
    def model() -> JSONResponse:
        return JSONResponse({"name": "zoo-digits", "version": stand_in.version,
                             "kind": "image", "input_size": [32, 32], "embedding_dim": 32,
                             "gallery": {"entries": 36, "identities": 12}},
                            headers={"X-Zoo-Model-Version": stand_in.version})

    @app.get("/gallery/migration")
    def migration(request: Request) -> JSONResponse:
        stand_in.asked.append(time.monotonic())
        return admin(request) or JSONResponse(stand_in.status())

    @app.post("/gallery/migrate", status_code=202)
    async def migrate(request: Request) -> JSONResponse:
        refused = admin(request)
        if refused:
            return refused
        body = await request.json()
        if body["to"] == "models:/zoo-digits/9":
            return JSONResponse({"error": "no version 9 of zoo-digits"}, 404)
        stand_in.stages = [{"stage": "loading"},
                           {"stage": "carrying", "done": 0, "total": 0, "eta_s": None},
                           {"stage": "carrying", "done": 40, "total": 100, "eta_s": 130.0},
                           {"stage": "gating", "done": 100, "total": 100, "eta_s": 0.0},
                           {"stage": "switched", "done": 100, "total": 100, "eta_s": 0.0,
                            "finished_at": RUNNING["started_at"] + 75,
                            "gate": {"passed": True, "judged": True,
                                     "reason": "top-1 0.9444 (was 0.9167)", **FIGURES}}]
        return JSONResponse({"started": True, "to": body["to"], "version": "2",
                             "force": body["force"]}, 202)

    return app


@pytest.fixture()
def stand_in() -> Iterator[tuple[str, StandIn]]:
    import uvicorn

    state = StandIn()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app_for(state), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(10)


def test_model_tab_follows_a_migration_it_starts_to_the_end(stand_in, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, state = stand_in
    with browser_page() as page:
        open_model_tab(page, url, ADMIN, "1")
        expect(page.locator("#refused-list")).to_contain_text(
            "models:/zoo-digits/3: the gate: the new version identifies the enrolled people worse")
        page.fill("#migrate-to", "models:/zoo-digits/9")
        page.click("#migrate-start")
        expect(page.locator("#migrate-message")).to_have_text("404: no version 9 of zoo-digits")
        page.fill("#migrate-to", "models:/zoo-digits@champion")
        page.click("#migrate-start")
        expect(page.locator("#migrate-message")).to_have_text("Started: migrating to version 2.")
        expect(page.locator("#migration-count")).to_have_text(
            "40 of 100 entries carried, about 2 min left")
        expect(page.locator("#migration-stage")).to_have_text(
            "Migration to models:/zoo-digits@champion: version 2 answers now.")
        expect(page.locator("#answering")).to_have_text("Answering: version 2")
        expect(page.locator("#gate-verdict")).to_have_text("Gate: passed.")
        expect(page.locator("#gate-reason")).to_have_text("top-1 0.9444 (was 0.9167)")
        rows = page.locator("#gate-figures tbody tr")
        expect(rows.nth(2)).to_have_text("Top-191.7%94.4%")  # old, then new
        expect(rows.nth(3)).to_have_text("Unknown rate5.6%2.8%")
        expect(page.locator("#migration-times")).to_contain_text("took about 75 s")
        expect(page.locator("#migrate-start")).to_be_enabled()
        assert page.locator("#migration-bar").evaluate("bar => [bar.value, bar.max]") == [100, 100]
        page.screenshot(path=str(tmp_path / "ui-migration.png"), full_page=True)
        # a running migration is polled while the tab is open, and no more once it is left
        state.stages = [{"stage": "carrying", "done": 1, "total": 100, "eta_s": 900.0}] * 50
        page.click("nav button[data-tab=try]")
        page.click("nav button[data-tab=model]")
        expect(page.locator("#migration-count")).to_contain_text("about 15 min left")
        page.click("nav button[data-tab=gallery]")
        page.wait_for_timeout(300)  # an answer on its way when the tab was left
        left = len(state.asked)
        page.wait_for_timeout(2500)
        assert len(state.asked) == left
        # following an alias: said, and no form to start one
        state.stages, state.follow = [], {"alias": "models:/zoo-digits@champion", "every_s": 60}
        page.click("nav button[data-tab=model]")
        expect(page.locator("#migration-follow")).to_have_text(
            "This server follows models:/zoo-digits@champion every 60 s: it migrates when "
            "the alias moves to another version.")
        expect(page.locator("#migrate-form")).to_be_hidden()
