"""SIGTERM: the daemon finishes the work it has (running and queued), refuses
new work, and exits 0. Each test starts its own daemon.
"""

from __future__ import annotations

import http.client
import threading

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
