"""lensd against TransformerLens on one GPU: forward latency, throughput, run_with_cache.

    python bench/bench_gpu.py [--workdir DIR] [--lensd BIN] [--device cuda:0] [--out FILE.md]

Run on the GPU machine by tools/gpu_suite.sh (which also runs the GPU tests).
In one process, on the same GPU and the same random-weight model with
gpt2-small's exact shape (bench/make_gpt2_small_random.py; the same
HookedTransformer construction as bench/bench_cache.py):

- forward latency at batch 1 x 16 and 1 x 128 tokens;
- throughput at batch 8 x 1024;
- run_with_cache, every hook point, until the activations are in host
  memory: TransformerLens's cache as numpy arrays; lensd's engine with every
  activation copied out of the GPU (forward_ms), and, separately, the whole
  `lensd cache` process writing a safetensors file that numpy reads;
- run_with_cache through the daemon: a `lensd serve` on the GPU, the Python
  client's run_with_cache of the same prompt, every hook point, to numpy;
- the resid_pre and attn_head_out_by_pos patching sweeps through the daemon
  (bench/bench_patch.py's prompts, 16 tokens) against
  transformer_lens.patching on the GPU, its time measured on a sample of
  indices and scaled to the sweep, as bench_patch.py does on the CPU;
- the floor: the bytes of weights one forward must read, over the
  device-to-device copy bandwidth measured in the same run.

TransformerLens runs under torch.inference_mode on the GPU, timed with
torch.cuda.synchronize around each call, median of N after two warm-ups.
lensd is timed by `lensd cache --repeat N --timings` (forward_ms_median: from
the host tokens to the logits in host memory). What each side returns is not
the same thing, so the table says it: TransformerLens's logits stay on the
GPU unless ".cpu()" is in the row; lensd's are always copied to the host, all
positions or (last) the last position only. Every lensd result is checked
against TransformerLens's, so a fast wrong answer fails the run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cache  # noqa: E402
import bench_http  # noqa: E402
import bench_patch  # noqa: E402
import make_gpt2_small_random  # noqa: E402

PATCH_SWEEPS = ["resid_pre", "attn_head_out_by_pos"]
PATCH_TOKENS = 16

TOLERANCE = bench_cache.TOLERANCE


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_tl(fn, n: int) -> tuple[float, object]:
    """Median ms of n calls of fn() after two warm-ups, synchronising the GPU
    around each, and the last result."""
    import torch

    times, result = [], None
    with torch.inference_mode():
        for i in range(n + 2):
            result = None
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            torch.cuda.synchronize()
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), result


def run_lensd(lensd: Path, model_dir: Path, device: str, tokens: np.ndarray, extra: list, n: int,
              out: Path) -> dict:
    cmd = [str(lensd), "cache", "--model", str(model_dir), "--device", device,
           *bench_cache.tokens_args(tokens), *extra, "--out", str(out), "--repeat", str(n),
           "--timings"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lensd failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads([line for line in p.stderr.splitlines() if line.startswith("{")][-1])


def through_daemon(lensd: Path, model_dir: Path, device: str, model, tokens: np.ndarray,
                   tl_acts: dict, n: int, tl_device: str = "cuda") -> tuple[dict, list]:
    """run_with_cache of tokens and the PATCH_SWEEPS through `lensd serve` on device, with
    TransformerLens (model, on tl_device) timed on the same work: (cache row, patch rows)."""
    import torch

    import lensd as client

    proc, url = bench_http.start_daemon(lensd, model_dir, device)
    try:
        m = client.Client(url, timeout=3600).model("gpt2")
        times = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            logits, cache = m.run_with_cache(tokens)
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
        worst = max(bench_cache.max_abs_diff(np.asarray(cache[k]), v) for k, v in tl_acts.items())
        cache_row = {"http_ms": statistics.median(times), "worst": worst}
        log(json.dumps(cache_row))

        clean, corrupted, answers, metric = bench_patch.patch_inputs(PATCH_TOKENS)
        with torch.inference_mode():
            _, clean_cache = model.run_with_cache(torch.from_numpy(clean).to(tl_device))
        m.patch("resid_pre", clean[:, :4], corrupted[:, :4], answers=answers)  # warm-up
        patch_rows = []
        for sweep in PATCH_SWEEPS:
            t0 = time.perf_counter()
            got = m.patch(sweep, clean, corrupted, answers=answers)
            lensd_s = time.perf_counter() - t0
            tl_per_run, diff = bench_patch.tl_sampled(model, sweep, got, corrupted, clean_cache,
                                                      metric, 24, device=tl_device)
            patch_rows.append({"sweep": sweep, "runs": got.runs, "passes": got.passes,
                               "lensd_s": lensd_s, "tl_s": tl_per_run * got.runs, "worst": diff})
            log(json.dumps(patch_rows[-1]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return cache_row, patch_rows


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 10 * 2 * src.numel() * 4 / (time.perf_counter() - t0)


def weight_bytes_read(model) -> int:
    """Bytes of float32 weights one forward reads: all of them but the
    embedding tables, of which it reads a few rows."""
    skip = {"embed.W_E", "pos_embed.W_pos"}
    return sum(p.numel() * 4 for name, p in model.named_parameters() if name not in skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-gpu")
    ap.add_argument("--lensd", help="the lensd binary (default build/server/lensd, or $LENSD_BIN)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = ap.parse_args()
    started = time.perf_counter()

    import torch

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    lensd = bench_cache.find_lensd(args.lensd)
    shared = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))
    model_dir = make_gpt2_small_random.make(workdir / "gpt2-small-random", seed=0,
                                            tokenizer_dir=shared / "data" / "gpt2-tokenizer")
    ns: dict = {}
    exec(bench_cache.TL_BUILD, ns)
    model = ns["build_tl"](str(model_dir)).to("cuda")
    gpu_name = torch.cuda.get_device_name(0)
    bandwidth = copy_bandwidth()
    floor_ms = weight_bytes_read(model) / bandwidth * 1e3
    log(f"{gpu_name}: copy bandwidth {bandwidth / 1e12:.2f} TB/s, floor {floor_ms:.3f} ms")
    out = workdir / "row.safetensors"
    rows, ok = [], True

    def check(label: str, got: np.ndarray, want) -> float:
        nonlocal ok
        diff = bench_cache.max_abs_diff(got, want.float().cpu().numpy())
        if diff > TOLERANCE:
            ok = False
            log(f"WRONG: {label}: max |lensd - TL| = {diff:.3g}")
        return diff

    for B, T in [(1, 16), (1, 128), (8, 1024)]:
        tokens = bench_cache.random_tokens(B, T, seed=B * 10000 + T)
        toks = torch.from_numpy(tokens).cuda()
        n = args.repeat if B * T <= 128 else max(3, args.repeat // 4)
        tl_ms, tl_logits = time_tl(lambda: model(toks), n)
        tl_host_ms, _ = time_tl(lambda: model(toks).cpu(), n)
        all_t = run_lensd(lensd, model_dir, args.device, tokens, ["--logits-only"], n, out)
        diff_all = check(f"{B}x{T} logits", bench_cache.lensd_logits(out), tl_logits)
        last_t = run_lensd(lensd, model_dir, args.device, tokens,
                           ["--logits-only", "--last-logits"], n, out)
        diff_last = check(f"{B}x{T} last logits", bench_cache.lensd_logits(out), tl_logits[:, -1])
        del tl_logits
        rows.append({"shape": f"{B}x{T}", "tokens": B * T, "tl_ms": tl_ms, "tl_host_ms": tl_host_ms,
                     "lensd_all_ms": all_t["forward_ms_median"],
                     "lensd_last_ms": last_t["forward_ms_median"],
                     "diff": max(diff_all, diff_last), "n": n})
        log(json.dumps(rows[-1]))

    # run_with_cache end to end: every hook point of a 1 x 128 prompt, to numpy.
    tokens = bench_cache.random_tokens(1, 128, seed=7)
    toks = torch.from_numpy(tokens).cuda()

    def tl_cache():
        logits, cache = model.run_with_cache(toks)
        return logits.cpu().numpy(), {k: v.cpu().numpy() for k, v in cache.items()}

    n = 10
    tl_cache_ms, (tl_logits, tl_acts) = time_tl(tl_cache, n)
    # In the engine: every activation copied once into lensd's host memory.
    engine = run_lensd(lensd, model_dir, args.device, tokens, [], n, out)
    # Through the command line: a process that also writes the file numpy reads.
    process_ms = []
    for _ in range(3):
        t0 = time.perf_counter()
        timing = run_lensd(lensd, model_dir, args.device, tokens, [], 1, out)
        acts = load_file(str(out))
        process_ms.append((time.perf_counter() - t0) * 1e3 - timing["load_ms"])
    worst = max(bench_cache.max_abs_diff(acts[k], v) for k, v in tl_acts.items())
    missing = sorted(set(tl_acts) ^ (set(acts) - {"tokens", "logits"}))
    if worst > TOLERANCE or missing:
        ok = False
        log(f"WRONG: run_with_cache: worst {worst:.3g}, missing {missing}")
    cache_row = {"tl_ms": tl_cache_ms, "engine_ms": engine["forward_ms_median"],
                 "process_ms": statistics.median(process_ms), "hooks": len(tl_acts),
                 "bytes": sum(v.nbytes for v in tl_acts.values()), "worst": worst}
    log(json.dumps(cache_row))

    http_row, patch_rows = through_daemon(lensd, model_dir, args.device, model, tokens, tl_acts, n)
    if http_row["worst"] > TOLERANCE or any(r["worst"] > bench_patch.TOLERANCE for r in patch_rows):
        ok = False
        log(f"WRONG: through the daemon: {http_row}, {patch_rows}")
    report = render(gpu_name, bandwidth, floor_ms, rows, cache_row, http_row, patch_rows, ok,
                    time.perf_counter() - started, torch.__version__)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    out.unlink(missing_ok=True)
    if not ok:
        sys.exit(1)


def render(gpu, bandwidth, floor_ms, rows, cache_row, http_row, patch_rows, ok, wall_s,
           torch_version) -> str:
    from importlib.metadata import version

    lines = [
        f"# lensd vs TransformerLens on {gpu}",
        "",
        f"bench/bench_gpu.py, {time.strftime('%Y-%m-%d')}; TransformerLens "
        f"{version('transformer-lens')}, torch {torch_version}; "
        f"gpt2-small shape, random weights, float32 on both sides. "
        f"Copy bandwidth {bandwidth / 1e12:.2f} TB/s; floor = weights read per forward "
        f"/ that bandwidth = {floor_ms:.3f} ms. Results {'checked: all within' if ok else 'WRONG: beyond'} "
        f"{TOLERANCE:g} of TransformerLens. Wall {wall_s:.0f} s.",
        "",
        "| batch x tokens | TL forward (logits on GPU) | TL + logits.cpu() | lensd, all logits to host "
        "| lensd, last-position logits to host | TL / lensd (last) | lensd (last) / floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['tl_ms']:.3f} ms | {r['tl_host_ms']:.3f} ms | {r['lensd_all_ms']:.3f} ms "
            f"| {r['lensd_last_ms']:.3f} ms | {r['tl_ms'] / r['lensd_last_ms']:.1f}x "
            f"| {r['lensd_last_ms'] / floor_ms:.1f}x |")
    big = rows[-1]
    lines += [
        "",
        f"Throughput at {big['shape']}: TransformerLens {big['tokens'] / big['tl_ms'] * 1e3:,.0f} tokens/s, "
        f"lensd {big['tokens'] / big['lensd_last_ms'] * 1e3:,.0f} tokens/s (last-position logits), "
        f"{big['tokens'] / big['lensd_all_ms'] * 1e3:,.0f} tokens/s (all logits copied to the host).",
        "",
        f"run_with_cache, 1x128, all {cache_row['hooks']} hook points "
        f"({cache_row['bytes'] / 2**20:.0f} MiB) into host memory: TransformerLens (run_with_cache, "
        f"then .cpu().numpy() of each) {cache_row['tl_ms']:.1f} ms, lensd's engine "
        f"{cache_row['engine_ms']:.1f} ms: {cache_row['tl_ms'] / cache_row['engine_ms']:.1f}x. "
        f"Through the command line instead (a `lensd cache` process, model load excluded, that "
        f"writes a safetensors file numpy then reads): {cache_row['process_ms']:.0f} ms, "
        f"mostly process start and exit and the file. Through the daemon (HTTP, the Python "
        f"client's run_with_cache to numpy arrays): {http_row['http_ms']:.1f} ms: "
        f"{cache_row['tl_ms'] / http_row['http_ms']:.1f}x. "
        f"Worst |lensd - TL| {max(cache_row['worst'], http_row['worst']):.2g}.",
        "",
        f"Patching sweeps through the daemon ({PATCH_TOKENS} tokens, logit difference at the last "
        f"position; bench/bench_patch.py's prompts): TransformerLens's get_act_patch_* timed on "
        f"24 random indices and scaled to the sweep's runs.",
        "",
        "| sweep | runs | lensd passes | TransformerLens | lensd | TL / lensd | max diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in patch_rows:
        lines.append(f"| {r['sweep']} | {r['runs']} | {r['passes']} | {r['tl_s']:.2f} s | "
                     f"{r['lensd_s']:.3f} s | {r['tl_s'] / r['lensd_s']:.1f}x | {r['worst']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
