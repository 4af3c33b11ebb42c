"""Access control: bearer tokens and roles, the refusal of an open
non-loopback bind, per-token rate limits, and TLS. Each test starts its own
daemon (on the small brackets model, or gpt2-a where a prompt needs it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess

import pytest

from lensd_http import error_of, json_of, request

READ_TOKEN = "read-token-0123456789"
ADMIN_TOKEN = "admin.token~abcdef+/=="


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([
        {"name": "reader", "role": "read", "token": READ_TOKEN},
        {"name": "ops", "role": "admin", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()},
    ]))
    return path


@pytest.fixture
def guarded(start_daemon, models, tokens_file, web_dir):
    return start_daemon(["--tokens-file", str(tokens_file), "--model", f"brackets={models['brackets']}",
                         "--web", str(web_dir)])


def assert_unauthorized(answer):
    status, headers, body = answer
    assert status == 401, body[:300]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(body)["code"] == "unauthorized"


def test_no_token_is_401(guarded):
    assert_unauthorized(guarded.get("/v1/models"))
    assert_unauthorized(guarded.get("/v1/models/brackets"))
    assert_unauthorized(guarded.post("/v1/models/brackets/logits", {"prompt": "()"}))
    assert_unauthorized(guarded.get("/v1/nowhere"))  # no route is revealed without a token


@pytest.mark.parametrize("header", [
    "Bearer wrong-token",
    f"Bearer {READ_TOKEN}x",
    f"Bearer {READ_TOKEN[:-1]}",
    f"Basic {READ_TOKEN}",
    f"Bearer  {READ_TOKEN}",
    "Bearer",
    f"{READ_TOKEN}",
    f"Bearer {hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}",  # the hash is not the token
])
def test_wrong_token_is_401(guarded, header):
    assert_unauthorized(guarded.get("/v1/models", headers={"Authorization": header}))


def test_read_token_may_analyse(guarded):
    status, _, body = guarded.get("/v1/models", headers=bearer(READ_TOKEN))
    assert status == 200 and [m["name"] for m in json_of(body)["models"]] == ["brackets"]
    status, _, body = guarded.post("/v1/models/brackets/logits", {"prompt": "(())"}, headers=bearer(READ_TOKEN))
    assert status == 200 and json_of(body)["logits"]["shape"] == [1, 6, 2]
    # the scheme's name is case-insensitive (RFC 7235)
    assert guarded.get("/v1/models", headers={"Authorization": f"bearer {READ_TOKEN}"})[0] == 200


def test_token_is_in_the_log_line(guarded):
    _, headers, _ = guarded.get("/v1/models", headers=bearer(READ_TOKEN))
    line = guarded.wait_log(rf'^\{{"request": {headers["X-Request-Id"]}, .*$').group(0)
    assert '"token": "reader"' in line
    assert READ_TOKEN not in guarded.log_text(), "the token itself must never be logged"


def test_admin_routes_need_the_admin_role(guarded):
    status, _, body = guarded.get("/v1/admin/models", headers=bearer(READ_TOKEN))
    assert status == 403 and error_of(body)["code"] == "forbidden"
    status, _, body = guarded.get("/v1/admin/models", headers=bearer(ADMIN_TOKEN))
    assert status not in (401, 403), body[:300]
    # an admin token (stored as sha256) also reads
    assert guarded.get("/v1/models", headers=bearer(ADMIN_TOKEN))[0] == 200


def test_health_metrics_and_dashboard_are_open(guarded):
    status, _, body = guarded.get("/healthz")
    assert status == 200 and json_of(body) == {"status": "ok"}
    assert guarded.get("/readyz")[0] == 200
    assert guarded.get("/metrics")[0] == 200
    status, headers, _ = guarded.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_bad_tokens_file_is_refused_at_start(lensd_bin, models, tmp_path):
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps([{"name": "x", "role": "root", "token": "abc"}]))
    proc = subprocess.run([lensd_bin, "serve", "--port", "0", "--tokens-file", str(bad),
                           "--model", f"brackets={models['brackets']}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "[0].role" in proc.stderr
    assert "listening" not in proc.stdout


# ---- binding beyond loopback --------------------------------------------------------


def test_open_non_loopback_bind_is_refused(lensd_bin, models):
    proc = subprocess.run([lensd_bin, "serve", "--host", "0.0.0.0", "--port", "0",
                           "--model", f"brackets={models['brackets']}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "0.0.0.0" in proc.stderr and "--insecure" in proc.stderr and "token" in proc.stderr
    assert "listening" not in proc.stdout


def test_non_loopback_bind_with_insecure(start_daemon, models):
    d = start_daemon(["--host", "0.0.0.0", "--insecure", "--model", f"brackets={models['brackets']}"])
    assert d.stdout_lines[0].startswith("lensd listening on http://0.0.0.0:")
    assert d.get("/v1/models")[0] == 200  # reached on 127.0.0.1


def test_non_loopback_bind_with_tokens(start_daemon, models, tokens_file):
    d = start_daemon(["--host", "0.0.0.0", "--tokens-file", str(tokens_file),
                      "--model", f"brackets={models['brackets']}"])
    assert_unauthorized(d.get("/v1/models"))
    assert d.get("/v1/models", headers=bearer(READ_TOKEN))[0] == 200


# ---- rate limits ---------------------------------------------------------------------


def test_rate_limit_per_token(start_daemon, models, tokens_file, tmp_path):
    config = tmp_path / "rate.json"
    config.write_text(json.dumps({"limits": {"requests_per_minute": 3}}))
    d = start_daemon(["--config", str(config), "--tokens-file", str(tokens_file),
                      "--model", f"brackets={models['brackets']}"])
    for _ in range(3):
        assert d.get("/v1/models", headers=bearer(READ_TOKEN))[0] == 200
    status, headers, body = d.get("/v1/models", headers=bearer(READ_TOKEN))
    assert status == 429, body[:300]
    err = error_of(body)
    assert err["code"] == "rate_limited"
    retry = headers["Retry-After"]
    assert retry and retry.isdigit() and 1 <= int(retry) <= 60, retry
    # another token has its own bucket; open routes are not limited
    assert d.get("/v1/models", headers=bearer(ADMIN_TOKEN))[0] == 200
    for _ in range(5):
        assert d.get("/healthz")[0] == 200
    assert d.get("/v1/models", headers=bearer(READ_TOKEN))[0] == 429


# ---- TLS -------------------------------------------------------------------------------


@pytest.fixture
def tls_pair(tmp_path):
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("the openssl command is needed to make a test certificate (apt package openssl)",
                    pytrace=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def test_tls(start_daemon, models, tls_pair):
    cert, key = tls_pair
    trusting = ssl.create_default_context(cafile=str(cert))
    d = start_daemon(["--tls-cert", str(cert), "--tls-key", str(key),
                      "--model", f"gpt2={models['gpt2']}"], ssl_context=trusting)
    assert d.url.startswith("https://127.0.0.1:")
    status, _, body = d.get("/healthz")
    assert status == 200 and json_of(body) == {"status": "ok"}
    status, _, body = d.post("/v1/models/gpt2/tokenize", {"prompt": "Hello world"})
    assert status == 200 and json_of(body)["tokens"] == [[50256, 15496, 995]]
    # a client that does not trust the certificate refuses the connection
    with pytest.raises(ssl.SSLCertVerificationError):
        request(d.url, "GET", "/healthz", context=ssl.create_default_context(), timeout=10)


def test_tls_needs_both_files(lensd_bin, models, tls_pair):
    cert, _ = tls_pair
    proc = subprocess.run([lensd_bin, "serve", "--port", "0", "--tls-cert", str(cert),
                           "--model", f"brackets={models['brackets']}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--tls-key" in proc.stderr


# ---- what a token leaves behind is its own ------------------------------------------

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"


@pytest.fixture
def shared(start_daemon, models, tmp_path):
    """Two read tokens and an admin one, on gpt2-a (a prompt and a patch sweep need it)."""
    path = tmp_path / "lab-tokens.json"
    path.write_text(json.dumps([
        {"name": "alice", "role": "read", "token": ALICE},
        {"name": "bob", "role": "read", "token": BOB},
        {"name": "ops", "role": "admin", "token": ADMIN_TOKEN},
    ]))
    return start_daemon(["--tokens-file", str(path), "--model", f"gpt2={models['gpt2']}"])


def test_kept_caches_are_their_token_s(shared):
    """Another read token can neither read nor delete a kept cache: it is 404 to
    it, as one that never existed; its owner and admin tokens can."""
    status, _, body = shared.post("/v1/models/gpt2/run_with_cache",
                                  {"prompt": "Hi there", "names_filter": "hook_embed", "keep": True},
                                  headers=bearer(ALICE))
    assert status == 200, body[:300]
    cid = json_of(body)["cache_id"]
    for method, path in [("GET", f"/v1/caches/{cid}"), ("GET", f"/v1/caches/{cid}/hook_embed"),
                         ("DELETE", f"/v1/caches/{cid}")]:
        status, _, body = shared.request(method, path, headers=bearer(BOB))
        assert status == 404 and error_of(body)["field"] == "cache_id", (method, path, body[:300])
    assert shared.get(f"/v1/caches/{cid}", headers=bearer(ALICE))[0] == 200
    assert shared.get(f"/v1/caches/{cid}/hook_embed", headers=bearer(ADMIN_TOKEN))[0] == 200
    assert shared.request("DELETE", f"/v1/caches/{cid}", headers=bearer(ALICE))[0] == 200
    assert shared.get(f"/v1/caches/{cid}", headers=bearer(ALICE))[0] == 404


def test_progress_ids_are_their_token_s(shared):
    """A read token sees and cancels only its own sweeps (each token has progress ids
    of its own); admin tokens see every sweep."""
    import threading
    import time

    long_sweep = {"sweep": "attn_head_pattern_dest_src_pos",
                  "clean": {"tokens": [[1 + (i * 7) % 500 for i in range(64)]] * 2},
                  "corrupted": {"tokens": [[1 + (i * 11) % 500 for i in range(64)]] * 2},
                  "metric": {"answers": [5, 6]}, "progress_id": "sweep-1"}
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(status=shared.post(
        "/v1/models/gpt2/patch", long_sweep, headers=bearer(ALICE), timeout=300)[0]))
    worker.start()
    deadline = time.monotonic() + 60
    while shared.get("/v1/progress/sweep-1", headers=bearer(ALICE))[0] != 200:
        assert time.monotonic() < deadline, "alice's sweep never showed its progress"
        time.sleep(0.02)
    for method in ("GET", "DELETE"):
        status, _, body = shared.request(method, "/v1/progress/sweep-1", headers=bearer(BOB))
        assert status == 404 and error_of(body)["field"] == "progress_id", (method, body[:300])
    status, _, body = shared.get("/v1/progress/sweep-1", headers=bearer(ADMIN_TOKEN))
    assert status == 200 and not json_of(body)["cancelled"]  # bob's DELETE did not cancel it
    status, _, body = shared.request("DELETE", "/v1/progress/sweep-1", headers=bearer(ALICE))
    assert status == 200 and json_of(body)["cancelled"]
    worker.join(120)
    assert answer["status"] == 409  # cancelled by its owner


def test_wrong_tokens_are_throttled_per_address(guarded):
    """Ten wrong tokens a minute from one address; then every request from it,
    the right token included, is 429 with Retry-After until its bucket refills,
    while other addresses are served (it answered 3,175 guesses a second)."""
    import socket

    for i in range(10):
        assert_unauthorized(guarded.get("/v1/models", headers=bearer(f"guess-{i}")))
    for token in ("guess-10", READ_TOKEN):
        status, headers, body = guarded.get("/v1/models", headers=bearer(token))
        assert status == 429 and error_of(body)["code"] == "rate_limited", body[:300]
        assert "wrong access tokens" in error_of(body)["message"]
        assert 1 <= int(headers["Retry-After"]) <= 6
    host, port = guarded.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10,
                                  source_address=("127.0.0.2", 0)) as other:
        other.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ_TOKEN}"
                      "\r\nConnection: close\r\n\r\n".encode())
        assert other.recv(65536).startswith(b"HTTP/1.1 200")
