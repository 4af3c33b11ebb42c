"""Registers the ``live`` marker: tests that start a lensd daemon (select with ``-m live``)."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "live: starts a lensd daemon (needs LENSD_BIN and LENSD_TEST_MODEL)"
    )
