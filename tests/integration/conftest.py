"""Fixtures of lensd's HTTP integration suite (docs/API.md is the contract).

Environment:
  LENSD_BIN        the lensd executable (required: the suite fails, never
                   skips, without it)
  LENSD_FIXTURES   fixture directory with models/gpt2-a and models/brackets
                   (default build/fixtures; tools/make_fixtures.py makes it)

Fixtures:
  lensd            the session's daemon: gpt2-a as "gpt2", brackets as
                   "brackets", a --web directory, port 0; stopped with
                   SIGTERM at the end, which must exit 0
  post, get        post(path, body, accept=None, headers=None) and
                   get(path, accept=None, headers=None) on that daemon, each
                   -> (status, headers, body bytes)
  start_daemon     start_daemon(args, ssl_context=None) -> a further Daemon,
                   stopped (and checked for exit 0) at the test's end
  cli_cache        cli_cache(model, args) -> tensors of `lensd cache`
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lensd_http, in any import mode

from lensd_http import WEB_SECRET, Daemon, fixtures_dir, model_path, run_cli  # noqa: E402


@pytest.fixture(scope="session")
def lensd_bin() -> str:
    path = os.environ.get("LENSD_BIN")
    if not path:
        pytest.fail("LENSD_BIN is not set: point it at the lensd executable "
                    "(e.g. build/server/lensd). The integration suite never skips.", pytrace=False)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"LENSD_BIN={path!r} is not an executable file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    found = {"gpt2": model_path("gpt2-a"), "brackets": model_path("brackets")}
    missing = [str(p) for p in found.values() if not p.is_dir()]
    if missing:
        pytest.fail(f"test models missing: {missing} (LENSD_FIXTURES={fixtures_dir()}; "
                    "make them with tools/make_fixtures.py)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def web_dir(tmp_path_factory) -> Path:
    """A dashboard directory, with a file beside it that must never be served
    and a symbolic link inside it that points at that file."""
    root = tmp_path_factory.mktemp("static")
    web = root / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>lensd test dashboard</title>\n")
    (web / "app.js").write_text("console.log('lensd');\n")
    secret = root / "secret.txt"
    secret.write_text(WEB_SECRET + "\n")
    (web / "leak.txt").symlink_to(secret)
    return web


@pytest.fixture(scope="session")
def lensd(lensd_bin, models, web_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "lensd-session.stderr"
    daemon = Daemon(lensd_bin, ["--model", f"gpt2={models['gpt2']}",
                                "--model", f"brackets={models['brackets']}",
                                "--web", str(web_dir)], log)
    daemon.start()
    yield daemon
    rc = daemon.stop()
    assert rc == 0, f"lensd exited {rc} after SIGTERM\n{daemon.describe()}"


@pytest.fixture(scope="session")
def post(lensd):
    return lensd.post


@pytest.fixture(scope="session")
def get(lensd):
    return lensd.get


@pytest.fixture
def start_daemon(lensd_bin, tmp_path):
    started: list[Daemon] = []

    def start(args: list[str], ssl_context=None, wait_ready: bool = True) -> Daemon:
        d = Daemon(lensd_bin, args, tmp_path / f"lensd-{len(started)}.stderr", ssl_context)
        started.append(d)
        return d.start(wait_ready=wait_ready)

    yield start
    problems = []
    for d in started:
        if d.proc is None:
            continue
        was_running = d.proc.poll() is None
        rc = d.stop()
        if was_running and rc != 0:
            problems.append(f"exit {rc} after SIGTERM\n{d.describe()}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def cli_cache(lensd_bin, tmp_path_factory):
    """cli_cache(model_dir, args) -> {name: array} written by `lensd cache`."""
    from safetensors.numpy import load_file

    out_dir = tmp_path_factory.mktemp("cli-cache")
    count = [0]

    def run(model: Path, args: list[str]) -> dict:
        count[0] += 1
        out = out_dir / f"cache{count[0]}.safetensors"
        run_cli(lensd_bin, ["cache", "--model", str(model), *args, "--out", str(out)])
        return load_file(str(out))

    return run
