"""The daemon's error table, SRV_ERRORS in server/reply.h, and its copies:
the Python client's ERRORS (clients/python/lensd/errors.py), the dashboard's
ERRORS (web/js/api.js), docs/API.md's list of errors and /openapi.json.

Each copy must hold the same (status, code) rows in the same order. The
static checks read the files and need no daemon; the /openapi.json check
uses the session's daemon (LENSD_BIN)."""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _daemon_rows() -> list[tuple[str, int, str]]:
    """SRV_ERRORS's X(NAME, status, "code") rows, in order."""
    text = (REPO / "server" / "reply.h").read_text()
    macro = re.search(r"#define SRV_ERRORS\(X\)((?:[^\n]*\\\n)*[^\n]*)", text)
    assert macro, "no #define SRV_ERRORS(X) in server/reply.h"
    rows = re.findall(r'X\(\s*([A-Z0-9_]+)\s*,\s*(\d+)\s*,\s*"([a-z0-9_]+)"\s*\)', macro.group(1))
    assert rows, "SRV_ERRORS in server/reply.h has no X(NAME, status, \"code\") rows"
    # every X( of the macro is a row the regex read (none in another shape)
    assert macro.group(1).count("X(") == len(rows), macro.group(1)
    return [(name, int(status), code) for name, status, code in rows]


DAEMON = _daemon_rows()
STATUS_CODES = [(status, code) for _, status, code in DAEMON]


def _camel(name: str) -> str:
    return "".join(word.capitalize() for word in name.split("_"))


def test_daemon_table_is_well_formed() -> None:
    codes = [code for _, _, code in DAEMON]
    assert len(set(codes)) == len(codes), f"a code twice in SRV_ERRORS: {codes}"
    assert all(400 <= status <= 599 for _, status, _ in DAEMON)
    assert all(code == name.lower() for name, _, code in DAEMON), "each code is its enum name in lower case"


def _python_rows() -> list[tuple]:
    """errors.py's ERRORS, read as the literal it must be."""
    path = REPO / "clients" / "python" / "lensd" / "errors.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Assign):
            targets = node.targets
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "ERRORS" for t in targets):
            return [tuple(row) for row in ast.literal_eval(node.value)]
    pytest.fail(f"no ERRORS = [...] in {path}")


def test_python_client_table_mirrors_the_daemon() -> None:
    rows = _python_rows()
    assert [(status, code) for status, code, _ in rows] == STATUS_CODES
    assert [name for _, _, name in rows] == [_camel(name) for name, _, _ in DAEMON]


def test_python_client_has_a_class_per_code() -> None:
    sys.path.insert(0, str(REPO / "clients" / "python"))
    try:
        errors = importlib.import_module("lensd.errors")
    finally:
        sys.path.pop(0)
    assert [tuple(row) for row in errors.ERRORS] == _python_rows()
    for _, code, name in errors.ERRORS:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LensdError) and cls is not errors.LensdError
        assert errors.error_class(code) is cls
    assert errors.error_class("no_such_code") is errors.LensdError


def _js_rows() -> list[tuple[int, str]]:
    """api.js's `export const ERRORS = Object.freeze([ [status, "code"], ... ])` rows."""
    text = (REPO / "web" / "js" / "api.js").read_text()
    table = re.search(r"export const ERRORS = Object\.freeze\(\[(.*?)\]\.map\(", text, re.S)
    assert table, "no `export const ERRORS = Object.freeze([...].map(...))` in web/js/api.js"
    rows = re.findall(r'\[\s*(\d+)\s*,\s*"([a-z0-9_]+)"\s*\]', table.group(1))
    assert table.group(1).count("[") == len(rows), table.group(1)
    return [(int(status), code) for status, code in rows]


def test_dashboard_table_mirrors_the_daemon() -> None:
    assert _js_rows() == STATUS_CODES


def _api_errors_section() -> str:
    """docs/API.md's "- **Errors**: ..." item, up to the next item."""
    text = (REPO / "docs" / "API.md").read_text()
    item = re.search(r"^- \*\*Errors\*\*:(.*?)(?=^- |^#|\Z)", text, re.S | re.M)
    assert item, "no \"- **Errors**:\" item in docs/API.md"
    return item.group(1)


def test_api_docs_list_every_code() -> None:
    section = _api_errors_section()
    missing = [f"{status} {code}" for status, code in STATUS_CODES
               if not re.search(rf"\b{re.escape(code)}\b", section)]
    assert not missing, f"docs/API.md's Errors list does not mention {missing}"


def test_api_docs_pair_codes_with_their_statuses() -> None:
    for status, code in re.findall(r"\b([45]\d\d)\s+([a-z][a-z_]+)\b", _api_errors_section()):
        assert (int(status), code) in STATUS_CODES, f"docs/API.md pairs {code} with {status}"


def test_openapi_lists_the_table(get) -> None:
    status, _, body = get("/openapi.json")
    assert status == 200
    doc = json.loads(body)
    schema = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert schema["enum"] == [code for _, code in STATUS_CODES]
    statuses = {str(status) for status, _ in STATUS_CODES}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert statuses <= set(operation["responses"]), f"{method} {path}"


def test_python_client_readme_table_mirrors_the_daemon() -> None:
    text = (REPO / "clients" / "python" / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([a-z0-9_]+) \| `(\w+)` \|$", text, re.M)
    assert [(int(status), code, name) for status, code, name in rows] == _python_rows()
