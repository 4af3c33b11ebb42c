"""Load test of `lensd serve`: many concurrent clients, mixed requests, flat memory.

    python bench/bench_load.py [--lensd BIN] [--clients 64] [--seconds 600] [--out FILE.md]

Starts its own `lensd serve --port 0` (the bundled demo models of models/:
induction-2l and brackets, as the README's start command serves them; or
--config FILE) and drives it for --seconds with --clients concurrent
clients, each one keep-alive HTTP/1.1 connection issuing one request after
another, picked at random from a fixed mix over the whole API (docs/API.md):
tokenize, detokenize, logits (top_k), run_with_cache (small names_filter, as
JSON and as safetensors), attention, test_prompt, logit_diff with
attribution, run_with_hooks, generate (a few tokens), a small patching sweep,
GET /v1/models, /v1/models/{m}, /healthz and /metrics, kept caches (keep:
true, then list, one tensor and DELETE), and a small share (--bad-share) of
deliberately bad requests whose 4xx are expected and counted apart.

Every answer's status is checked and its body lightly (JSON parsed, the
fields that answer must have; safetensors header parsed, tensor names).
Anything else - another status, a connection error, a timeout, a body that
does not parse - is an unexpected error. The daemon's RSS (VmRSS of
/proc/PID/status) is sampled every second; its slope over the second half
of the run (least squares, MB per minute) is the flat-memory check.

Exit status: 0 if there was no unexpected error, the daemon stayed up and
exited 0 after SIGTERM, and its RSS grew by at most --max-rss-growth-mb
over the second half (fitted slope x half the run); 1 otherwise.

Standard library only: runs with any Python 3.9+ (the venv's too). The load
generator shares this machine's CPUs with the daemon; the report gives the
CPU time each used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import string
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"
NPY = "application/x-npy"
IND = "induction-2l"
BRK = "brackets"
LETTERS = string.ascii_letters


# ---- HTTP/1.1 over asyncio streams ------------------------------------------


class ConnError(Exception):
    """The connection failed (refused, reset, closed early, timed out)."""


class Conn:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.reader = self.writer = None
        self.reused = False

    async def close(self) -> None:
        if self.writer is not None:
            w, self.writer, self.reader = self.writer, None, None
            w.close()
            try:
                await w.wait_closed()
            except Exception:
                pass

    async def request(self, method: str, path: str, body: bytes | None = None,
                      content_type: str | None = JSON, accept: str | None = None):
        """(status, headers {lower name: value}, body bytes, retried: bool).

        A request that fails before any byte of its answer arrived, on a
        connection that had served a request before, is sent once more on a
        fresh connection (the server may close an idle keep-alive
        connection at any time; every HTTP client does this); `retried`
        says so."""
        for attempt in (0, 1):
            stale = self.writer is not None and self.reused
            got_bytes = [False]
            try:
                return (*await asyncio.wait_for(
                    self._once(method, path, body, content_type, accept, got_bytes),
                    self.timeout), attempt == 1)
            except asyncio.TimeoutError:
                await self.close()
                raise ConnError(f"timeout after {self.timeout:g} s")
            except (OSError, asyncio.IncompleteReadError, ConnError, ValueError) as e:
                await self.close()
                if attempt == 0 and stale and not got_bytes[0]:
                    continue
                raise ConnError(f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    async def _once(self, method, path, body, content_type, accept, got_bytes):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.reused = False
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body is not None:
            if content_type:
                head.append(f"Content-Type: {content_type}")
            head.append(f"Content-Length: {len(body)}")
        if accept:
            head.append(f"Accept: {accept}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            raise ConnError("connection closed before the status line")
        got_bytes[0] = True
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        headers = {}
        while True:
            h = await self.reader.readline()
            if not h:
                raise ConnError("connection closed in the headers")
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = await self.reader.readline()
                size = int(size_line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(chunks)
        elif "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        else:
            data = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            await self.close()
        else:
            self.reused = True
        return status, headers, data


# ---- the request mix ----------------------------------------------------------


def word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def induction_prompt(rng: random.Random) -> tuple[str, str, str]:
    """A prompt that repeats a random span and stops one letter short of
    the second copy's end: (prompt, the letter the induction head predicts,
    another letter)."""
    span = word(rng, 4, 24)
    cut = rng.randint(2, len(span) - 1)
    prompt = word(rng, 0, 6) + span + " " + span[:cut]
    answer = span[cut]
    wrong = rng.choice([c for c in LETTERS if c != answer])
    return prompt, answer, wrong


def brackets(rng: random.Random) -> str:
    return "".join(rng.choice("()") for _ in range(rng.randint(1, 20)))


def body_of(obj) -> bytes:
    return json.dumps(obj).encode()


def need(*keys):
    def check(status, headers, data):
        doc = json.loads(data)
        missing = [k for k in keys if k not in doc]
        if missing:
            return f"answer lacks {missing}"
        return None
    return check


def need_safetensors(*names):
    def check(status, headers, data):
        if not headers.get("content-type", "").startswith(SAFETENSORS):
            return f"content-type {headers.get('content-type')!r}"
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        missing = [k for k in names if k not in header]
        if missing:
            return f"safetensors lacks {missing}"
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        if 8 + n + end != len(data):
            return f"safetensors size {len(data)} != {8 + n + end}"
        return None
    return check


def need_npy(status, headers, data):
    return None if data[:6] == b"\x93NUMPY" else f"not npy: {data[:16]!r}"


def need_text(needle):
    def check(status, headers, data):
        return None if needle in data else f"answer lacks {needle!r}"
    return check


class Op:
    """One request to send: what it is, what answer it expects."""

    __slots__ = ("kind", "method", "path", "body", "ctype", "accept", "status", "check")

    def __init__(self, kind, method, path, body=None, ctype=JSON, accept=None, status=200,
                 check=None):
        self.kind, self.method, self.path, self.body = kind, method, path, body
        self.ctype, self.accept, self.status, self.check = ctype, accept, status, check


def m(model: str, route: str) -> str:
    return f"/v1/models/{model}/{route}"


def op_tokenize(rng):
    if rng.random() < 0.5:
        b = {"prompt": induction_prompt(rng)[0]}
    else:
        b = {"prompts": [induction_prompt(rng)[0] for _ in range(rng.randint(2, 4))],
             "padding_side": rng.choice(["right", "left"])}
    return Op("tokenize", "POST", m(IND, "tokenize"), body_of(b),
              check=need("tokens", "str_tokens", "attention_mask"))


def op_detokenize(rng):
    b = {"tokens": [rng.randint(32, 126) for _ in range(rng.randint(1, 30))]}
    return Op("detokenize", "POST", m(IND, "detokenize"), body_of(b), check=need("text"))


def op_logits(rng):
    if rng.random() < 0.6:
        b = {"prompt": induction_prompt(rng)[0], "positions": [-1], "top_k": rng.randint(1, 10)}
    else:
        b = {"prompts": [induction_prompt(rng)[0] for _ in range(rng.randint(2, 4))],
             "positions": [-1], "top_k": 5}
    return Op("logits", "POST", m(IND, "logits"), body_of(b),
              check=need("tokens", "top_k_ids", "top_k_logits", "top_k_probs"))


def op_logits_loss(rng):
    b = {"prompts": [induction_prompt(rng)[0] for _ in range(rng.randint(1, 3))],
         "positions": [-1], "loss": True}
    return Op("logits+loss", "POST", m(IND, "logits"), body_of(b), check=need("logits", "loss"))


def op_brackets(rng):
    b = {"prompts": [brackets(rng) for _ in range(rng.randint(1, 8))], "positions": [0]}
    return Op("brackets logits", "POST", m(BRK, "logits"), body_of(b), check=need("logits"))


def op_rwc_json(rng):
    b = {"prompt": induction_prompt(rng)[0], "names_filter": "blocks.*.attn.hook_pattern",
         "logits": False}
    return Op("run_with_cache json", "POST", m(IND, "run_with_cache"), body_of(b),
              check=need("tokens", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"))


def op_rwc_st(rng):
    b = {"prompts": [induction_prompt(rng)[0] for _ in range(rng.randint(1, 3))],
         "names": ["blocks.0.hook_resid_post"], "names_filter": "blocks.1.attn.hook_*"}
    if rng.random() < 0.3:
        b["dtype"] = "float16"
    return Op("run_with_cache safetensors", "POST", m(IND, "run_with_cache"), body_of(b),
              accept=SAFETENSORS,
              check=need_safetensors("tokens", "logits", "blocks.0.hook_resid_post",
                                     "blocks.1.attn.hook_pattern"))


def op_attention(rng):
    b = {"prompt": induction_prompt(rng)[0], "layers": [rng.choice([0, 1, -1])]}
    if rng.random() < 0.3:
        b["heads"] = [0, 2]
    return Op("attention", "POST", m(IND, "attention"), body_of(b),
              check=need("str_tokens", "patterns"))


def op_test_prompt(rng):
    p, a, _ = induction_prompt(rng)
    b = {"prompt": p, "answer": a, "prepend_space_to_answer": False, "top_k": 3}
    return Op("test_prompt", "POST", m(IND, "test_prompt"), body_of(b),
              check=need("answer_tokens", "text"))


def op_logit_diff(rng):
    p, a, w = induction_prompt(rng)
    b = {"prompts": [p], "answers": [a, w],
         "attribution": rng.choice([["accumulated_resid", "heads"], ["decompose_resid"]])}
    return Op("logit_diff", "POST", m(IND, "logit_diff"), body_of(b),
              check=need("logit_diff", "mean"))


def op_run_with_hooks(rng):
    p, a, w = induction_prompt(rng)
    hook = rng.choice([
        {"name": "blocks.1.attn.hook_z", "op": "zero", "heads": [0]},
        {"name": "blocks.0.hook_resid_post", "op": "scale", "factor": 0.5},
        {"name": "blocks.0.attn.hook_pattern", "op": "mean"},
    ])
    b = {"prompt": p, "hooks": [hook], "answers": [a, w], "logits": False}
    return Op("run_with_hooks", "POST", m(IND, "run_with_hooks"), body_of(b),
              check=need("logit_diff", "mean"))


def op_generate(rng):
    b = {"prompt": induction_prompt(rng)[0], "max_new_tokens": rng.randint(2, 6)}
    if rng.random() < 0.3:
        b.update(do_sample=True, temperature=0.8, top_k=20, seed=rng.randint(0, 1 << 30))
    return Op("generate", "POST", m(IND, "generate"), body_of(b), check=need("tokens", "text"))


def op_patch(rng):
    p, a, w = induction_prompt(rng)
    corrupted = p[:-1] + rng.choice([c for c in LETTERS if c != p[-1]])
    b = {"sweep": rng.choice(["resid_pre", "attn_head_out_all_pos"]),
         "clean": {"prompt": p}, "corrupted": {"prompt": corrupted},
         "metric": {"answers": [a, w]}}
    return Op("patch", "POST", m(IND, "patch"), body_of(b), check=need("values", "axes"))


def op_models(rng):
    return Op("GET /v1/models", "GET", "/v1/models", check=need("models"))


def op_model_info(rng):
    return Op("GET /v1/models/{m}", "GET", f"/v1/models/{rng.choice([IND, BRK])}",
              check=need("config", "hook_points"))


def op_healthz(rng):
    return Op("GET /healthz", "GET", "/healthz", check=need("status"))


def op_metrics(rng):
    return Op("GET /metrics", "GET", "/metrics", check=need_text(b"lensd_requests_total"))


KIND_ORDER = [
    "tokenize", "detokenize", "logits", "logits+loss", "brackets logits", "run_with_cache json",
    "run_with_cache safetensors", "attention", "test_prompt", "logit_diff", "run_with_hooks",
    "generate", "patch", "cache: keep (run_with_cache)", "cache: GET /v1/caches/{id}",
    "cache: GET /v1/caches/{id}/{name}", "cache: DELETE /v1/caches/{id}", "GET /v1/models",
    "GET /v1/models/{m}", "GET /healthz", "GET /metrics",
]
KEEP = "kept cache"  # a sequence of four requests: keep, list, one tensor, delete

# (weight, maker); the kept-cache sequence counts as one pick
MIX = [
    (10, op_tokenize), (3, op_detokenize), (14, op_logits), (3, op_logits_loss),
    (5, op_brackets), (7, op_rwc_json), (7, op_rwc_st), (6, op_attention),
    (6, op_test_prompt), (6, op_logit_diff), (6, op_run_with_hooks), (4, op_generate),
    (2, op_patch), (3, op_models), (2, op_model_info), (3, op_healthz), (2, op_metrics),
    (5, KEEP),
]


def mix_name(maker) -> str:
    return "keep" if maker is KEEP else maker.__name__[3:]


def bad_ops(rng) -> list:
    """Deliberately bad requests and the status each must get."""
    p = induction_prompt(rng)[0]
    return [
        Op("bad: malformed JSON", "POST", m(IND, "logits"), b'{"prompt": "' + p.encode(),
           status=400, check=need("error")),
        Op("bad: wrong type", "POST", m(IND, "logits"),
           body_of(rng.choice([{"prompt": 5}, {"prompt": p, "top_k": "x"},
                               {"prompts": p}, [p]])), status=400, check=need("error")),
        Op("bad: unknown model", "POST", m("no-such-model", "logits"), body_of({"prompt": p}),
           status=404, check=need("error")),
        Op("bad: unknown hook", "POST", m(IND, "run_with_cache"),
           body_of({"prompt": p, "names": ["blocks.7.hook_nope"]}), status=400,
           check=need("error")),
        Op("bad: layer out of range", "POST", m(IND, "attention"),
           body_of({"prompt": p, "layers": [7]}), status=422, check=need("error")),
        Op("bad: prompt too long", "POST", m(IND, "logits"), body_of({"prompt": "a" * 300}),
           status=413, check=need("error")),
        Op("bad: content type", "POST", m(IND, "tokenize"), body_of({"prompt": p}),
           ctype="text/plain", status=415, check=need("error")),
        Op("bad: accept", "POST", m(IND, "logits"), body_of({"prompt": p}), accept="image/png",
           status=406, check=need("error")),
        Op("bad: unknown cache", "GET", "/v1/caches/c0000000000000000", status=404,
           check=need("error")),
    ]


# ---- statistics ---------------------------------------------------------------


class Stats:
    def __init__(self):
        self.lat = defaultdict(list)        # kind -> seconds
        self.errors = Counter()             # kind -> unexpected answers
        self.samples = defaultdict(list)    # kind -> a few error descriptions
        self.retries = Counter()            # kind -> resent on a fresh connection
        self.bad_kinds = set()
        self.statuses = Counter()           # status -> count (0: no answer)

    def record(self, op: Op, seconds: float, status: int, error: str | None, retried: bool):
        self.lat[op.kind].append(seconds)
        self.statuses[status] += 1
        if op.status != 200:
            self.bad_kinds.add(op.kind)
        if retried:
            self.retries[op.kind] += 1
        if error:
            self.errors[op.kind] += 1
            if len(self.samples[op.kind]) < 3:
                self.samples[op.kind].append(error)


def pct(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def slope_per_s(points):
    """Least-squares slope of [(t, y)]."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0


# ---- the run ------------------------------------------------------------------


async def send(conn: Conn, op: Op, stats: Stats):
    """Sends op, records it; returns (status, parsed JSON or None)."""
    t0 = time.perf_counter()
    status, error, retried, doc = 0, None, False, None
    try:
        status, headers, data, retried = await conn.request(op.method, op.path, op.body,
                                                             op.ctype, op.accept)
        if status != op.status:
            error = f"status {status} (expected {op.status}): {data[:200]!r}"
        elif op.check:
            try:
                error = op.check(status, headers, data)
            except Exception as e:  # the body did not parse
                error = f"answer does not parse ({type(e).__name__}: {e}): {data[:120]!r}"
        if error is None and status == 200 and op.accept in (None, JSON) \
                and headers.get("content-type", "").startswith(JSON):
            doc = json.loads(data)
    except ConnError as e:
        error = f"connection: {e}"
    stats.record(op, time.perf_counter() - t0, status, error, retried)
    return status, doc


async def kept_cache(conn: Conn, rng: random.Random, stats: Stats):
    p = induction_prompt(rng)[0]
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
    status, doc = await send(conn, Op("cache: keep (run_with_cache)", "POST",
                                      m(IND, "run_with_cache"),
                                      body_of({"prompt": p, "names": names, "keep": True}),
                                      check=need("cache_id", "tensors", "ttl_s")), stats)
    if status != 200 or not doc:
        return status
    cid = doc["cache_id"]
    await send(conn, Op("cache: GET /v1/caches/{id}", "GET", f"/v1/caches/{cid}",
                        check=need("tensors")), stats)
    name = rng.choice(names)
    accept = rng.choice([JSON, NPY])
    await send(conn, Op("cache: GET /v1/caches/{id}/{name}", "GET",
                        f"/v1/caches/{cid}/{name}?batch=0&positions=-1", accept=accept,
                        check=need(name) if accept == JSON else need_npy), stats)
    await send(conn, Op("cache: DELETE /v1/caches/{id}", "DELETE", f"/v1/caches/{cid}",
                        check=need("deleted")), stats)
    return status


async def client(i: int, host: str, port: int, args, deadline: float, stats: Stats):
    rng = random.Random(args.seed * 100003 + i)
    conn = Conn(host, port, args.timeout)
    mix = [(w, f) for w, f in MIX if not args.only or mix_name(f) in args.only]
    weights = [w for w, _ in mix]
    makers = [f for _, f in mix]
    try:
        while time.monotonic() < deadline[0]:
            if rng.random() < args.bad_share or not makers:
                status, _ = await send(conn, rng.choice(bad_ops(rng)), stats)
            else:
                maker = rng.choices(makers, weights)[0]
                if maker is KEEP:
                    status = await kept_cache(conn, rng, stats)
                else:
                    status, _ = await send(conn, maker(rng), stats)
            if status == 0:  # no answer: do not spin against a daemon that is gone
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


def read_rss_kb(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_rss(proc, t_start: float, stop: asyncio.Event, rss: list, deadline: list,
                     died: list):
    """Samples VmRSS every second; when the daemon has gone, ends the run
    (the clients stop at their next request) and notes when."""
    while not stop.is_set():
        if proc.poll() is not None:
            died.append(time.monotonic() - t_start)
            deadline[0] = 0.0
            return
        kb = read_rss_kb(proc.pid)
        if kb is not None:
            rss.append((time.monotonic() - t_start, kb / 1024))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def progress(t_start: float, seconds: float, stats: Stats, rss: list, stop: asyncio.Event,
                   every: float):
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except asyncio.TimeoutError:
            pass
        n = sum(len(v) for v in stats.lat.values())
        el = time.monotonic() - t_start
        print(f"  {el:6.0f}/{seconds} s: {n} requests ({n / el:.1f}/s), "
              f"{sum(stats.errors.values())} unexpected, RSS {rss[-1][1] if rss else 0:.1f} MB",
              file=sys.stderr, flush=True)


async def run_load(host, port, proc, args):
    stats, rss, stop, died = Stats(), [], asyncio.Event(), []
    t_start = time.monotonic()
    deadline = [t_start + args.seconds]  # set to 0 when the daemon dies
    sampler = asyncio.ensure_future(sample_rss(proc, t_start, stop, rss, deadline, died))
    prog = asyncio.ensure_future(progress(t_start, args.seconds, stats, rss, stop,
                                          args.progress_every))
    await asyncio.gather(*(client(i, host, port, args, deadline, stats)
                           for i in range(args.clients)))
    elapsed = time.monotonic() - t_start
    stop.set()
    await asyncio.gather(sampler, prog)
    return stats, rss, elapsed, (died[0] if died else None)


# ---- the daemon ---------------------------------------------------------------


def start_daemon(lensd: Path, workdir: Path, extra: list, timeout: float = 60):
    """`lensd serve --port 0`; returns (process, host, port, log path) once /readyz is 200."""
    out, err = workdir / "lensd.stdout", workdir / "lensd.stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([str(lensd), "serve", "--port", "0", *extra], stdout=o, stderr=e,
                                cwd=str(REPO))
    end = time.monotonic() + timeout
    url = None
    while url is None:
        mo = re.search(r"listening on (http://\S+)", out.read_text())
        if mo:
            url = mo.group(1)
        elif proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            sys.exit(f"lensd serve did not start (exit {proc.poll()}):\n{err.read_text()[-3000:]}")
        else:
            time.sleep(0.05)
    hostport = url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    import urllib.error
    import urllib.request
    while True:
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=5).status == 200:
                break
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            sys.exit(f"lensd serve never became ready:\n{err.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, host, int(port), err


def stop_daemon(proc, timeout=120):
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed (no exit within %d s of SIGTERM)" % timeout


def daemon_log_statuses(path: Path) -> Counter:
    """Statuses of the daemon's per-request log lines."""
    c = Counter()
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith('{"request"'):
                mo = re.search(r'"status": (\d+)', line)
                if mo:
                    c[int(mo.group(1))] += 1
    return c


def metric_value(text: str, name: str):
    mo = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(mo.group(1)) if mo else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def find_lensd(arg) -> Path:
    for p in [arg, os.environ.get("LENSD_BIN"), REPO / "build-me" / "server" / "lensd",
              REPO / "build" / "server" / "lensd"]:
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p).resolve()
    sys.exit("no lensd binary: build it (meson setup build && ninja -C build) or pass --lensd BIN")


# ---- the report ---------------------------------------------------------------


def ms(s):
    return f"{s * 1e3:,.1f}" if s == s else "-"


def report(args, lensd, version, stats, rss, elapsed, t_warm, daemon_cpu, client_cpu,
           log_statuses, kept_bytes, rc, alive, died, growth_limit):
    lines = [f"# lensd under load: {args.clients} clients, {args.seconds} s "
             f"({time.strftime('%Y-%m-%d %H:%M')})", ""]
    lines += [f"- CPU: {cpu_model()}, {os.cpu_count()} CPUs (the load generator, one Python "
              "asyncio process, runs on the same CPUs as the daemon)",
              f"- daemon: `{lensd}` ({version}), "
              f"`{' '.join(['lensd serve --port 0', *args.extra])}`",
              f"- models: the bundled {IND} and {BRK} (models/)" if not args.extra else
              f"- models: from `{' '.join(args.extra)}` (the mix asks for {IND} and {BRK})",
              f"- clients: {args.clients} concurrent, one keep-alive connection each; "
              f"duration {args.seconds} s (ran {elapsed:.1f} s), warm-up {t_warm:g} s, "
              f"seed {args.seed}, bad-request share {args.bad_share:g}"
              + (f", only: {', '.join(sorted(args.only))}" if args.only else ""),
              f"- CPU time over the run: daemon {daemon_cpu:.1f} s, load generator "
              f"{client_cpu:.1f} s (of {elapsed * (os.cpu_count() or 1):.0f} CPU-seconds)", ""]

    total = sum(len(v) for v in stats.lat.values())
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    good_kinds = sorted((k for k in stats.lat if k not in stats.bad_kinds),
                        key=lambda k: (order.get(k, len(order)), k))
    bad_kinds = sorted(stats.bad_kinds)
    errors = sum(stats.errors.values())
    lines += [f"Throughput: **{total / elapsed:,.1f} requests/s** ({total:,} requests, "
              f"{sum(len(stats.lat[k]) for k in bad_kinds):,} of them deliberately bad); "
              f"unexpected errors: **{errors}**.", ""]

    def table(kinds, title, expected_col):
        out = [title, "", "| request | count | p50 ms | p99 ms | max ms | "
               + ("expected 4xx | " if expected_col else "") + "errors | retried |",
               "|---|---:|---:|---:|---:|" + ("---:|" if expected_col else "") + "---:|---:|"]
        for k in kinds:
            v = sorted(stats.lat[k])
            row = f"| {k} | {len(v):,} | {ms(pct(v, .5))} | {ms(pct(v, .99))} | {ms(v[-1])} | "
            if expected_col:
                row += f"{len(v) - stats.errors[k]:,} | "
            out.append(row + f"{stats.errors[k]} | {stats.retries[k]} |")
        allv = sorted(x for k in kinds for x in stats.lat[k])
        if allv:
            row = (f"| **all** | {len(allv):,} | {ms(pct(allv, .5))} | {ms(pct(allv, .99))} | "
                   f"{ms(allv[-1])} | ")
            if expected_col:
                row += f"{len(allv) - sum(stats.errors[k] for k in kinds):,} | "
            out.append(row + f"{sum(stats.errors[k] for k in kinds)} | "
                       f"{sum(stats.retries[k] for k in kinds)} |")
        return out + [""]

    lines += table(good_kinds, "Requests (latency from sending the request to the last byte of "
                   "the answer; errors: another status than 200, a connection error or timeout, "
                   "or an answer that does not parse; retried: resent once on a fresh connection "
                   "after the server closed a kept-alive one):", False)
    lines += table(bad_kinds, "Deliberately bad requests (expected 4xx: answered with the status "
                   "docs/API.md gives and an error body; anything else is an error):", True)

    if any(stats.samples.values()):
        lines += ["Unexpected errors (up to three of each kind):", ""]
        for k, v in sorted(stats.samples.items()):
            for s in v:
                lines.append(f"- {k}: `{s[:300]}`")
        lines.append("")

    start = rss[0][1] if rss else float("nan")
    warm = next((y for t, y in rss if t >= t_warm), float("nan"))
    end = rss[-1][1] if rss else float("nan")
    peak = max((y for _, y in rss), default=float("nan"))
    half = elapsed / 2
    second = [(t, y) for t, y in rss if t >= half]
    slope = slope_per_s(second) * 60
    growth = slope * (elapsed - half) / 60
    mid = second[0][1] if second else float("nan")
    lines += ["Daemon memory (VmRSS, sampled every second):", "",
              "| start | after warm-up | mid-run | end | max | slope, second half | "
              "fitted growth, second half | limit |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {start:.1f} MB | {warm:.1f} MB | {mid:.1f} MB | {end:.1f} MB | {peak:.1f} MB | "
              f"{slope:+.3f} MB/min | {growth:+.2f} MB | {growth_limit:.1f} MB |", ""]
    flat = growth <= growth_limit
    lines += [f"Flat memory: **{'yes' if flat else 'NO'}** (fitted growth over the second "
              f"half {growth:+.2f} MB, limit {growth_limit:.1f} MB = "
              f"max({args.max_rss_growth_mb:g} MB, {args.max_rss_growth_pct:g}% of the "
              "RSS after warm-up)). "
              f"Kept-cache bytes at the end (lensd_kept_cache_bytes): "
              f"{'-' if kept_bytes is None else f'{kept_bytes:,.0f}'}.", ""]
    st = ", ".join(f"{s}: {n:,}" for s, n in sorted(log_statuses.items()))
    died_at = f"{died:.1f} s into the run" if died is not None else "during the run"
    lines += [f"Statuses in the daemon's request log: {st or 'none'}. "
              + (f"Daemon up at the end; exit status after SIGTERM: {rc}." if alive else
                 f"Daemon **DIED** {died_at}; exit status {rc}"
                 + (f" (signal {-rc})" if isinstance(rc, int) and rc < 0 else "")
                 + f"; the end of its stderr is in {args.workdir / 'lensd.stderr'}."), ""]
    ok = errors == 0 and flat and alive and rc == 0
    lines += [f"Result: **{'PASS' if ok else 'FAIL'}**", ""]
    return "\n".join(lines), ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lensd", help="the lensd binary (default build-me/server/lensd, "
                    "build/server/lensd or $LENSD_BIN)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--seconds", type=int, default=600, help="duration (default 600)")
    ap.add_argument("--warmup", type=float, help="seconds before the 'after warm-up' RSS "
                    "(default a tenth of the run, at most 60)")
    ap.add_argument("--bad-share", type=float, default=0.03,
                    help="share of deliberately bad requests (default 0.03)")
    ap.add_argument("--timeout", type=float, default=120, help="per-request timeout, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-growth-mb", type=float, default=4.0,
                    help="allowed RSS growth over the second half, MB (default 4)")
    ap.add_argument("--max-rss-growth-pct", type=float, default=5.0,
                    help="... or this percentage of the RSS after warm-up, if larger (default 5)")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-load",
                    help="the daemon's stdout/stderr go here (default build/bench-load)")
    ap.add_argument("--config", help="pass --config FILE to lensd serve (it must serve "
                    f"{IND} and {BRK})")
    ap.add_argument("--progress-every", type=float, default=15,
                    help="seconds between progress lines on stderr")
    ap.add_argument("--only", help="comma list: send only these parts of the mix (and the bad "
                    "requests of --bad-share), to find which one a problem comes from: "
                    + ", ".join(mix_name(f) for _, f in MIX))
    ap.add_argument("--rss-out", type=Path, help="write the RSS samples here (CSV: s, MB)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    args = ap.parse_args()
    if args.only:
        args.only = set(args.only.split(","))
        unknown = args.only - {mix_name(f) for _, f in MIX}
        if unknown:
            ap.error(f"--only: unknown {sorted(unknown)}")
    args.extra = ["--config", args.config] if args.config else []
    t_warm = args.warmup if args.warmup is not None else min(60.0, args.seconds / 10)

    lensd = find_lensd(args.lensd)
    version = subprocess.run([str(lensd), "--version"], capture_output=True,
                             text=True).stdout.strip()
    args.workdir.mkdir(parents=True, exist_ok=True)
    proc, host, port, errlog = start_daemon(lensd, args.workdir, args.extra)
    print(f"lensd {proc.pid} on http://{host}:{port}; {args.clients} clients for "
          f"{args.seconds} s; log {errlog}", file=sys.stderr, flush=True)
    rc, kept = None, None
    try:
        import urllib.request
        models = json.loads(urllib.request.urlopen(f"http://{host}:{port}/v1/models").read())
        names = {x["name"] for x in models["models"]}
        if not {IND, BRK} <= names:
            sys.exit(f"the daemon serves {sorted(names)}; the mix needs {IND} and {BRK}")
        cpu0, self0 = cpu_seconds(proc.pid), time.process_time()
        stats, rss, elapsed, died = asyncio.run(run_load(host, port, proc, args))
        alive = proc.poll() is None and died is None
        daemon_cpu = cpu_seconds(proc.pid) - cpu0 if alive else float("nan")
        client_cpu = time.process_time() - self0
        if alive:
            try:
                text = urllib.request.urlopen(f"http://{host}:{port}/metrics",
                                              timeout=30).read().decode()
                kept = metric_value(text, "lensd_kept_cache_bytes")
            except OSError:
                pass
    finally:
        rc = stop_daemon(proc)
    if args.rss_out:
        args.rss_out.write_text("s,MB\n" + "".join(f"{t:.2f},{y:.3f}\n" for t, y in rss))
    base = max(next((y for t, y in rss if t >= t_warm), rss[-1][1] if rss else 0), 0)
    limit = max(args.max_rss_growth_mb, base * args.max_rss_growth_pct / 100)
    text, ok = report(args, lensd, version, stats, rss, elapsed, t_warm, daemon_cpu, client_cpu,
                      daemon_log_statuses(errlog), kept, rc, alive, died, limit)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"report: {args.out}", file=sys.stderr)
    else:
        print(text)
    if not ok:
        print("FAIL: unexpected errors, RSS growth over the limit, or the daemon did not stay up "
              "and exit 0 (see the report)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
