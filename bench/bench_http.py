"""The daemon under load, and run_with_cache through HTTP against TransformerLens in process.

    ~/.cache/lensd/venv/bin/python bench/bench_http.py [--lensd BIN] [--seconds 10] [--out FILE.md]

On the random gpt2-small-shaped model of bench_cache.py, served by one
`lensd serve` on loopback:

1. logits requests (one prompt of 16 tokens, the last position's top 5) at
   concurrency 1, 8 and 64 for --seconds each, driven by wrk (Debian's
   package; apt-get install wrk): requests per second, latency percentiles,
   and any non-2xx answers (there must be none);
2. run_with_cache of every hook point into numpy arrays through the Python
   client (clients/python: HTTP, safetensors) against TransformerLens's
   run_with_cache in this process (tensors turned into numpy arrays), same
   model, same prompt, for 16 and 128 tokens: the median of N runs each, as
   a ratio, and the arrays compared (max |diff| <= 1e-3).

Everything runs on this machine's CPUs, load generator included; the report
says how many there are.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "clients" / "python"))
import bench_cache  # noqa: E402
import make_gpt2_small_random  # noqa: E402

PROMPT_IDS = [50256] + [(i * 7919) % 50000 for i in range(1, 16)]


def start_daemon(lensd: Path, model_dir: Path, device: str = "cpu") -> tuple[subprocess.Popen, str]:
    """`lensd serve` of model_dir as "gpt2" on device, on a free port, ready; (process, URL)."""
    proc = subprocess.Popen([str(lensd), "serve", "--model", f"gpt2={model_dir}", "--port", "0",
                             "--device", device],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().split()[-1]
    import lensd as client

    client.Client(url).wait_ready()
    return proc, url


def run_wrk(url: str, connections: int, seconds: int) -> dict:
    body = '{"tokens": [[%s]], "positions": [-1], "top_k": 5}' % ",".join(map(str, PROMPT_IDS))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.body = \'%s\'\n'
                     'wrk.headers["Content-Type"] = "application/json"\n' % body)
    try:
        out = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections),
                              "-d", f"{seconds}s", "--timeout", "60s", "--latency", "-s", script.name,
                              f"{url}/v1/models/gpt2/logits"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)

    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"connections": connections, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms("50"), "p90": ms("90"), "p99": ms("99"),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def drain(url: str) -> None:
    """Waits until the daemon has run the requests wrk left behind when it
    stopped (their answers go nowhere), so that the next row starts empty."""
    import urllib.request

    while True:
        metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
        if re.search(r"^lensd_queue_depth\{[^}]*\} 0$", metrics, re.M):
            return
        time.sleep(0.2)


def alternate_ms(fns, n: int) -> list:
    """Runs each of fns once to warm up, then n rounds of all of them in turn
    (so that a disturbance on this shared machine hits both sides alike);
    returns (median ms, last result) for each."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(n):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [(statistics.median(t), r) for t, r in zip(times, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lensd", help="the lensd binary (default build/server/lensd, or $LENSD_BIN)")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = ap.parse_args()
    lensd = bench_cache.find_lensd(args.lensd)
    model_dir = make_gpt2_small_random.make(args.workdir / "gpt2-small-random", seed=0)
    proc, url = start_daemon(lensd, model_dir)
    import lensd as client
    import torch

    try:
        load = []
        for c in (1, 8, 64):
            load.append(run_wrk(url, c, args.seconds))
            drain(url)
        m = client.Client(url).model("gpt2")
        ns: dict = {}
        exec(bench_cache.TL_BUILD, ns)
        tl = ns["build_tl"](str(model_dir))
        rows = []
        for T in (16, 128):
            tokens = bench_cache.random_tokens(1, T, seed=T)
            toks = torch.from_numpy(tokens)

            def tl_cache():
                with torch.inference_mode():
                    logits, cache = tl.run_with_cache(toks)
                    return logits.numpy(), {k: v.numpy() for k, v in cache.items()}

            def lensd_cache():
                return m.run_with_cache(tokens)

            bench_cache.wait_idle(60)
            (tl_ms, (tl_logits, tl_acts)), (lensd_ms, (logits, cache)) = alternate_ms(
                [tl_cache, lensd_cache], args.repeat)
            worst = max([bench_cache.max_abs_diff(logits, tl_logits)] +
                        [bench_cache.max_abs_diff(cache[k], v) for k, v in tl_acts.items()])
            rows.append({"T": T, "tl_ms": tl_ms, "lensd_ms": lensd_ms, "hooks": len(tl_acts),
                         "worst": worst})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ok = all(r["worst"] <= bench_cache.TOLERANCE for r in rows) and all(x["non2xx"] == 0 for x in load)
    lines = [f"# lensd's daemon on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d')})", "",
             "bench/bench_http.py; gpt2-small shape, random weights, float32, CPU backend; wrk on "
             "the same CPUs as the daemon.", "",
             "POST /logits (16 tokens, the last position's top 5):", "",
             "| concurrency | requests/s | p50 | p90 | p99 | requests | non-2xx |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for x in load:
        lines.append(f"| {x['connections']} | {x['rps']:.1f} | {x['p50']:.1f} ms | {x['p90']:.1f} ms "
                     f"| {x['p99']:.1f} ms | {x['requests']} | {x['non2xx']} |")
    lines += ["", "run_with_cache of every hook point into numpy arrays: the client over HTTP "
              "against TransformerLens in process:", "",
              "| tokens | hook points | TransformerLens | lensd via HTTP | TL / lensd | max abs diff |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['hooks']} | {r['tl_ms']:.1f} ms | {r['lensd_ms']:.1f} ms "
                     f"| {r['tl_ms'] / r['lensd_ms']:.2f}x | {r['worst']:.2g} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    if not ok:
        sys.exit("WRONG: a result differs from TransformerLens's, or the daemon refused requests")


if __name__ == "__main__":
    main()
