"""Activation patching sweeps: lensd's POST /patch against transformer_lens.patching.

    ~/.cache/lensd/venv/bin/python bench/bench_patch.py [--lensd BIN] [--tokens 16]
        [--sample 24] [--sweeps resid_pre,attn_out,...] [--shape gpt2-small|smollm2-135m|pythia-160m]
        [--out FILE.md]

On the random gpt2-small-shaped model of bench_cache.py (float32, CPU), or
with --shape on the random SmolLM2-135M-shaped (Llama) or Pythia-160M-shaped
(GPT-NeoX) model of bench/make_family_random.py, one clean and one corrupted
prompt of --tokens random ids that differ at two positions, and the logit
difference of two answer ids at the last position:

- lensd: the whole sweep through the Python client (HTTP, one request),
  wall time; and once more with full_recompute (every run from the
  embeddings at every position) for sweeps of at most --full-max-runs runs,
  to show what the reuse buys;
- TransformerLens: get_act_patch_<sweep> (one forward per index, in
  torch.inference_mode) on --sample indices drawn at random (its index_df
  argument), timed, then scaled to the sweep's number of runs: TL's cost per
  run does not depend on the index, and a full TL sweep of the larger ones
  takes many minutes here. Sweeps with at most --sample runs are run whole.
  On gpt2-small this is TransformerLens 3.9's HookedTransformer (as
  bench_cache.py builds it); on the family shapes, TransformerLens 4.3's
  transformer_lens.patching on its TransformerBridge in compatibility mode
  (bench_cache.BRIDGE_BUILD): the script runs itself again with
  tools/setup_tl4.sh's folder (--tl4) first on PYTHONPATH;
- the values TL computed are compared with lensd's at the same indices
  (max |diff| <= 1e-3, else the report says WRONG);
- the FLOP floor: the multiply-adds the patched runs need (each from its
  patched layer on and, with causal attention, from its patched position on,
  as lensd runs them, with the two answer logits at the metric's position
  only), at this machine's best measured OpenBLAS sgemm rate;
- `path_patch_heads` (not in the default list): path patching to the
  queries of PATH_RECEIVERS against the ARENA method written with
  TransformerLens hooks (tools/tl_path_patching.py), 2 forwards per sender,
  timed on --sample senders.

Both sides use the machine as they find it (threads, BLAS); the report says
what that was.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "clients" / "python"))
sys.path.insert(0, str(REPO / "tools"))
import bench_cache  # noqa: E402
import bench_http  # noqa: E402
import make_family_random  # noqa: E402

DEFAULT_SWEEPS = ["resid_pre", "attn_out", "mlp_out", "attn_head_out_all_pos",
                  "attn_head_pattern_all_pos", "attn_head_out_by_pos", "block_every"]
TOLERANCE = 1e-3
# path_patch_heads: the receivers of the IOI paper's name movers' queries in gpt2-small
PATH_RECEIVERS = [(9, 6), (9, 9), (10, 0)]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (its /proc stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SweepLoad(bench_cache.OtherLoad):
    """bench_cache.OtherLoad that also counts the daemon's CPU time as this benchmark's own
    (it is a child this process has not waited for, so os.times() leaves it out)."""

    def __init__(self, pid: int):
        self.pid = pid
        super().__init__()

    def _own(self) -> float:
        return bench_cache.OtherLoad._own() + proc_cpu_s(self.pid)


def least_disturbed(measure, pid: int, wait_s: float, attempts: int, label: str):
    """(result, other CPUs busy) of measure(), run again after a wait for quiet CPUs (up to
    attempts in all) while other processes used more than 0.2 CPUs during it."""
    best = None
    for attempt in range(attempts):
        if attempt:
            bench_cache.wait_idle(wait_s)
        load = SweepLoad(pid)
        got = measure()
        other = load.cpus()
        if best is None or other < best[1]:
            best = (got, other)
        if best[1] <= 0.2:
            break
        print(f"  {label}: other processes used {other:.2f} CPUs"
              + (", measuring again" if attempt + 1 < attempts else ""), flush=True)
    return best


def sgemm_gflops() -> float:
    """The best of several 2048^3 float32 products through numpy's BLAS, after a warm-up."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(8):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


def sweep_flops(cfg, T: int, got, prompts: int = 1) -> float:
    """Multiply-add FLOPs of the work the sweep's patched runs need, as lensd does it: its
    block_positions (each run from its layer and, with causal attention, its position on;
    path patching's two steps) at T keys each, and the two answer logits of every run.
    Grouped-query attention (n_key_value_heads) and gated MLPs (three matrices) count as such."""
    d, dm, H, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head
    Hkv = getattr(cfg, "n_key_value_heads", None) or H
    mlp = 3 if getattr(cfg, "gated_mlp", False) else 2
    per_block_position = 2 * (2 * d * H * dh + 2 * d * Hkv * dh + mlp * d * dm) + 2 * 2 * H * T * dh
    return got.block_positions * per_block_position + got.runs * prompts * 2 * 2 * d


def patch_inputs(T: int, shape: str = bench_cache.GPT2):
    """The benchmark's prompts: a clean row of T random ids, a corrupted copy differing at
    positions 3 and T - 4, and the answer pair of the logit difference at the last position:
    (clean [1, T], corrupted [1, T], [(answer, wrong)], metric(logits) for TransformerLens).
    On a family shape the ids are in [1, vocab) after its BOS (bench_cache.model_tokens)."""
    if shape == bench_cache.GPT2:
        clean = bench_cache.random_tokens(1, T, seed=1)
        corrupted = clean.copy()
        corrupted[0, 3] = (corrupted[0, 3] + 1000) % 50000
        corrupted[0, T - 4] = (corrupted[0, T - 4] + 2000) % 50000
    else:
        vocab = make_family_random.INFO[shape]["vocab"]
        clean = bench_cache.model_tokens(shape, 1, T, seed=1)
        corrupted = clean.copy()
        corrupted[0, 3] = 1 + (corrupted[0, 3] + 1000) % (vocab - 1)
        corrupted[0, T - 4] = 1 + (corrupted[0, T - 4] + 2000) % (vocab - 1)
    answers = [(262, 286)]

    def metric(logits):
        return logits[0, -1, answers[0][0]] - logits[0, -1, answers[0][1]]

    return clean, corrupted, answers, metric


def tl_sampled(tl, sweep: str, got, corrupted: np.ndarray, clean_cache, metric, sample: int,
               device: str = "cpu") -> tuple[float, float]:
    """TransformerLens's get_act_patch_<sweep> on `sample` random indices of lensd's answer
    `got` (its index_df argument; the whole sweep when it has no more), on the device the
    model is on: (seconds per patched run, max |lensd - TL| at those indices)."""
    import pandas as pd
    import torch
    from transformer_lens import patching

    values = np.asarray(got)
    components = [a for a in got.axes if a[0] == "component"]
    names = [a[0] for a in got.axes if a[0] != "component"]
    tl_names = ["head_index" if n == "head" and "pattern" in sweep else n for n in names]
    shape = values.shape[1:] if components else values.shape
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(shape)), size=min(sample, int(np.prod(shape))), replace=False)
    index = np.stack(np.unravel_index(flat, shape), axis=1)
    fn_name = "resid_pre" if sweep == "block_every" else sweep
    fn_name = {"attn_head_all_pos_every": "attn_head_out_all_pos",
               "attn_head_by_pos_every": "attn_head_out_by_pos"}.get(fn_name, fn_name)
    generic = getattr(patching, f"get_act_patch_{fn_name}")
    t = time.perf_counter()
    with torch.inference_mode():
        tl_vals = generic.func(tl, torch.from_numpy(corrupted).to(device), clean_cache, metric,
                               patch_setter=generic.keywords["patch_setter"],
                               activation_name=generic.keywords["activation_name"],
                               index_df=pd.DataFrame(index, columns=tl_names)).cpu().numpy()
    per_run = (time.perf_counter() - t) / len(index)
    mine = values[0][tuple(index.T)] if components else values[tuple(index.T)]
    return per_run, float(np.abs(mine - tl_vals).max())


def tl_path_sampled(tl, got, clean: np.ndarray, corrupted: np.ndarray, metric, sample: int,
                    device: str = "cpu") -> tuple[float, float]:
    """Path patching to PATH_RECEIVERS' queries with TransformerLens hooks (the ARENA
    method, tools/tl_path_patching.py) for `sample` random senders: (seconds per sender,
    its caches counted once for the sweep, and max |lensd - TL| at those senders)."""
    import torch
    import tl_path_patching as pp

    values = np.asarray(got)
    rng = np.random.default_rng(0)
    senders = np.stack(np.unravel_index(rng.choice(values.size, size=min(sample, values.size),
                                                   replace=False), values.shape), axis=1)
    with torch.inference_mode():
        t = time.perf_counter()
        caches = pp.z_caches(tl, torch.from_numpy(clean).to(device), torch.from_numpy(corrupted).to(device))
        cache_s = time.perf_counter() - t
        t = time.perf_counter()
        tl_vals = [pp.path_patch_sender(tl, tuple(s), PATH_RECEIVERS, "q", metric,
                                        torch.from_numpy(corrupted).to(device), caches) for s in senders]
        per_sender = (time.perf_counter() - t) / len(senders)
    worst = float(np.abs(values[tuple(senders.T)] - np.array(tl_vals)).max())
    return per_sender + cache_s / got.runs, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lensd", help="the lensd binary (default build/server/lensd, or $LENSD_BIN)")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--sample", type=int, default=24)
    ap.add_argument("--sweeps", default=",".join(DEFAULT_SWEEPS))
    ap.add_argument("--full-max-runs", type=int, default=12000,
                    help="time full recomputation only for sweeps of at most this many runs")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--shape", default=bench_cache.GPT2, choices=bench_cache.ALL_MODELS,
                    help="the model's shape (default gpt2-small, against TL 3.9's HookedTransformer; "
                    "the others against TL 4.3's TransformerBridge)")
    ap.add_argument("--tl4", type=Path,
                    default=Path(os.environ.get("LENSD_TL4", REPO / "build" / "tl4")),
                    help="TransformerLens 4.3 (tools/setup_tl4.sh's folder), for the family shapes")
    ap.add_argument("--wait-idle", type=float, default=30, metavar="S",
                    help="before each sweep, wait up to S seconds for other processes to leave the CPUs "
                    "(default 30)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="measurements of each side of a sweep at most while other processes used more "
                    "than 0.2 CPUs during it, the least disturbed kept (default 3)")
    ap.add_argument("--in-tl4", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    lensd = bench_cache.find_lensd(args.lensd)
    bridge = args.shape != bench_cache.GPT2
    model_dir = bench_cache.make_model(args.workdir.resolve(), args.shape, 0)
    if bridge and not args.in_tl4:
        # TL 4.3 cannot share a process with the venv's TL 3.9: run again with it first.
        tl4 = args.tl4.resolve()
        if not (tl4 / "transformer_lens").is_dir():
            sys.exit(f"no TransformerLens 4.3 in {tl4}: run tools/setup_tl4.sh (or pass --tl4 DIR)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(tl4), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--in-tl4",
               "--lensd", str(lensd)]
        sys.exit(subprocess.run(cmd, env=env).returncode)
    import torch
    from importlib.metadata import version

    import lensd as client

    ns: dict = {}
    exec(bench_cache.BRIDGE_BUILD if bridge else bench_cache.TL_BUILD, ns)
    tl = ns["build_tl"](str(model_dir))
    cfg = tl.cfg
    T = args.tokens
    clean, corrupted, answers, metric = patch_inputs(T, args.shape)
    with torch.inference_mode():
        _, clean_cache = tl.run_with_cache(torch.from_numpy(clean))

    blas = bench_cache.lensd_blas(lensd, model_dir)
    reference = (f"TransformerLens {version('transformer-lens')} "
                 + (f"TransformerBridge ({type(tl.adapter).__name__}, compatibility mode, default "
                    "processing)" if bridge else "HookedTransformer")
                 + f", torch {torch.__version__} with {torch.get_num_threads()} threads")
    shape_label = ("gpt2-small shape" if not bridge
                   else make_family_random.INFO[args.shape]["label"])
    print(f"cpu: {bench_cache.cpu_model()}\nlensd's BLAS: {blas}\nreference: {reference}", flush=True)
    gflops = sgemm_gflops()  # and again after the sweeps: the faster is the machine's rate
    proc, url = bench_http.start_daemon(lensd, model_dir)
    rows = []
    try:
        m = client.Client(url, timeout=3600).model("gpt2")
        m.patch("resid_pre", clean[:, :4], corrupted[:, :4], answers=answers)  # warm-up
        for sweep in args.sweeps.split(","):
            bench_cache.wait_idle(args.wait_idle)
            path = {"receivers": PATH_RECEIVERS, "receiver_input": "q"} if sweep == "path_patch_heads" else {}

            def lensd_sweep():
                # A new connection: the daemon closes one idle for 30 s (MHD_OPTION_CONNECTION_TIMEOUT),
                # which a wait for quiet CPUs or TransformerLens's previous sweep can exceed.
                m = client.Client(url, timeout=3600).model("gpt2")
                t = time.perf_counter()
                return m.patch(sweep, clean, corrupted, answers=answers, **path), time.perf_counter() - t

            (got, lensd_s), lensd_other = least_disturbed(lensd_sweep, proc.pid, args.wait_idle,
                                                          args.attempts, f"{sweep}, lensd")
            full, full_s = None, None
            if got.runs <= args.full_max_runs:
                m = client.Client(url, timeout=3600).model("gpt2")
                t = time.perf_counter()
                full = m.patch(sweep, clean, corrupted, answers=answers, full_recompute=True, **path)
                full_s = time.perf_counter() - t
            values = np.asarray(got)
            bench_cache.wait_idle(args.wait_idle)
            if path:
                def tl_sweep():
                    return tl_path_sampled(tl, got, clean, corrupted, metric, args.sample)
            else:
                def tl_sweep():
                    return tl_sampled(tl, sweep, got, corrupted, clean_cache, metric, args.sample)
            (tl_per_run, worst), tl_other = least_disturbed(tl_sweep, proc.pid, args.wait_idle,
                                                            args.attempts, f"{sweep}, TransformerLens")
            tl_s = tl_per_run * got.runs
            floor_s = sweep_flops(cfg, T, got) / (gflops * 1e9)
            rows.append({"sweep": sweep, "runs": got.runs, "passes": got.passes, "lensd_s": lensd_s,
                         "work": (full.block_positions if full else got.runs * T * cfg.n_layers)
                         / got.block_positions,
                         "full_s": full_s, "tl_s": tl_s, "worst": worst,
                         "floor_s": floor_s, "other": (lensd_other, tl_other),
                         "full_worst": float(np.abs(np.asarray(full) - values).max()) if full else 0.0})
            full_text = f"{full_s:.2f} s" if full else "not timed"
            print(f"{sweep}: lensd {lensd_s:.2f} s (full recompute {full_text}), TL ~{tl_s:.1f} s "
                  f"({tl_per_run * 1000:.0f} ms/run x {got.runs}), max diff {worst:.2g}; other CPUs busy "
                  f"{lensd_other:.2f} (lensd), {tl_other:.2f} (TL)", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    after = sgemm_gflops()
    if after > gflops:
        for r in rows:
            r["floor_s"] *= gflops / after
        gflops = after
    ok = all(r["worst"] <= TOLERANCE and r["full_worst"] <= TOLERANCE for r in rows)
    lines = [f"# Patching sweeps: lensd against TransformerLens ({time.strftime('%Y-%m-%d')})", "",
             f"bench/bench_patch.py; {shape_label}, random weights, float32, CPU backend, "
             f"{os.cpu_count()} CPUs: {bench_cache.cpu_model()}; lensd's BLAS: {blas}; "
             f"reference: {reference}; one clean and "
             f"one corrupted prompt of {T} tokens; metric: logit difference at the last position. "
             f"TransformerLens's time is its per-run time on {args.sample} random indices "
             f"(index_df) times the sweep's runs. Floor: the FLOPs of the patched runs, each from "
             f"its layer on and (causal position reuse) from its position on, at {gflops:.0f} "
             f"GFLOP/s (numpy sgemm, this machine). Work saved: full recomputation's block "
             f"positions over lensd's (positions computed x blocks run through); full "
             f"recomputation timed for sweeps of at most {args.full_max_runs} runs.", "",
             "| sweep | runs | lensd passes | TransformerLens | lensd | TL / lensd | lensd, full recompute "
             "| work saved | lensd / floor | max diff | other CPUs busy (lensd, TL) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sweep']} | {r['runs']} | {r['passes']} | {r['tl_s']:.1f} s | {r['lensd_s']:.2f} s "
                     f"| {r['tl_s'] / r['lensd_s']:.1f}x | "
                     f"{'—' if r['full_s'] is None else format(r['full_s'], '.2f') + ' s'} | {r['work']:.1f}x | "
                     f"{r['lensd_s'] / r['floor_s']:.1f}x | {r['worst']:.2g} "
                     f"| {r['other'][0]:.2f}, {r['other'][1]:.2f} |")
    lines += ["", "other CPUs busy: as in bench_cache.py (the daemon's CPU time counts as the benchmark's "
              "own), during lensd's sweep and during TransformerLens's sampled runs; above about 0.2 "
              "TransformerLens's per-run time is inflated (torch's 2 OpenMP threads share the CPUs) and "
              "the ratio with it."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    if not ok:
        sys.exit("WRONG: lensd's values differ from TransformerLens's")


if __name__ == "__main__":
    main()
