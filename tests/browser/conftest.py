"""Fixtures of the dashboard's browser tests: a real `lensd serve` on the
bundled models with this checkout's web/, and Debian's Chromium driven
headless by Playwright (`playwright install` cannot download here, so the
browser is the system's: LENSD_CHROMIUM, default /usr/bin/chromium).

Environment:
  LENSD_BIN        the lensd executable (required; the suite fails, never skips)
  LENSD_CHROMIUM   the Chromium executable (default /usr/bin/chromium)
  LENSD_BUILD      screenshots go to $LENSD_BUILD/browser-screenshots
                   (default build/browser-screenshots)

Fixtures:
  dashboard_lensd  the daemon (bundled models, --web web/, port 0)
  browser          one headless Chromium for the session
  dashboard        dashboard(color_scheme="light", query="") -> a Page at
                   1280x800 with the dashboard loaded and idle; a page that
                   logs a JavaScript error fails its test
  shots            shots(page, name): saves a full-page screenshot artifact
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))  # lensd_http
sys.path.insert(0, str(Path(__file__).resolve().parent))  # dashboard_page

from dashboard_page import wait_idle  # noqa: E402
from lensd_http import Daemon  # noqa: E402

VIEWPORT = {"width": 1280, "height": 800}


# Fixture names are unique across the test tree: with several conftest.py
# files outside packages, pytest can resolve a shared name to the wrong one.
@pytest.fixture(scope="session")
def dashboard_lensd(tmp_path_factory):
    path = os.environ.get("LENSD_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"LENSD_BIN={path!r} is not an executable (e.g. build/server/lensd); "
                    "the browser suite never skips", pytrace=False)
    daemon = Daemon(path, ["--web", str(REPO / "web")], tmp_path_factory.mktemp("browser") / "lensd.stderr")
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.describe()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LENSD_CHROMIUM", "/usr/bin/chromium")
    if not os.access(chromium, os.X_OK):
        pytest.fail(f"no Chromium at {chromium} (tools/setup.sh installs Debian's chromium)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def dashboard(browser, dashboard_lensd):
    contexts, errors = [], []

    def open_page(color_scheme: str = "light", query: str = ""):
        context = browser.new_context(viewport=VIEWPORT, color_scheme=color_scheme)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        # An HTTP error answer is logged by Chromium as "Failed to load resource"; the
        # tests check how the page shows it instead.
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and errors.append(f"console error: {m.text}"))
        page.goto(f"{dashboard_lensd.url}/{query}")
        wait_idle(page)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    build = Path(os.environ.get("LENSD_BUILD", REPO / "build"))
    out = build / "browser-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def shots(shots_dir):
    def save(page, name: str) -> Path:
        path = shots_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
