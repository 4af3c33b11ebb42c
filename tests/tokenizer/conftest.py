"""What the tokenizer suites share: tests/tokenizer/tok_driver, lensd's
tokenizer behind a command line ($LENSD_TOK_DRIVER). A missing driver fails
the tests; it never skips them."""

import os

import pytest


@pytest.fixture(scope="session")
def driver():
    path = os.environ.get("LENSD_TOK_DRIVER")
    if not path:
        pytest.fail("LENSD_TOK_DRIVER is not set; point it at build/tests/tokenizer/tok_driver")
    if not os.access(path, os.X_OK):
        pytest.fail(f"LENSD_TOK_DRIVER={path} is not an executable; build it first")
    return path
