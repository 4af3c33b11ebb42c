"""Offline tests of the client's errors and retries, against a real HTTP server
on 127.0.0.1 (http.server in a thread) that answers what each test scripts."""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

import lensd
from lensd import errors


@dataclass
class Reply:
    """One scripted answer. body: a dict (sent as JSON) or bytes. drop: close
    the connection without answering. sleep: seconds before answering. cut:
    send only this many bytes of the body, then wait stall seconds and close."""

    status: int = 200
    body: dict[str, Any] | bytes = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    sleep: float = 0.0
    cut: int | None = None
    stall: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    at: float


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left: the late answer's broken pipe


class Server:
    """A scripted daemon: each path answers its list of replies in turn (the
    last one again once they run out); every request is recorded."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.seen.append(Seen(self.command, self.path, body, time.monotonic()))
                    n = sum(1 for s in server.seen if s.path == self.path)
                    replies = server.script.get(self.path) or [Reply(404, {"error": {
                        "code": "not_found", "message": f"no route {self.path}"}})]
                    reply = replies[min(n, len(replies)) - 1]
                if reply.drop:
                    self.close_connection = True
                    return
                time.sleep(reply.sleep)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                content_type = "text/html" if isinstance(reply.body, bytes) else "application/json"
                self.send_header("Content-Type", reply.headers.get("Content-Type", content_type))
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    if name != "Content-Type":
                        self.send_header(name, value)
                self.end_headers()
                if reply.cut is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[: reply.cut])
                self.wfile.flush()
                time.sleep(reply.stall)
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _answer

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def on(self, path: str, *replies: Reply) -> None:
        self.script[path] = list(replies)

    def requests_to(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def _client(server: Server, **kwargs: Any) -> lensd.Client:
    kwargs.setdefault("retry_backoff", 0.01)
    return lensd.Client(server.url, timeout=kwargs.pop("timeout", 10), **kwargs)


def _error(code: str, message: str = "no", field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


# ------------------------------------------------------------------ the classes


def test_hierarchy() -> None:
    assert len(errors.ERRORS) == len({code for _, code, _ in errors.ERRORS})
    for status, code, name in errors.ERRORS:
        cls = getattr(lensd, name)
        assert cls is errors.error_class(code) and issubclass(cls, lensd.LensdError), name
    assert issubclass(lensd.LensdError, lensd.LensdException)
    for cls in (lensd.LensdConnectionError, lensd.LensdTimeout):
        assert issubclass(cls, lensd.LensdTransportError) and issubclass(cls, lensd.LensdException)
        assert not issubclass(cls, lensd.LensdError)  # `except LensdError` means: the daemon answered
    # the exceptions the client raised before these classes existed still catch them
    assert issubclass(lensd.LensdConnectionError, requests.ConnectionError)
    assert issubclass(lensd.LensdConnectionError, ConnectionError)
    assert issubclass(lensd.LensdTimeout, requests.Timeout) and issubclass(lensd.LensdTimeout, TimeoutError)


def test_a_subclass_keeps_the_attributes_and_pickles() -> None:
    error = lensd.NotFound(404, "not_found", "no model 'x'", "model", request_id="r-1", retry_after=None)
    try:
        raise error
    except lensd.LensdError as caught:  # code written before the subclasses still works
        assert (caught.status, caught.code, caught.field) == (404, "not_found", "model")
        assert str(caught) == "404 not_found: no model 'x' (field: model)"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is lensd.NotFound and str(copy) == str(error) and copy.request_id == "r-1"
    timeout = pickle.loads(pickle.dumps(lensd.LensdTimeout("slow", "http://x/y")))
    assert type(timeout) is lensd.LensdTimeout and str(timeout) == "slow" and timeout.url == "http://x/y"


@pytest.mark.parametrize("status,code,name", errors.ERRORS)
def test_from_response_gives_the_class_of_the_code(server: Server, status: int, code: str, name: str) -> None:
    server.on("/e", Reply(status, _error(code, "why", "prompts[2]"), {"X-Request-Id": "7"}))
    error = lensd.LensdError.from_response(requests.get(server.url + "/e"))
    assert type(error) is getattr(lensd, name)
    assert (error.status, error.code, error.message, error.field, error.request_id) == (
        status, code, "why", "prompts[2]", "7")


def test_from_response_goes_by_the_code_not_the_status(server: Server) -> None:
    # nginx's 504 in lensd's format (docs/DEPLOY.md) is an unavailable with another status
    server.on("/e", Reply(504, _error("unavailable", "the daemon did not answer")))
    error = lensd.LensdError.from_response(requests.get(server.url + "/e"))
    assert type(error) is lensd.Unavailable and error.status == 504
    # 409 has two codes: the body says which
    server.on("/c", Reply(409, _error("cancelled", "sweep cancelled", "progress_id")))
    assert type(lensd.LensdError.from_response(requests.get(server.url + "/c"))) is lensd.Cancelled
    # the class is the code's whatever class it is called on
    assert type(lensd.NotFound.from_response(requests.get(server.url + "/c"))) is lensd.Cancelled


def test_from_response_of_an_unknown_code_is_a_plain_lensd_error(server: Server) -> None:
    server.on("/e", Reply(418, _error("teapot", "short and stout")))
    error = lensd.LensdError.from_response(requests.get(server.url + "/e"))
    assert type(error) is lensd.LensdError and (error.status, error.code) == (418, "teapot")


@pytest.mark.parametrize("status,cls,code", [
    (413, lensd.TooLarge, "too_large"),
    (409, lensd.Conflict, "conflict"),  # the status's first row
    (503, lensd.Unavailable, "unavailable"),
    (502, lensd.LensdError, "error"),  # a status not in the table
])
def test_from_response_of_a_body_that_is_not_lensd_json(server: Server, status: int, cls: type, code: str) -> None:
    server.on("/e", Reply(status, b"<html>a proxy's page</html>", {"Retry-After": "5"}))
    error = lensd.LensdError.from_response(requests.get(server.url + "/e"))
    assert type(error) is cls and (error.status, error.code) == (status, code)
    assert error.message == "<html>a proxy's page</html>" and error.retry_after == 5.0


def test_from_response_of_json_that_is_not_an_error(server: Server) -> None:
    server.on("/readyz", Reply(503, {"status": "starting"}))
    error = lensd.LensdError.from_response(requests.get(server.url + "/readyz"))
    assert type(error) is lensd.Unavailable and error.code == "unavailable"
    assert json.loads(error.message) == {"status": "starting"}


@pytest.mark.parametrize("value,seconds", [
    ("2", 2.0), ("0.1", 0.1), ("-1", None), ("nan", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_retry_after_header(server: Server, value: str, seconds: float | None) -> None:
    server.on("/e", Reply(429, _error("rate_limited"), {"Retry-After": value}))
    assert lensd.LensdError.from_response(requests.get(server.url + "/e")).retry_after == seconds


# ------------------------------------------------------------------ retries


def test_503_with_retry_after_is_retried_after_it(server: Server) -> None:
    busy = Reply(503, _error("unavailable", "queue full"), {"Retry-After": "0.1"})
    server.on("/v1/models/m/logits", busy, busy, Reply(200, {"logits_seen": 1}))
    client = _client(server, retries=3, retry_backoff=5.0)  # a backoff this long would show
    started = time.monotonic()
    assert client._request("POST", "/v1/models/m/logits", {"prompt": "x"}) == {"logits_seen": 1}
    elapsed = time.monotonic() - started
    seen = server.requests_to("/v1/models/m/logits")
    assert len(seen) == 3 and {s.method for s in seen} == {"POST"}
    assert all(json.loads(s.body) == {"prompt": "x"} for s in seen)
    gaps = [b.at - a.at for a, b in zip(seen, seen[1:])]
    assert all(gap >= 0.09 for gap in gaps), gaps
    assert elapsed < 4, elapsed


def test_the_model_handle_retries_too(server: Server) -> None:
    info = {"name": "m", "config": {"n_layers": 1}, "hook_points": []}
    busy = Reply(503, _error("unavailable", "the models are still loading"), {"Retry-After": "0.1"})
    server.on("/v1/models/m", busy, Reply(200, info))
    server.on("/v1/models/m/tokenize", busy, Reply(200, {"tokens": [[0, 1]]}))
    model = _client(server).model("m")
    assert model.to_tokens("a").tolist() == [[0, 1]]
    assert len(server.requests_to("/v1/models/m")) == 2 and len(server.requests_to("/v1/models/m/tokenize")) == 2


def test_429_without_retry_after_backs_off_then_raises(server: Server) -> None:
    server.on("/v1/models", Reply(429, _error("rate_limited", "token over its requests per minute")))
    client = _client(server, retries=2, retry_backoff=0.1)
    with pytest.raises(lensd.RateLimited) as caught:
        client.models()
    assert caught.value.status == 429 and caught.value.retry_after is None
    seen = server.requests_to("/v1/models")
    assert len(seen) == 3
    gaps = [b.at - a.at for a, b in zip(seen, seen[1:])]
    # 0.1 s, then 0.2 s, each with jitter down to half
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095, gaps


def test_backoff_is_capped_by_max_retry_wait(server: Server) -> None:
    server.on("/v1/models", Reply(429, _error("rate_limited")))
    client = _client(server, retries=2, retry_backoff=100.0, max_retry_wait=0.05)
    started = time.monotonic()
    with pytest.raises(lensd.RateLimited):
        client.models()
    assert len(server.requests_to("/v1/models")) == 3 and time.monotonic() - started < 5


def test_a_retry_after_longer_than_max_retry_wait_is_raised_at_once(server: Server) -> None:
    server.on("/v1/models", Reply(503, _error("unavailable", "queue full"), {"Retry-After": "60"}))
    client = _client(server, retries=3, max_retry_wait=1.0)
    with pytest.raises(lensd.Unavailable) as caught:
        client.models()
    assert caught.value.retry_after == 60.0 and len(server.requests_to("/v1/models")) == 1


def test_retries_0_disables_retrying(server: Server) -> None:
    server.on("/v1/models", Reply(503, _error("unavailable", "queue full"), {"Retry-After": "0.1"}),
              Reply(200, {"models": []}))
    with pytest.raises(lensd.Unavailable) as caught:
        _client(server, retries=0).models()
    assert caught.value.retry_after == 0.1 and len(server.requests_to("/v1/models")) == 1


@pytest.mark.parametrize("status,code,cls", [
    (400, "bad_request", lensd.BadRequest),
    (404, "not_found", lensd.NotFound),
    (409, "conflict", lensd.Conflict),
    (500, "internal", lensd.Internal),
    (504, "unavailable", lensd.Unavailable),  # nginx's timeout: the request may be running
    (507, "insufficient_storage", lensd.InsufficientStorage),
])
def test_other_statuses_are_never_retried(server: Server, status: int, code: str, cls: type) -> None:
    server.on("/v1/models/m/logits", Reply(status, _error(code, "no", "prompt"), {"Retry-After": "0"}),
              Reply(200, {}))
    with pytest.raises(cls) as caught:
        _client(server, retries=5)._request("POST", "/v1/models/m/logits", {"prompt": ""})
    assert (caught.value.status, caught.value.code, caught.value.field) == (status, code, "prompt")
    assert len(server.requests_to("/v1/models/m/logits")) == 1


def test_wait_ready_polls_readyz_itself(server: Server) -> None:
    server.on("/readyz", Reply(503, {"status": "starting"}), Reply(503, {"status": "starting"}),
              Reply(200, {"status": "ready", "models": ["m"]}))
    client = _client(server, retries=0)  # wait_ready does not need the client's retries
    assert client.wait_ready(timeout=10, interval=0.01) == {"status": "ready", "models": ["m"]}
    assert len(server.requests_to("/readyz")) == 3


def test_wait_ready_times_out(server: Server) -> None:
    server.on("/readyz", Reply(503, {"status": "starting"}, {"Retry-After": "0"}))
    client = _client(server, retries=3)
    with pytest.raises(TimeoutError, match="not ready after 0.2 s") as caught:
        client.wait_ready(timeout=0.2, interval=0.02)
    assert not isinstance(caught.value, lensd.LensdTimeout)
    assert isinstance(caught.value.__cause__, lensd.Unavailable)


# ------------------------------------------------------- no answer: connections and timeouts


def _refused_url() -> str:
    """The URL of a local port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_connection_refused_is_a_lensd_connection_error() -> None:
    url = _refused_url()
    client = lensd.Client(url, timeout=5, retries=3)
    with pytest.raises(lensd.LensdConnectionError) as caught:
        client.health()
    error = caught.value
    assert isinstance(error.__cause__, requests.ConnectionError) and not isinstance(
        error.__cause__, lensd.LensdException)
    assert error.url == url + "/healthz" and url in str(error)
    # what caught it before still catches it, and so does the common base
    for base in (requests.ConnectionError, requests.RequestException, ConnectionError, lensd.LensdException):
        with pytest.raises(base):
            client.health()


def test_connection_refused_is_retried_only_when_asked() -> None:
    client = lensd.Client(_refused_url(), timeout=5, retries=2, retry_backoff=0.1,
                          retry_connection_errors=True)
    started = time.monotonic()
    with pytest.raises(lensd.LensdConnectionError):
        client.health()
    assert time.monotonic() - started >= 0.14  # two backoffs: >= 0.05 + 0.1


def test_a_dropped_connection_is_not_retried_by_default(server: Server) -> None:
    server.on("/v1/models", Reply(drop=True), Reply(200, {"models": []}))
    with pytest.raises(lensd.LensdConnectionError):
        _client(server, retries=3).models()
    assert len(server.requests_to("/v1/models")) == 1


def test_a_dropped_connection_is_retried_when_asked(server: Server) -> None:
    server.on("/v1/models", Reply(drop=True), Reply(drop=True), Reply(200, {"models": [{"name": "m"}]}))
    client = _client(server, retries=3, retry_connection_errors=True)
    assert client.models() == [{"name": "m"}]
    assert len(server.requests_to("/v1/models")) == 3


def test_a_body_cut_short_is_a_lensd_connection_error(server: Server) -> None:
    server.on("/v1/models", Reply(200, {"models": ["a" * 100]}, cut=20))
    with pytest.raises(lensd.LensdConnectionError):
        _client(server).models()


def test_a_read_timeout_is_a_lensd_timeout_and_never_retried(server: Server) -> None:
    server.on("/v1/models/m/patch", Reply(200, {"values": []}, sleep=1.5))
    client = _client(server, timeout=0.3, retries=3, retry_connection_errors=True)
    with pytest.raises(lensd.LensdTimeout) as caught:
        client._request("POST", "/v1/models/m/patch", {"sweep": "resid_pre"})
    assert isinstance(caught.value.__cause__, requests.Timeout)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, requests.Timeout)
    assert "within 0.3 s" in str(caught.value)
    time.sleep(0.2)  # a retry would have come by now
    assert len(server.requests_to("/v1/models/m/patch")) == 1


def test_a_timeout_while_reading_the_body_is_a_lensd_timeout(server: Server) -> None:
    server.on("/v1/models", Reply(200, {"models": ["a" * 100]}, cut=20, stall=1.5))
    with pytest.raises(lensd.LensdTimeout) as caught:
        _client(server, timeout=0.3, retry_connection_errors=True).models()
    # requests reports it as a ConnectionError, which the client tells from a broken connection
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert len(server.requests_to("/v1/models")) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        lensd.Client(retries=-1)
    with pytest.raises(ValueError):
        lensd.Client(max_retry_wait=-1)
