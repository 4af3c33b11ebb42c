"""The OpenAPI document at /openapi.json, and schemathesis against a live daemon.

The document is made from the endpoint table (server/endpoint.c) and the
error table (SRV_ERRORS in server/reply.h): every model endpoint is a path,
every error code is in the Error schema. schemathesis (PyPI) then generates
requests from it, valid and not, for a bounded time, and checks that the
daemon never answers 5xx, answers only the statuses and content types the
document lists, and keeps running.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lensd_http import Daemon

REPO = Path(__file__).resolve().parents[2]
# bounded so that the test command stays short; run longer with LENSD_SCHEMATHESIS_S
SCHEMATHESIS_S = int(os.environ.get("LENSD_SCHEMATHESIS_S", "90"))


def error_table() -> list[tuple[str, int, str]]:
    text = (REPO / "server" / "reply.h").read_text()
    return [(n, int(s), c) for n, s, c in re.findall(r'X\((\w+), (\d+), "(\w+)"\)', text)]


@pytest.fixture(scope="module")
def daemon(lensd_bin, models, tmp_path_factory):
    d = Daemon(lensd_bin, ["--model", f"gpt2a={models['gpt2']}"],
               tmp_path_factory.mktemp("openapi") / "lensd.log").start()
    yield d
    d.stop()


def test_document_lists_every_endpoint_and_error(daemon):
    status, headers, body = daemon.get("/openapi.json")
    assert status == 200, body
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    endpoints = re.findall(r"^const srv_endpoint srv_endpoint_(\w+) = \{",
                           "".join(p.read_text() for p in (REPO / "server/endpoints").glob("*.c")),
                           re.M)
    table = re.findall(r"&srv_endpoint_(\w+)", (REPO / "server/endpoint.c").read_text())
    assert sorted(endpoints) == sorted(table) and len(endpoints) >= 11
    for name in endpoints:
        op = doc["paths"][f"/v1/models/{{model}}/{name}"]["post"]
        assert op["operationId"] == name
        assert op["parameters"][0]["schema"]["enum"] == ["gpt2a"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
    for path in ("/healthz", "/readyz", "/v1/models", "/v1/capabilities", "/openapi.json"):
        assert "get" in doc["paths"][path]
    codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert codes["enum"] == [c for _, _, c in error_table()]


def test_capabilities(daemon):
    status, _, body = daemon.get("/v1/capabilities")
    assert status == 200, body
    caps = json.loads(body)
    assert [m["name"] for m in caps["models"]] == ["gpt2a"]
    model = caps["models"][0]
    assert model["device"].startswith("cpu") and model["dtype"] == "float32"
    assert model["n_layers"] > 0 and model["d_vocab"] > 0 and model["queue_depth"] == 0
    assert caps["queue_depth"] == 0 and caps["free_memory_bytes"] > 0
    assert caps["dtypes"] == ["float32"] and caps["ready"] is True


def test_schemathesis_finds_nothing(daemon, tmp_path):
    """Every failure schemathesis reports fails this test, with its curl line."""
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{daemon.url}/openapi.json",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
           "--max-examples", "25", "--max-time", str(SCHEMATHESIS_S), "--workers", "1",
           "--seed", "1", "--request-timeout", "120", "--suppress-health-check", "all"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=SCHEMATHESIS_S + 240,
                         cwd=tmp_path)
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    failures = output[output.find("=== FAILURES") if "=== FAILURES" in output else -6000:]
    assert run.returncode == 0, f"schemathesis failed:\n{failures[:12000]}"
    assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.describe()}"
    status, _, _ = daemon.get("/healthz")
    assert status == 200
