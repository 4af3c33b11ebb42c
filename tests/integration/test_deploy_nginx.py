"""The deployment of docs/DEPLOY.md: two lensd daemons holding different
models behind Debian's nginx, routed by config/nginx/lensd-two-daemons.conf.

Daemon a serves the bundled induction-2l (no access control), daemon b the
bundled brackets with a tokens file. The template is rendered by
config/nginx/render.py (which asks both daemons for their models) into a
temporary directory, and nginx runs there as an unprivileged process with
config/nginx/nginx-unprivileged.conf, as DEPLOY.md says:

    nginx -p DIR/ -c DIR/nginx.conf -g 'daemon off; pid DIR/nginx.pid;'

(run as root, the test runs nginx as "nobody", in a directory of its own
under the system's temporary directory, since pytest's are root's alone).
Answers through nginx are compared with the same requests sent straight to
the daemon. nginx is required: without it the test fails (tools/setup.sh
installs Debian's nginx). NGINX_BIN overrides which nginx is run.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from lensd_http import JSON, REPO, SAFETENSORS, Daemon, error_of, json_of, request, safetensors_of

CONF_DIR = REPO / "config" / "nginx"
READ_TOKEN = "deploy-read-token-0123456789"
MODEL_A = "induction-2l"  # on daemon a, open
MODEL_B = "brackets"      # on daemon b, behind a tokens file
PROMPT_A = "The cat sat on the mat. The cat sat on the mat."
PROMPT_B = "(()())"
NGINX_START_S = 15


def bearer(token: str = READ_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def nginx_binary() -> str:
    """The nginx to run: NGINX_BIN, or nginx on PATH or in /usr/sbin (not on a
    user's PATH on Debian). Missing, the test fails: tools/setup.sh installs it."""
    given = os.environ.get("NGINX_BIN")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            pytest.fail(f"NGINX_BIN={given!r} is not an executable file", pytrace=False)
        return given
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail("nginx is not installed: tools/setup.sh installs Debian's nginx "
                    "(apt-get install nginx), or set NGINX_BIN", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx -p DIR/ -c DIR/nginx.conf -g 'daemon off; pid DIR/nginx.pid;', unprivileged."""

    def __init__(self, binary: str, prefix: Path, port: int, run_as: pwd.struct_passwd | None):
        self.binary, self.prefix, self.port, self.run_as = binary, prefix, port, run_as
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        d = str(self.prefix)
        return [self.binary, "-p", f"{d}/", "-c", f"{d}/nginx.conf",
                "-g", f"daemon off; pid {d}/nginx.pid;"]

    def start(self) -> "Nginx":
        self._stderr = open(self.prefix / "nginx.stderr", "wb")
        kwargs = {}
        if self.run_as is not None:
            kwargs = dict(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, start_new_session=True, **kwargs)
        deadline = time.monotonic() + NGINX_START_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited {self.proc.returncode} while starting\n{self.describe()}")
            try:
                status, _, body = request(self.url, "GET", "/healthz", timeout=2)
                if status == 200:
                    assert json_of(body) == {"status": "ok"}, body
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx not answering within {NGINX_START_S} s\n{self.describe()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: master and workers
                self.proc.wait()
        if self.proc is not None:
            self._stderr.close()

    def describe(self) -> str:
        def tail(name):
            p = self.prefix / name
            return p.read_text(errors="replace")[-3000:] if p.exists() else "(none)"
        return (f"command: {' '.join(self.command())}\nexit status: {self.proc.poll()}\n"
                f"stderr: {tail('nginx.stderr')}\nerror.log: {tail('error.log')}")

    def request(self, method, path, body=None, accept=None, headers=None):
        return request(self.url, method, path, body, accept, headers)


@dataclass
class Deployment:
    a: Daemon
    b: Daemon
    nginx: Nginx
    render_stderr: str

    def daemon(self, label: str) -> Daemon:
        return {"a": self.a, "b": self.b}[label]


def address_of(d: Daemon) -> str:
    return d.url.removeprefix("http://")


@pytest.fixture(scope="module")
def deployment(lensd_bin, tmp_path_factory):
    nginx_bin = nginx_binary()
    tmp = tmp_path_factory.mktemp("deploy")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps([{"name": "deploy-reader", "role": "read", "token": READ_TOKEN}]))
    a = Daemon(lensd_bin, ["--model", f"{MODEL_A}={REPO / 'models' / MODEL_A}"], tmp / "lensd-a.stderr")
    b = Daemon(lensd_bin, ["--model", f"{MODEL_B}={REPO / 'models' / MODEL_B}",
                           "--tokens-file", str(tokens)], tmp / "lensd-b.stderr")
    run_as = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    if run_as is not None:  # pytest's temporary directories are root's alone: one nobody may enter
        prefix = Path(tempfile.mkdtemp(prefix="lensd-nginx-"))
        os.chown(prefix, run_as.pw_uid, run_as.pw_gid)
    else:
        prefix = tmp / "nginx"
        prefix.mkdir()
    started: list[Daemon] = []
    nginx = None
    try:
        for d in (a, b):
            started.append(d.start(wait_ready=False))
        for d in (a, b):
            d.wait_ready()

        shutil.copy(CONF_DIR / "nginx-unprivileged.conf", prefix / "nginx.conf")
        for attempt in range(3):  # a free port may be taken before nginx binds it
            port = free_port()
            render = subprocess.run(
                [sys.executable, str(CONF_DIR / "render.py"), "--listen", f"127.0.0.1:{port}",
                 "--daemon", f"a={address_of(a)}", "--daemon", f"b={address_of(b)}",
                 "--out", str(prefix / "lensd-two-daemons.conf")],
                env={**os.environ, "LENSD_TOKEN": READ_TOKEN}, capture_output=True, text=True, timeout=60)
            assert render.returncode == 0, f"render.py exited {render.returncode}: {render.stderr}"
            if run_as is not None:
                for p in prefix.iterdir():
                    os.chown(p, run_as.pw_uid, run_as.pw_gid)
            nginx = Nginx(nginx_bin, prefix, port, run_as)
            try:
                nginx.start()
                break
            except AssertionError:
                nginx.stop()
                if attempt == 2 or "Address already in use" not in nginx.describe():
                    raise
        yield Deployment(a, b, nginx, render.stderr)
    finally:
        if nginx is not None:
            nginx.stop()
        problems = []
        for d in started:
            was_running = d.proc.poll() is None
            rc = d.stop()
            if was_running and rc != 0:
                problems.append(f"exit {rc} after SIGTERM\n{d.describe()}")
        if run_as is not None:
            shutil.rmtree(prefix, ignore_errors=True)
        assert not problems, "\n".join(problems)


# the requests compared, per daemon: (label, model, prompt, headers)
MODELS = [("a", MODEL_A, PROMPT_A, {}), ("b", MODEL_B, PROMPT_B, bearer())]


def test_rendered_map_names_each_daemons_model(deployment):
    assert f"daemon a ({address_of(deployment.a)}): {MODEL_A}" in deployment.render_stderr
    assert f"daemon b ({address_of(deployment.b)}): {MODEL_B}" in deployment.render_stderr
    conf = (deployment.nginx.prefix / "lensd-two-daemons.conf").read_text()
    code = "".join(line for line in conf.splitlines(True) if not line.lstrip().startswith("#"))
    assert not re.search(r"@[A-Z_]+@", code), "a placeholder is left"
    assert re.search(rf"^\s*{re.escape(MODEL_A)}\s+a;$", code, re.M)
    assert re.search(rf"^\s*{re.escape(MODEL_B)}\s+b;$", code, re.M)
    # what DEPLOY.md promises of the proxying that these daemons cannot show
    for directive in ("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                      "proxy_buffering off;", "client_max_body_size 8m;"):
        assert directive in code, directive
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", code)
    assert read_timeout and int(read_timeout.group(1)) > 300  # lensd's request_timeout_s
    assert "proxy_hide_header" not in code  # X-Request-Id, Retry-After, WWW-Authenticate kept
    # the documented command line: the pid file is where -g put it
    assert int((deployment.nginx.prefix / "nginx.pid").read_text()) == deployment.nginx.proc.pid


@pytest.mark.parametrize("label,model,prompt,headers", MODELS, ids=[MODEL_A, MODEL_B])
@pytest.mark.parametrize("action,extra", [("tokenize", {}), ("logits", {}),
                                          ("logits", {"positions": [-1], "top_k": 2})],
                         ids=["tokenize", "logits", "logits-top_k"])
def test_same_json_as_the_daemon(deployment, label, model, prompt, headers, action, extra):
    daemon = deployment.daemon(label)
    body = {"prompt": prompt, **extra}
    path = f"/v1/models/{model}/{action}"
    direct = daemon.post(path, body, headers=headers)
    routed = deployment.nginx.request("POST", path, body, headers=headers)
    assert direct[0] == 200, direct[2][:500]
    assert routed[0] == 200, routed[2][:500]
    assert routed[1]["Content-Type"].startswith(JSON)
    assert json_of(routed[2]) == json_of(direct[2])
    assert routed[1]["X-Lensd-Daemon"] == label
    # GET /v1/models/{m} too (the detail, with hook points)
    direct = daemon.get(f"/v1/models/{model}", headers=headers)
    routed = deployment.nginx.request("GET", f"/v1/models/{model}", headers=headers)
    assert routed[0] == direct[0] == 200
    assert json_of(routed[2]) == json_of(direct[2])


@pytest.mark.parametrize("label,model,prompt,headers", MODELS, ids=[MODEL_A, MODEL_B])
def test_x_request_id_is_the_daemons(deployment, label, model, prompt, headers):
    status, hdrs, _ = deployment.nginx.request("POST", f"/v1/models/{model}/tokenize",
                                               {"prompt": prompt}, headers=headers)
    assert status == 200
    rid = hdrs["X-Request-Id"]
    assert rid.isdigit(), rid  # lensd's own counter, not nginx's $request_id
    line = f'"request": {rid}, "route": "POST /v1/models/{{m}}/tokenize", "model": "{model}", "status": 200'
    deployment.daemon(label).wait_log(re.escape(line), timeout=10)


def test_unknown_model_is_a_json_404_like_lensds(deployment):
    for method, path, body in [("GET", "/v1/models/no-such-model", None),
                               ("POST", "/v1/models/no-such-model/logits", {"prompt": "x"}),
                               ("POST", "/v1/models/no.such_model-2/tokenize", {"prompt": "x"})]:
        status, hdrs, data = deployment.nginx.request(method, path, body)
        assert status == 404, data[:300]
        assert hdrs["Content-Type"].startswith(JSON)
        assert hdrs.get("X-Request-Id")
        assert "X-Lensd-Daemon" not in hdrs  # the router's own answer
        err = error_of(data)
        # the same error object as the daemon's own for a model it lacks
        d_status, _, d_data = deployment.a.request(method, path, body)
        assert d_status == 404
        assert err == error_of(d_data), (err, d_data)
        assert err["code"] == "not_found" and err["field"] == "model"
    # a name lensd could not have is not repeated into the JSON
    status, _, data = deployment.nginx.request("GET", '/v1/models/a%22b%5C/logits')
    assert status == 404
    assert error_of(data)["field"] == "model"


def test_per_daemon_routes(deployment):
    ngx = deployment.nginx
    for label, model, _, headers in MODELS:
        daemon = deployment.daemon(label)
        status, hdrs, data = ngx.request("GET", f"/daemons/{label}/v1/models", headers=headers)
        assert status == 200, data[:300]
        assert [m["name"] for m in json_of(data)["models"]] == [model]
        assert json_of(data) == json_of(daemon.get("/v1/models", headers=headers)[2])
        assert hdrs["X-Lensd-Daemon"] == label
        status, _, data = ngx.request("GET", f"/daemons/{label}/readyz")
        assert status == 200 and json_of(data) == {"status": "ready", "models": [model]}
        status, _, data = ngx.request("GET", f"/daemons/{label}/healthz")
        assert status == 200 and json_of(data) == {"status": "ok"}
        status, hdrs, data = ngx.request("GET", f"/daemons/{label}/metrics")
        assert status == 200 and "lensd_requests_total{" in data.decode()
        assert f'lensd_queue_depth{{model="{model}"}}' in data.decode()
    # the router's own /healthz, and a pointer for what no one daemon can answer
    status, hdrs, data = ngx.request("GET", "/healthz")
    assert status == 200 and json_of(data) == {"status": "ok"}
    for path in ("/v1/models", "/readyz", "/metrics", "/v1/capabilities"):
        status, hdrs, data = ngx.request("GET", path)
        assert status == 404 and hdrs["Content-Type"].startswith(JSON)
        assert f"/daemons/a{path}" in error_of(data)["message"]
    status, _, data = ngx.request("GET", "/")
    assert status == 404 and error_of(data)["code"] == "not_found"


@pytest.mark.parametrize("label,model,prompt,headers", [
    ("a", MODEL_A, "The cat sat on the mat. " * 10, {}),  # 241 tokens: about 5 MB
    ("b", MODEL_B, PROMPT_B, bearer()),
], ids=[MODEL_A, MODEL_B])
def test_safetensors_pass_through_byte_identical(deployment, label, model, prompt, headers):
    path = f"/v1/models/{model}/run_with_cache"
    body = {"prompt": prompt}
    direct = deployment.daemon(label).post(path, body, accept=SAFETENSORS, headers=headers)
    routed = deployment.nginx.request("POST", path, body, accept=SAFETENSORS, headers=headers)
    assert direct[0] == 200 and routed[0] == 200, routed[2][:300]
    assert routed[1]["Content-Type"] == SAFETENSORS
    assert len(routed[2]) == len(direct[2])
    assert routed[2] == direct[2]
    tensors, fields = safetensors_of(routed[2])
    assert "blocks.0.attn.hook_pattern" in tensors and fields["model"] == model
    if label == "a":
        assert len(routed[2]) > 4_000_000


def test_authorization_passes_through(deployment):
    ngx = deployment.nginx
    for method, path, body in [("GET", f"/v1/models/{MODEL_B}", None),
                               ("POST", f"/v1/models/{MODEL_B}/logits", {"prompt": PROMPT_B}),
                               ("GET", "/daemons/b/v1/models", None)]:
        status, hdrs, data = ngx.request(method, path, body)
        assert status == 401, data[:300]
        assert hdrs["WWW-Authenticate"].startswith("Bearer")
        assert error_of(data)["code"] == "unauthorized"
        assert hdrs["X-Lensd-Daemon"] == "b"
        status, _, data = ngx.request(method, path, body, headers=bearer())
        assert status == 200, data[:300]
    # daemon a has no tokens file: no key needed there
    assert ngx.request("GET", "/daemons/a/v1/models")[0] == 200


def test_kept_caches_found_without_a_prefix(deployment):
    ngx = deployment.nginx
    for label, model, prompt, headers in MODELS:
        status, _, data = ngx.request("POST", f"/v1/models/{model}/run_with_cache",
                                      {"prompt": prompt, "names": ["blocks.0.hook_resid_post"],
                                       "keep": True}, headers=headers)
        assert status == 200, data[:300]
        cache_id = json_of(data)["cache_id"]
        status, hdrs, data = ngx.request("GET", f"/v1/caches/{cache_id}", headers=headers)
        assert status == 200, data[:300]
        assert hdrs["X-Lensd-Daemon"] == label  # b's caches: asked of a (404), then b
        direct = deployment.daemon(label).get(f"/v1/caches/{cache_id}", headers=headers)
        assert json_of(data) == json_of(direct[2])
        status, _, data = ngx.request("GET", f"/v1/caches/{cache_id}/blocks.0.hook_resid_post",
                                      accept=SAFETENSORS, headers=headers)
        assert status == 200 and "blocks.0.hook_resid_post" in safetensors_of(data)[0]
        status, _, data = ngx.request("DELETE", f"/v1/caches/{cache_id}", headers=headers)
        assert status == 200 and json_of(data) == {"deleted": cache_id}
        # an id neither daemon holds gets b's answer: with b's token, its 404 (daemon a
        # has no tokens file and ignores the header)
        status, _, data = ngx.request("GET", f"/v1/caches/{cache_id}", headers=bearer())
        assert status == 404 and error_of(data)["field"] == "cache_id"


CAPABILITY_KEYS = {"models", "devices", "dtypes", "queue_depth", "free_memory_bytes", "version"}
CAPABILITY_MODEL_KEYS = {"name", "architecture", "device", "dtype", "n_layers", "d_model", "n_ctx",
                         "d_vocab"}


@pytest.mark.parametrize("label,model,prompt,headers", MODELS, ids=[MODEL_A, MODEL_B])
def test_capabilities_per_daemon(deployment, label, model, prompt, headers):
    direct = deployment.daemon(label).get("/v1/capabilities", headers=headers)
    routed = deployment.nginx.request("GET", f"/daemons/{label}/v1/capabilities", headers=headers)
    assert routed[0] == direct[0], (routed[0], direct[0], routed[2][:300])
    if direct[0] != 200:
        # this daemon does not serve it yet: its answer still passes through unchanged
        assert routed[2] == direct[2]
        warnings.warn(f"daemon {label} answers {direct[0]} at /v1/capabilities: only the "
                      "pass-through of that answer was checked")
        return
    doc = json_of(routed[2])
    assert CAPABILITY_KEYS <= set(doc), sorted(doc)
    assert [m["name"] for m in doc["models"]] == [model]
    assert CAPABILITY_MODEL_KEYS <= set(doc["models"][0]), sorted(doc["models"][0])
    assert isinstance(doc["queue_depth"], int) and isinstance(doc["version"], str)
    direct_doc = json_of(direct[2])
    for key in ("models", "dtypes", "version"):  # not what may change between two requests
        assert doc[key] == direct_doc[key], key
    if label == "b":
        assert deployment.nginx.request("GET", "/daemons/b/v1/capabilities")[0] == 401


def test_body_over_the_limit_is_a_json_413(deployment):
    body = json.dumps({"prompt": "a" * (8 << 20)}).encode()
    status, hdrs, data = deployment.nginx.request("POST", f"/v1/models/{MODEL_A}/logits", body,
                                                  headers={"Content-Type": JSON})
    assert status == 413
    assert error_of(data)["code"] == "too_large"
    assert "X-Lensd-Daemon" not in hdrs  # nginx's own answer, before the daemon sees the body


def test_python_client_through_the_router(deployment):
    """lensd.Client on the router (model routes) and on one daemon's prefix."""
    import numpy as np

    import lensd

    with lensd.Client(deployment.nginx.url, token=READ_TOKEN) as client:
        for label, model, prompt, _ in MODELS:
            m = client.model(model)
            logits, cache = m.run_with_cache(prompt, names_filter="blocks.0.attn.hook_pattern")
            with lensd.Client(deployment.daemon(label).url, token=READ_TOKEN) as direct:
                d_logits, d_cache = direct.model(model).run_with_cache(
                    prompt, names_filter="blocks.0.attn.hook_pattern")
            np.testing.assert_array_equal(logits, d_logits)
            np.testing.assert_array_equal(cache["pattern", 0], d_cache["pattern", 0])
    for label, model, _, _ in MODELS:
        with lensd.Client(f"{deployment.nginx.url}/daemons/{label}", token=READ_TOKEN) as one:
            assert one.wait_ready(timeout=10)["models"] == [model]
            assert [i["name"] for i in one.models()] == [model]
            info = json_of(deployment.daemon(label).get(f"/v1/models/{model}", headers=bearer())[2])
            assert one.model(model).cfg.n_layers == info["config"]["n_layers"]


# The last two change the deployment: keep them at the end of the file.

def test_retry_after_passes_through(deployment):
    """Ten wrong tokens a minute from one address, then 429 + Retry-After.
    Behind the router every client has nginx's address (docs/DEPLOY.md)."""
    ngx = deployment.nginx
    seen = []
    for _ in range(12):
        status, hdrs, data = ngx.request("GET", "/daemons/b/v1/models", headers=bearer("wrong-token"))
        seen.append(status)
        if status == 429:
            break
    assert seen[-1] == 429, seen
    assert int(hdrs["Retry-After"]) >= 1
    assert error_of(data)["code"] == "rate_limited"
    assert hdrs["X-Request-Id"].isdigit()


def test_stopped_daemon_is_a_json_503(deployment):
    assert deployment.b.stop() == 0
    status, hdrs, data = deployment.nginx.request("POST", f"/v1/models/{MODEL_B}/logits",
                                                  {"prompt": PROMPT_B}, headers=bearer())
    assert status == 503
    assert hdrs["Retry-After"] == "5"
    assert error_of(data)["code"] == "unavailable"
    status, _, _ = deployment.nginx.request("GET", "/daemons/b/readyz")
    assert status == 503
    # the other daemon is unaffected
    status, _, _ = deployment.nginx.request("POST", f"/v1/models/{MODEL_A}/tokenize", {"prompt": "hi"})
    assert status == 200
