"""Long patching sweeps: progress, cancellation by request, cancellation when
the client goes away, against the session daemon (gpt2-a as "gpt2")."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

from lensd_http import error_of

# 2 prompts x 64 tokens, [layer, head, dest, src]: 32,768 patched runs in 1,024 passes
LONG = {"sweep": "attn_head_pattern_dest_src_pos",
        "clean": {"tokens": [[1 + (i * 7) % 500 for i in range(64)]] * 2},
        "corrupted": {"tokens": [[1 + (i * 11) % 500 for i in range(64)]] * 2},
        "metric": {"answers": [5, 6]}}


def wait_for_progress(lensd, pid: str, timeout: float = 60) -> dict:
    """The job's progress once at least one pass is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = lensd.get(f"/v1/progress/{pid}")
        if status == 200 and json.loads(body)["done"] > 0:
            return json.loads(body)
        time.sleep(0.02)
    raise AssertionError(f"no progress for {pid} within {timeout} s")


def test_progress_then_cancel(lensd, post):
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(
        zip(("status", "headers", "body"), post("/v1/models/gpt2/patch", {**LONG, "progress_id": "p-cancel"}))))
    worker.start()
    seen = wait_for_progress(lensd, "p-cancel")
    assert seen["total"] == 2 * 4 * 64 * 64 and 0 < seen["done"] < seen["total"]
    assert seen["id"] == "p-cancel" and not seen["cancelled"]
    status, _, body = lensd.request("DELETE", "/v1/progress/p-cancel")
    assert status == 200 and json.loads(body)["cancelled"]
    worker.join(timeout=120)
    assert answer["status"] == 409, answer["body"]
    error = error_of(answer["body"])
    assert error["code"] == "cancelled" and "cancelled after" in error["message"]
    assert lensd.get("/v1/progress/p-cancel")[0] == 404


def test_a_client_that_goes_away_stops_its_sweep(lensd):
    url = urllib.parse.urlsplit(lensd.url)
    body = json.dumps({**LONG, "progress_id": "p-gone"}).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(b"POST /v1/models/gpt2/patch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    seen = wait_for_progress(lensd, "p-gone")
    sock.close()
    # the sweep stops at its next pass (499 in the log: client closed request), not at its end
    lensd.wait_log(r'"route": "POST /v1/models/\{m\}/patch", "model": "gpt2", "status": 499', timeout=30)
    assert lensd.get("/v1/progress/p-gone")[0] == 404
    assert seen["done"] < seen["total"]


def test_unknown_progress_id(get):
    status, _, body = get("/v1/progress/nothing-here")
    assert status == 404 and error_of(body)["field"] == "progress_id"


# 64 rows of BOS alone, 127 new tokens each: 64 x (1 + 2 + ... + 127) = 520,192 token
# positions through the model, within limits.max_generate_tokens (1M), a few seconds here
LONG_GENERATE = {"tokens": [[50256]] * 64, "max_new_tokens": 127, "stop_at_eos": False}


def test_generate_reports_progress_and_is_cancelled(lensd, post):
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(zip(
        ("status", "headers", "body"),
        post("/v1/models/gpt2/generate", {**LONG_GENERATE, "progress_id": "g-cancel"}))))
    worker.start()
    seen = wait_for_progress(lensd, "g-cancel")
    assert seen["total"] == 127 and 0 < seen["done"] < 127, seen
    status, _, body = lensd.request("DELETE", "/v1/progress/g-cancel")
    assert status == 200 and json.loads(body)["cancelled"]
    worker.join(timeout=120)
    assert answer["status"] == 409, answer["body"][:300]
    error = error_of(answer["body"])
    assert error["code"] == "cancelled" and "generate stopped after" in error["message"]


def test_generate_over_its_budget_is_refused_before_it_runs(start_daemon, models, tmp_path):
    config = tmp_path / "lensd.json"
    config.write_text(json.dumps({"limits": {"max_generate_tokens": 500_000}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    started = time.monotonic()
    status, _, data = d.post("/v1/models/gpt2/generate", LONG_GENERATE)
    assert status == 413, data[:300]
    error = error_of(data)
    assert error["field"] == "max_new_tokens", error
    assert "520192 token positions" in error["message"] and "max_generate_tokens" in error["message"]
    assert time.monotonic() - started < 5
    # within the budget: runs
    status, _, data = d.post("/v1/models/gpt2/generate", {**LONG_GENERATE, "max_new_tokens": 3})
    assert status == 200 and len(json.loads(data)["tokens"][0]) == 4, data[:300]


def test_a_queued_sweep_shows_its_place_and_can_be_cancelled(lensd, post):
    """Progress is registered when a job is queued, not when it starts: a
    router or a notebook sees where it waits."""
    answers: dict[str, dict] = {"first": {}, "second": {}}

    def run(name):
        answers[name].update(zip(("status", "headers", "body"),
                                 post("/v1/models/gpt2/patch", {**LONG, "progress_id": f"p-{name}"})))

    first = threading.Thread(target=run, args=("first",))
    first.start()
    wait_for_progress(lensd, "p-first")
    second = threading.Thread(target=run, args=("second",))
    second.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, body = lensd.get("/v1/progress/p-second")
        if status == 200 and json.loads(body).get("queue_position") == 1:
            break
        time.sleep(0.02)
    seen = json.loads(body)
    assert seen["state"] == "queued" and seen["queue_position"] == 1 and seen["done"] == 0, seen
    running = json.loads(lensd.get("/v1/progress/p-first")[2])
    assert running["state"] == "running" and "queue_position" not in running
    assert lensd.request("DELETE", "/v1/progress/p-second")[0] == 200  # cancelled while queued
    assert lensd.request("DELETE", "/v1/progress/p-first")[0] == 200
    first.join(timeout=120)
    second.join(timeout=120)
    for name in answers:
        assert answers[name]["status"] == 409, answers[name]["body"][:300]
    assert "stopped before it started" in error_of(answers["second"]["body"])["message"]
    assert lensd.get("/v1/progress/p-second")[0] == 404
