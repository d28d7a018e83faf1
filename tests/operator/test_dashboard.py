"""The dashboard in a real headless Chromium against a real `python -m manager` process.

The page must load without console errors, list the services, turn a trigger click (with the token typed
once) into a run that then shows in the history, show a wrong token as an error, and stay usable with 100
services and 10,000 runs (pagination). Screenshots land in the test's tmp dir (printed on failure).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from services.runs import RunStatus
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import runs
from tests.db import run as run_async
from tests.operator.browser import LAUNCH_ARGS, require_chromium
from tests.operator.helpers import probe_config
from tests.support.processes import Proc, base_env, free_port

TOKEN = "dash-token-4711"


def _seed_runs(url: str, scheduler: str, count: int) -> None:
    async def seed() -> None:
        engine = create_engine(url)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        rows: list[dict[str, Any]] = []
        for i in range(count):
            at = start + timedelta(minutes=i)
            rows.append(
                {
                    "id": f"seed-{i:05d}",
                    "scheduler": scheduler,
                    "scheduled_for": at,
                    "attempt": 1,
                    "trigger": "schedule",
                    "status": RunStatus.FAILED.value if i % 10 == 0 else RunStatus.SUCCEEDED.value,
                    "node": "node-old",
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=2),
                    "duration_seconds": 2.0,
                    "lag_seconds": 0.05,
                    "items_processed": 3,
                    "error": f"RuntimeError: seeded failure {i}" if i % 10 == 0 else None,
                }
            )
        for chunk in range(0, count, 1000):
            async with engine.begin() as conn:
                await conn.execute(insert(runs), rows[chunk : chunk + 1000])
        await engine.dispose()

    run_async(seed)  # on its own thread: Playwright's sync API owns this thread's event loop


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS, headless=True)
        yield instance
        instance.close()


def _start(tmp_path: Path, services: dict[str, str], *, seed: int = 0) -> Proc:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    run_async(lambda: upgrade(url))
    if seed:
        _seed_runs(url, next(iter(services)), seed)
    env = base_env(
        DATABASE_URL=url,
        SCHEDULER_ADMIN_TOKEN=TOKEN,
        SCHEDULER_PLUGINS="tests.support.services,services.backup",  # the types probe_config may name
        SCHEDULER_INSTANCE_ID="dash-node",
        SCHEDULER_HEARTBEAT_INTERVAL="1s",
        SCHEDULER_LOCK_TTL="5s",
        SCHEDULER_CONFIG_FILE=str(probe_config(tmp_path, services)),
    )
    proc = Proc(["manager"], env, free_port(), tmp_path, name="manager")
    proc.wait_ready()
    return proc


class _Page:
    """A page with its console errors collected."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.base = base

    def close(self) -> None:
        self.context.close()


def test_dashboard_lists_services_triggers_with_token_and_rejects_a_wrong_one(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    proc = _start(tmp_path, {"probe-a": "@every 1h", "probe-b": "0 2 * * *"})
    view = _Page(browser, f"http://127.0.0.1:{proc.port}")
    page = view.page
    try:
        page.goto(view.base + "/?refresh=1")
        services = page.locator("#services-table tbody tr")
        expect(services.filter(has_text="probe-a")).to_have_count(1)
        expect(services.filter(has_text="probe-b")).to_contain_text("daily at 02:00 UTC")
        expect(page.locator("#fleet-summary")).to_contain_text("Healthy")
        expect(page.locator("#nodes-table")).to_contain_text("dash-node")
        assert view.errors == [], f"console errors on load: {view.errors}"

        # The first action asks for the token; a wrong one is an error the operator can see.
        page.get_by_role("button", name="Trigger probe-a").click()
        expect(page.locator("#error")).to_contain_text("Enter the admin token")
        expect(page.get_by_label("Admin token (kept in this browser tab only)")).to_be_focused()
        page.get_by_label("Admin token (kept in this browser tab only)").fill("wrong-token")
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#error")).to_contain_text("Wrong admin token")
        assert page.evaluate("sessionStorage.getItem('schedulerAdminToken')") is None
        assert page.evaluate("localStorage.length") == 0  # the token is never persisted beyond the tab

        # The right token retries the pending trigger; the run shows up in the history and finishes.
        page.get_by_label("Admin token (kept in this browser tab only)").fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#message")).to_contain_text("Triggered probe-a: run ")
        run_id = page.locator("#message").inner_text().rsplit("run ", 1)[1].rstrip(".")
        row = page.locator(f'#history-table tr[data-run="{run_id}"]')
        expect(row).to_contain_text("succeeded", timeout=15_000)
        expect(row).to_contain_text("manual")
        expect(page.locator("#runs-table")).to_contain_text("probe-a")
        assert page.evaluate("sessionStorage.getItem('schedulerAdminToken')") == TOKEN

        # Pause without retyping the token (asked once), then the refresh shows it paused.
        page.get_by_role("button", name="Pause probe-b").click()
        expect(services.filter(has_text="probe-b")).to_contain_text("PAUSED")
        expect(page.get_by_role("button", name="Resume probe-b")).to_be_enabled()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        # The only console line is Chromium's own report of the 401 the wrong token got; no script errors.
        assert view.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    finally:
        view.close()
        proc.close()


def test_dashboard_stays_usable_with_100_services_and_10000_runs(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    services = {f"svc-{i:03d}": "@every 1h" for i in range(100)}
    proc = _start(tmp_path, services, seed=10_000)
    view = _Page(browser, f"http://127.0.0.1:{proc.port}")
    page = view.page
    try:
        t0 = time.monotonic()
        page.goto(view.base + "/?refresh=2")
        expect(page.locator("#services-table tbody tr").filter(has_text="svc-")).to_have_count(100)
        # 10,000 seeded runs, plus whatever the live services record meanwhile.
        expect(page.locator("#runs-pager")).to_contain_text(re.compile(r"Page 1 of 40\d · 10\d\d\d runs"))
        loaded = time.monotonic() - t0
        page.locator("#services-table").get_by_role("button", name="Run history of svc-000").click()
        expect(page.locator("#history-pager")).to_contain_text(re.compile(r"Page 1 of 40[01] · 1000[01] runs"))
        expect(page.locator("#history-table tbody")).to_contain_text("seeded failure 9990")  # the newest failure
        page.locator("#history-pager").get_by_role("button", name="Older").click()
        expect(page.locator("#history-pager")).to_contain_text("Page 2 of 40")
        expect(page.locator("#history-table tbody tr")).to_have_count(25)
        page.get_by_label("Filter services").fill("svc-04")
        expect(page.locator("#services-table tbody tr")).to_have_count(10)
        fleet = proc.http.get("/api/admin/fleet")
        names = [s["name"] for s in fleet.json()["data"]["services"]]
        assert fleet.status_code == 200 and sum(name.startswith("svc-") for name in names) == 100
        page.screenshot(path=str(tmp_path / "dashboard-100.png"), full_page=False)
        assert view.errors == [], view.errors
        print(
            f"100 services / 10,000 runs: page usable in {loaded:.2f}s, "
            f"fleet JSON in {fleet.elapsed.total_seconds() * 1000:.0f} ms"
        )
        assert loaded < 10
    finally:
        view.close()
        proc.close()
