"""SIGTERM: the daemon finishes the work it has (running and queued), refuses
new work, and exits 0. Each test starts its own daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time

import numpy as np

from lensd_http import SAFETENSORS, error_of, json_of, request, safetensors_of, wait_until

GPT2 = "/v1/models/gpt2"


def long_request(n_prompts: int) -> dict:
    """Several seconds of work on 2 cores: full logits of n x 120 tokens and a
    top-k over gpt2-a's 50257-token vocabulary at every position."""
    rows = [[(i * 7919 + j * 104729) % 50000 + 100 for j in range(120)] for i in range(n_prompts)]
    return {"tokens": rows, "top_k": 1}


class InFlight(threading.Thread):
    """A request sent on its own thread; .answer is (status, headers, body) or the exception."""

    def __init__(self, daemon, path, body, accept=None):
        super().__init__(daemon=True)
        self.args = (daemon, path, body, accept)
        self.answer = None

    def run(self):
        d, path, body, accept = self.args
        try:
            self.answer = d.post(path, body, accept=accept, timeout=300)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.answer = e


def queue_depth(d) -> float:
    return d.metric("lensd_queue_depth", 'model="gpt2"') or 0


def refused_or_503(d) -> str:
    """A new request after SIGTERM: connection refused, or 503 + Retry-After."""
    try:
        status, headers, body = d.post(f"{GPT2}/logits", {"prompt": "Hi"}, timeout=30)
    except ConnectionRefusedError:
        return "refused"
    assert status == 503, body[:300]
    assert error_of(body)["code"] == "unavailable"
    assert headers["Retry-After"]
    return "503"


def test_sigterm_finishes_running_and_queued_work(start_daemon, models):
    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    # what the long requests must answer, computed before (and checked after)
    small = {"prompts": ["The cat sat on the mat", "Hi"]}
    want_small, _ = safetensors_of(d.post(f"{GPT2}/logits", small, accept=SAFETENSORS)[2])

    running = InFlight(d, f"{GPT2}/logits", long_request(64))
    running.start()
    wait_until(lambda: queue_depth(d) >= 1, 60, "the long request to reach the model")
    queued = InFlight(d, f"{GPT2}/logits", small, accept=SAFETENSORS)
    queued.start()
    wait_until(lambda: queue_depth(d) >= 2, 60, "the second request to queue behind it")

    d.terminate()
    d.wait_log(r"SIGTERM: finishing", 30)
    assert running.is_alive(), "the long request ended before SIGTERM: make it longer"
    outcome = refused_or_503(d)

    running.join(300)
    queued.join(300)
    status, _, body = running.answer
    assert status == 200, body[:300]
    doc = json_of(body)
    assert doc["top_k_ids"]["shape"] == [64, 120, 1]
    status, _, body = queued.answer
    assert status == 200, body[:300]
    got, _ = safetensors_of(body)
    assert np.array_equal(got["logits"], want_small["logits"])

    rc = d.stop()
    assert rc == 0, d.describe()
    assert "lensd: stopped" in d.log_text()
    print(f"request after SIGTERM: {outcome}")


def test_sigterm_refuses_work_on_an_open_connection(start_daemon, models):
    """A keep-alive connection opened before SIGTERM gets 503 for new work
    (or is closed), while a running request still completes."""
    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    host, port = d.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and json_of(resp.read()) == {"status": "ok"}

    running = InFlight(d, f"{GPT2}/logits", long_request(24))
    running.start()
    wait_until(lambda: queue_depth(d) >= 1, 60, "the long request to reach the model")
    d.terminate()
    d.wait_log(r"SIGTERM: finishing", 30)
    try:
        conn.request("POST", f"{GPT2}/logits", body=b'{"prompt": "Hi"}',
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 503, body[:300]
        assert error_of(body)["code"] == "unavailable" and resp.headers["Retry-After"]
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        pass  # closed: refused as well
    finally:
        conn.close()
    running.join(300)
    assert running.answer[0] == 200, running.answer
    assert d.stop() == 0, d.describe()


def test_sigterm_when_idle_exits_at_once(start_daemon, models):
    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    assert d.post(f"{GPT2}/tokenize", {"prompt": "Hi"})[0] == 200
    assert d.stop(timeout=30) == 0, d.describe()
    try:
        request(d.url, "GET", "/healthz", timeout=5)
        raise AssertionError("the daemon still answers after exiting")
    except ConnectionRefusedError:
        pass


def model_with_blocking_config(models, tmp_path):
    """gpt2-a's files, except that config.json is a FIFO: a load of this
    directory blocks opening it until a test writes the real config."""
    slow = tmp_path / "slow-model"
    slow.mkdir()
    for f in models["gpt2"].iterdir():
        if f.name != "config.json":
            (slow / f.name).symlink_to(f)
    os.mkfifo(slow / "config.json")
    return slow


def config_with(tmp_path, limits: dict) -> str:
    """A config file with these limits, whose model root is tmp_path (where the
    FIFO model lies)."""
    path = tmp_path / "lensd.json"
    path.write_text(json.dumps({"limits": limits, "model_roots": [str(tmp_path)]}))
    return str(path)


def test_sigterm_during_an_admin_load_answers_it_and_exits_0(start_daemon, models, tmp_path):
    """An admin load in flight at SIGTERM finishes, is answered 503 (its model
    not added), and the daemon exits 0 (it aborted with "MHD_stop_daemon()
    called while we have suspended connections")."""
    slow = model_with_blocking_config(models, tmp_path)
    d = start_daemon(["--config", config_with(tmp_path, {"shutdown_timeout_s": 60}),
                      "--model", f"gpt2={models['gpt2']}"])
    load = InFlight(d, "/v1/admin/models", {"name": "late", "path": str(slow)})
    load.start()
    writer = None
    deadline = time.monotonic() + 30
    while writer is None:  # until lensd has the FIFO open for reading: the load is under way
        try:
            writer = os.open(slow / "config.json", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "the admin load never opened config.json"
            time.sleep(0.05)
    d.terminate()
    d.wait_log(r"SIGTERM: finishing", 30)
    time.sleep(1)  # the drain has run; the load still waits for its config
    os.write(writer, (models["gpt2"] / "config.json").read_bytes())
    os.close(writer)
    load.join(60)
    status, _, body = load.answer
    assert status == 503 and "shutting down" in error_of(body)["message"], body[:300]
    assert d.stop(timeout=60) == 0, d.describe()


def test_shutdown_has_a_deadline(start_daemon, models, tmp_path):
    """Work that outlasts limits.shutdown_timeout_s (here an admin load that
    never gets its config) is cut off: the daemon exits 1 by then, saying why,
    instead of waiting for ever or aborting."""
    slow = model_with_blocking_config(models, tmp_path)
    d = start_daemon(["--config", config_with(tmp_path, {"shutdown_timeout_s": 3}),
                      "--model", f"gpt2={models['gpt2']}"])
    load = InFlight(d, "/v1/admin/models", {"name": "never", "path": str(slow)})
    load.start()
    time.sleep(2)  # the load is blocked opening the FIFO (probing it would unblock it)
    started = time.monotonic()
    d.terminate()
    rc = d.proc.wait(timeout=60)
    took = time.monotonic() - started
    assert rc == 1, d.describe()
    assert 2.5 <= took < 20, took
    assert "limits.shutdown_timeout_s" in d.log_text()


def test_a_slow_admin_load_does_not_hold_up_other_models(start_daemon, models, tmp_path):
    """An admin load reads its files without the CPU models' lock: while one
    waits on its config (a FIFO nobody writes yet), gpt2 still answers (it
    waited for the whole load, whatever it took)."""
    slow = model_with_blocking_config(models, tmp_path)
    d = start_daemon(["--config", config_with(tmp_path, {"shutdown_timeout_s": 60}),
                      "--model", f"gpt2={models['gpt2']}"])
    load = InFlight(d, "/v1/admin/models", {"name": "late", "path": str(slow)})
    load.start()
    time.sleep(1)  # the load is blocked opening the FIFO
    assert load.answer is None, load.answer
    started = time.monotonic()
    status, _, body = d.post(f"{GPT2}/logits", {"prompt": "Hi", "top_k": 1}, timeout=30)
    assert status == 200, body[:300]
    assert time.monotonic() - started < 10
    writer = os.open(slow / "config.json", os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, (models["gpt2"] / "config.json").read_bytes())
    os.close(writer)
    load.join(60)
    assert load.answer[0] == 201, load.answer
    assert d.stop() == 0, d.describe()
