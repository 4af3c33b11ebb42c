"""Plain helpers of the integration suite: starting a lensd daemon, HTTP
requests with the standard library only, and decoding lensd's tensors.

conftest.py turns these into fixtures; test files import what they need
from here (a module name of its own, so that it never clashes with another
suite's conftest).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"
NPY = "application/x-npy"

WEB_SECRET = "lensd-integration-secret-outside-the-web-root"  # must never be served

START_TIMEOUT_S = 60     # first stdout line, then /readyz
STOP_TIMEOUT_S = 120     # SIGTERM to exit, queued work included
REQUEST_TIMEOUT_S = 120


def fixtures_dir() -> Path:
    return Path(os.environ.get("LENSD_FIXTURES", REPO / "build" / "fixtures")).resolve()


def model_path(name: str) -> Path:
    return fixtures_dir() / "models" / name


# ---- HTTP -------------------------------------------------------------------


def request(base_url: str, method: str, path: str, body=None, accept: str | None = None,
            headers: dict | None = None, timeout: float = REQUEST_TIMEOUT_S,
            context: ssl.SSLContext | None = None):
    """One request on a fresh connection: (status, headers, body bytes).

    body: a dict or list is sent as JSON (Content-Type: application/json);
    str or bytes are sent as they are (no Content-Type unless headers give
    one); None sends no body. path goes on the request line verbatim, so
    "/../x" reaches the server unnormalised.
    """
    url = urllib.parse.urlsplit(base_url)
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    send_headers = {}
    data = None
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        send_headers["Content-Type"] = JSON
    elif isinstance(body, str):
        data = body.encode()
    elif body is not None:
        data = bytes(body)
    if accept is not None:
        send_headers["Accept"] = accept
    send_headers.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=send_headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def json_of(body: bytes):
    return json.loads(body.decode("utf-8"))


def error_of(body: bytes) -> dict:
    """The "error" object of an error body, checked for its required keys."""
    doc = json_of(body)
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], err
    assert isinstance(err.get("message"), str) and err["message"], err
    assert set(err) <= {"code", "message", "field"}, err
    return err


# ---- tensors ----------------------------------------------------------------

_SPECIAL = {"-inf": -np.inf, "inf": np.inf, "nan": np.nan}
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _replace_special(x):
    if isinstance(x, list):
        return [_replace_special(v) for v in x]
    if isinstance(x, str):
        return _SPECIAL[x]
    return x


def tensor(obj: dict) -> np.ndarray:
    """A JSON tensor {"shape", "dtype", "data"} as a numpy array, checking
    that data has the shape it claims."""
    assert set(obj) == {"shape", "dtype", "data"}, sorted(obj)
    dtype = _DTYPES[obj["dtype"]]
    try:
        arr = np.array(obj["data"], dtype=dtype)
    except (ValueError, TypeError):  # "-inf", "inf" or "nan" among the numbers
        arr = np.array(_replace_special(obj["data"]), dtype=dtype)
    assert list(arr.shape) == list(obj["shape"]), (arr.shape, obj["shape"])
    return arr


def safetensors_of(body: bytes) -> tuple[dict, dict]:
    """(tensors, the response's other fields) of a safetensors body."""
    from safetensors.numpy import load

    n = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + n])
    fields = json.loads(header.get("__metadata__", {}).get("lensd", "{}"))
    return load(body), fields


def npy_of(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ---- the daemon -------------------------------------------------------------


class Daemon:
    """One `lensd serve` process.

    start() waits for the first stdout line ("lensd listening on URL") and
    then for /readyz; stderr (one JSON line per request) goes to log_path.
    stop() sends SIGTERM and returns the exit status.
    """

    LISTENING = re.compile(r"^lensd listening on (https?://\S+)$")

    def __init__(self, lensd_bin: str, args: list[str], log_path: Path,
                 ssl_context: ssl.SSLContext | None = None):
        self.cmd = [lensd_bin, "serve", *args]
        if "--port" not in args:
            self.cmd += ["--port", "0"]
        self.log_path = Path(log_path)
        self.ssl_context = ssl_context
        self.proc: subprocess.Popen | None = None
        self.terminated = False
        self.url = ""
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()

    # -- life cycle

    def start(self, wait_ready: bool = True) -> "Daemon":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            first = self._lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"no 'lensd listening on' line within {START_TIMEOUT_S} s\n"
                                 f"{self.describe()}")
        match = self.LISTENING.match(first or "")
        if not match:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            raise AssertionError(f"first stdout line is {first!r}, not 'lensd listening on URL'\n"
                                 f"{self.describe()}")
        # a wildcard bind is reached on loopback
        self.url = match.group(1).replace("://0.0.0.0:", "://127.0.0.1:")
        if wait_ready:
            self.wait_ready()
        return self

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self, timeout: float = START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"lensd exited while starting\n{self.describe()}"
            try:
                last = self.get("/readyz", timeout=5)
                if last[0] == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"/readyz not 200 within {timeout} s (last: {last!r})\n{self.describe()}")

    def terminate(self):
        """Sends SIGTERM once (a second one may end the process at once)."""
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.terminated = True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (unless already sent), then the exit status once the
        process has exited."""
        self.terminate()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"lensd did not exit within {timeout} s of SIGTERM\n{self.describe()}")
        self._log.close()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match:
        """Waits until the stderr log matches pattern (a regex); returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text(), re.MULTILINE)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout} s\n"
                                     f"{self.describe()}")
            time.sleep(0.02)

    def describe(self) -> str:
        status = self.proc.poll() if self.proc else None
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return (f"command: {' '.join(self.cmd)}\nexit status: {status}\n"
                f"stdout: {self.stdout_lines}\nstderr (last 4000 chars):\n{log[-4000:]}")

    # -- requests

    def request(self, method, path, body=None, accept=None, headers=None, timeout=REQUEST_TIMEOUT_S):
        return request(self.url, method, path, body, accept, headers, timeout, self.ssl_context)

    def post(self, path, body, accept=None, headers=None, timeout=REQUEST_TIMEOUT_S):
        return self.request("POST", path, body, accept, headers, timeout)

    def get(self, path, accept=None, headers=None, timeout=REQUEST_TIMEOUT_S):
        return self.request("GET", path, None, accept, headers, timeout)

    def post_json(self, path, body, headers=None) -> dict:
        """POST expecting 200 JSON; returns the decoded body."""
        status, hdrs, data = self.post(path, body, headers=headers)
        assert status == 200, (status, data[:2000])
        assert hdrs.get("Content-Type", "").startswith(JSON), hdrs.get("Content-Type")
        return json_of(data)

    def post_safetensors(self, path, body, headers=None) -> tuple[dict, dict]:
        status, hdrs, data = self.post(path, body, accept=SAFETENSORS, headers=headers)
        assert status == 200, (status, data[:2000])
        assert hdrs.get("Content-Type") == SAFETENSORS, hdrs.get("Content-Type")
        return safetensors_of(data)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def metric(self, name: str, labels: str = "") -> float | None:
        """The value of one sample of /metrics (labels: the text inside the
        braces, e.g. 'model="gpt2"'), or None when absent."""
        status, _, data = self.get("/metrics")
        assert status == 200
        want = f"{name}{{{labels}}}" if labels else name
        for line in data.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return None


def wait_until(check, timeout: float = 30, what: str = "condition"):
    """Polls check() until it returns a true value (returned); fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def run_cli(lensd_bin: str, args: list[str], timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([lensd_bin, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, (f"lensd {' '.join(args)} exited {proc.returncode}\n"
                                  f"{proc.stderr[-4000:]}")
    return proc
