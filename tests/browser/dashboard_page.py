"""Helpers of the browser tests that drive the dashboard page (conftest.py
makes the fixtures; a module of its own, so that test files never import
a conftest)."""

from __future__ import annotations

IDLE_TIMEOUT_MS = 60_000


def wait_idle(page) -> None:
    """Until the dashboard has drawn everything it asked the daemon for
    (web/js/main.js keeps body's data-busy at the number of tasks in flight)."""
    page.wait_for_function("document.body.dataset.busy === '0'", timeout=IDLE_TIMEOUT_MS)
