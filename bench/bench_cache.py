"""lensd against TransformerLens: run_with_cache and logits, one machine, one run.

    ~/.cache/lensd/venv/bin/python bench/bench_cache.py [--wait-idle S] [--quick]
        [--models gpt2-small,smollm2-135m,pythia-160m] [--workdir DIR] [--lensd BIN]
        [--repeat N] [--tl4 DIR]

What it does, in one run (see bench/README.md for what each row means):

1. makes, once, random-weight models under WORKDIR: gpt2-small's exact shape
   (gpt2-small-random, bench/make_gpt2_small_random.py) and, for the family
   rows, SmolLM2-135M's (Llama) and Pythia-160M's (GPT-NeoX) exact shapes
   (smollm2-135m-random, pythia-160m-random, bench/make_family_random.py);
2. builds the reference offline: for gpt2-small the equivalent
   HookedTransformer (TransformerLens 3.9), as HookedTransformer.from_pretrained
   does (TransformerLens's GPT-2 config mapping, convert_gpt2_weights,
   load_and_process_state_dict with the default processing); for the family
   shapes TransformerLens 4.3's TransformerBridge.boot_transformers(dir) +
   enable_compatibility_mode() (default processing), in a child process with
   tools/setup_tl4.sh's folder first on PYTHONPATH (3.9 and 4.3 cannot share
   one process);
3. for prompts of 16 and 256 tokens, batch 1 and 8, full cache and logits
   only, times the reference (torch.inference_mode) and lensd (`lensd cache
   --repeat k+1 --timings`, its forward_ms list): one uncounted warm-up
   forward each, then the median of N timed runs taken in alternating rounds
   (reference, lensd, reference, lensd); both get the same random token ids,
   so tokenization is not measured;
4. times a fresh process from start to its first result, for both;
5. checks lensd's logits against the reference's on every row, and every
   cached activation on the full-cache rows (for the bridge: every name the
   two share; lensd emits TransformerLens's legacy names, the bridge legacy
   and canonical ones), so that a fast wrong answer cannot pass;
6. prints a Markdown table per model and writes them to WORKDIR/results.md.

Nothing is downloaded, and the environment (thread counts, OPENBLAS_CORETYPE)
is left as it is for both sides; the report says what each side used.
"""

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_family_random  # noqa: E402
import make_gpt2_small_random  # noqa: E402

BOS = 50256
# Max |lensd - TransformerLens| accepted on logits and activations. lensd's
# parity suite holds it to much less; this only catches a wrong answer.
TOLERANCE = 1e-3

# How TransformerLens is built from a local Hugging Face GPT-2 directory.
# The same text runs in this process and, for the time-to-first-result
# measurement, in a fresh `python -c`, so both measure the same code.
# It is HookedTransformer.from_pretrained's path without the hub lookups:
# get_pretrained_model_config reads the local config.json through
# convert_hf_model_config, get_pretrained_state_dict's GPT-2 branch is
# convert_gpt2_weights, and the processing is from_pretrained's default.
TL_BUILD = """
import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as loading
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

def build_tl(model_dir):
    cfg = loading.get_pretrained_model_config(
        model_dir, fold_ln=True, device="cpu", dtype=torch.float32)
    hf_model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    state_dict = convert_gpt2_weights(hf_model, cfg)
    del hf_model
    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True,
        fold_value_biases=True, refactor_factored_attn_matrices=False)
    return model.eval()
"""

# The time-to-first-result script: import, build, one run_with_cache, then
# say so on stdout (the parent stops its clock on that line, so Python's
# exit is not counted against TransformerLens).
FIRST_RESULT = """
import sys
tokens = torch.tensor([[int(t) for t in sys.argv[2].split(",")]])
with torch.inference_mode():
    logits, cache = build_tl(sys.argv[1]).run_with_cache(tokens)
print("FIRST_RESULT", len(cache), flush=True)
"""
TL_FIRST_RESULT = TL_BUILD + FIRST_RESULT

# The reference for the family shapes: TransformerLens 4.3's TransformerBridge
# in compatibility mode with the default processing (fold_ln,
# center_writing_weights, center_unembed, fold_value_biases, as TL applies
# them per family), booted offline from the local Hugging Face directory. It
# runs in a child process with TL 4.3 first on PYTHONPATH; as TL_BUILD, the
# same text is timed in the child and in the time-to-first-result script.
BRIDGE_BUILD = """
import logging, warnings
import torch
from transformer_lens.model_bridge import TransformerBridge

def build_tl(model_dir):
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    bridge = TransformerBridge.boot_transformers(model_dir, device="cpu", dtype=torch.float32)
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()
"""

BRIDGE_FIRST_RESULT = BRIDGE_BUILD + FIRST_RESULT

GPT2 = "gpt2-small"
ALL_MODELS = (GPT2, *make_family_random.SHAPES)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class OtherLoad:
    """How many CPUs other processes kept busy while a row ran.

    The machine's busy time from /proc/stat, less this process's and its
    children's CPU time, over the wall time: 0 on a quiet machine, up to the
    CPU count when something else saturates it. Both sides of a row are slowed
    when it is well above 0, the side with more threads to synchronise more.
    """

    def __init__(self):
        self.busy0, self.own0, self.t0 = self._busy(), self._own(), time.perf_counter()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def cpus(self) -> float:
        wall = time.perf_counter() - self.t0
        others = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, others / wall) if wall > 0 else 0.0


def wait_idle(limit_s: float) -> float:
    """Wait up to limit_s for other processes to leave the CPUs (< 0.2 busy
    over 2 s); return what they used over the last 2 s."""
    end = time.perf_counter() + limit_s
    while True:
        probe = OtherLoad()
        time.sleep(2)
        busy = probe.cpus()
        if busy < 0.2 or time.perf_counter() >= end:
            return busy
        log(f"  waiting for the CPUs: other processes use {busy:.1f}")


# ---------------------------------------------------------------- environment


def lscpu_field(name: str) -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    m = re.search(rf"^{re.escape(name)}:\s*(.+)$", out, re.M)
    return m.group(1).strip() if m else "?"


def simd() -> str:
    flags = re.search(r"^Flags:\s*(.+)$", subprocess.run(["lscpu"], capture_output=True,
                                                         text=True).stdout, re.M)
    have = set(flags.group(1).split()) if flags else set()
    return ", ".join(f for f in ("avx2", "fma", "avx512f") if f in have) or "no AVX2"


def openblas_of(lib_path: str, prefix: str = "", suffix: str = "") -> str:
    """Kernel and thread count that the OpenBLAS at lib_path picks here.

    Loading it in this process gives the same answer as in lensd: OpenBLAS
    chooses its kernel from the CPU and OPENBLAS_CORETYPE when loaded, and
    its default thread count from the environment and the CPUs.
    """
    try:
        lib = ctypes.CDLL(lib_path)
        corename = getattr(lib, f"{prefix}openblas_get_corename{suffix}")
        threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
        config = getattr(lib, f"{prefix}openblas_get_config{suffix}")
        for f in (corename, config):
            f.restype = ctypes.c_char_p
        return (
            f"{config().decode().strip()}; kernel {corename().decode()}, "
            f"{threads()} threads by default"
        )
    except (OSError, AttributeError) as e:
        return f"unknown ({e})"


def lensd_blas(lensd: Path, model_dir: Path) -> str:
    """The BLAS library, kernel and threads lensd runs here, as `lensd info` reports them
    (lensd picks and checks its kernel when it starts)."""
    out = subprocess.run([str(lensd), "info", "--model", str(model_dir)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return f"unknown (lensd info failed: {out.stderr.strip()})"
    b = json.loads(out.stdout)["device"]["blas"]
    return (f"{b['library']} {b['version']}, kernel {b['kernel']} ({b['kernel_choice']}), "
            f"{b['threading']}, {b['threads']} threads, self-check {b['self_check']}")


def cpu_model() -> str:
    return (f"{lscpu_field('Model name')} (family {lscpu_field('CPU family')}, model "
            f"{lscpu_field('Model')}; {simd()})")


def numpy_blas() -> str:
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "openblas" in line and "/" in line}
    numpy_dir = str(Path(np.__file__).parent.parent)
    for lib in sorted(libs):
        if "scipy_openblas64" in lib:
            return f"{Path(lib).name}: {openblas_of(lib, 'scipy_', '64_')}"
        if lib.startswith(numpy_dir):
            return f"{Path(lib).name}: {openblas_of(lib)}"
    return "not a bundled OpenBLAS"


def source_tree() -> str:
    """The checkout's commit, and whether its C sources differ from it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    dirty = git("status", "--porcelain", "--", "core", "kernels", "server", "meson.build").strip()
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def environment(built: Path, lensd: Path, model_dir: Path) -> dict:
    import torch
    import transformer_lens  # noqa: F401
    from importlib.metadata import version

    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return {
        "cpu": cpu_model(),
        "cpus": f"{os.cpu_count()} CPUs ({lscpu_field('Core(s) per socket')} cores per socket, "
        f"{lscpu_field('Thread(s) per core')} thread(s) per core)",
        "python": platform.python_version(),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads, "
        f"BLAS {blas.group(1) if blas else '?'}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        "transformer_lens": version("transformer-lens"),
        "transformers": version("transformers"),
        "numpy": f"{np.__version__}, {numpy_blas()}",
        "lensd": f"{subprocess.run([str(lensd), '--version'], capture_output=True, text=True).stdout.strip()} "
        f"({built}, built {time.strftime('%Y-%m-%d %H:%M', time.localtime(built.stat().st_mtime))} "
        f"from {source_tree()}), {lensd_blas(lensd, model_dir)}",
        "env": ", ".join(
            f"{k}={os.environ[k]}"
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                      "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
            if k in os.environ
        )
        or "no OPENBLAS_CORETYPE, *_NUM_THREADS or OMP_WAIT_POLICY set",
    }


# ---------------------------------------------------------------- measurement


def random_tokens(B: int, T: int, seed: int, bos: int = BOS, low: int = 0, high: int = BOS) -> np.ndarray:
    """B rows of T ids in [low, high), each starting with bos (gpt2-small: [0, 50256), BOS 50256)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(low, high, size=(B, T), dtype=np.int64)
    tokens[:, 0] = bos
    return tokens


def model_tokens(shape: str, B: int, T: int, seed: int) -> np.ndarray:
    """The row's token ids: gpt2-small's as before; for a family shape ids in [1, vocab) after
    its BOS (0 in both, which is also the pad id the bridge's tokenizer gets, so it appears only
    first)."""
    if shape == GPT2:
        return random_tokens(B, T, seed)
    info = make_family_random.INFO[shape]
    return random_tokens(B, T, seed, bos=info["bos"], low=1, high=info["vocab"])


def tokens_args(tokens: np.ndarray) -> list:
    args = []
    for row in tokens:
        args += ["--tokens", ",".join(str(int(t)) for t in row)]
    return args


def time_tl(model, tokens: np.ndarray, full: bool, n: int):
    """The ms of each of n runs, and the last run's logits and cache."""
    import torch

    toks = torch.from_numpy(tokens)
    times = []
    logits = cache = None
    with torch.inference_mode():
        for _ in range(n):
            logits = cache = None  # free the previous run's tensors first
            t0 = time.perf_counter()
            if full:
                logits, cache = model.run_with_cache(toks)
            else:
                logits = model(toks)
            times.append((time.perf_counter() - t0) * 1e3)
    return times, logits, cache


def run_lensd(lensd: Path, model_dir: Path, tokens: np.ndarray, full: bool, n: int, out: Path):
    cmd = [str(lensd), "cache", "--model", str(model_dir), *tokens_args(tokens)]
    if not full:
        cmd.append("--logits-only")
    cmd += ["--out", str(out), "--repeat", str(n), "--timings"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lensd failed ({p.returncode}): {p.stderr.strip()}\ncommand: {' '.join(cmd[:5])} ...")
    lines = [line for line in p.stderr.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"lensd printed no --timings line: {p.stderr.strip()}")
    return json.loads(lines[-1])


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b|; equal entries count 0 (TransformerLens's masked attention
    scores are -inf on both sides), any other non-finite difference is inf."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    worst = 0.0
    # Row by row, so that 8x256 logits need no 2 GB of float64 temporaries.
    for x, y in zip(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)):
        x, y = x.astype(np.float64), y.astype(np.float64)
        with np.errstate(invalid="ignore"):
            d = np.abs(x - y)
        d[x == y] = 0.0
        d[~np.isfinite(d)] = np.inf
        worst = max(worst, float(d.max()))
    return worst


def compare_shared(out: Path, cache) -> dict:
    """Against the bridge's cache: every name the two share (lensd emits TransformerLens's legacy
    names; the bridge's cache has those and its canonical ones, hook_in/hook_out, as aliases of
    the same hook points). The names on one side only are listed, not failed."""
    from safetensors import safe_open

    worst, worst_name, n = 0.0, "", 0
    with safe_open(str(out), framework="np") as f:
        names = set(f.keys()) - {"tokens", "logits"}
        theirs = set(cache.keys())
        for name in sorted(names & theirs):
            d = max_abs_diff(f.get_tensor(name), cache[name].numpy())
            n += 1
            if d > worst:
                worst, worst_name = d, name
    return {"n": n, "worst_name": worst_name, "worst": worst, "missing": [],
            "lensd_only": sorted(names - theirs), "bridge_only": sorted(theirs - names)}


def compare_cache(out: Path, cache) -> tuple:
    """(number of hooks compared, worst hook, its max |diff|, hooks missing on one side)."""
    from safetensors import safe_open

    worst, worst_name, n = 0.0, "", 0
    with safe_open(str(out), framework="np") as f:
        names = set(f.keys()) - {"tokens", "logits"}
        missing = sorted(set(cache.keys()) ^ names)
        for name in sorted(names & set(cache.keys())):
            d = max_abs_diff(f.get_tensor(name), cache[name].numpy())
            n += 1
            if d > worst:
                worst, worst_name = d, name
    return n, worst_name, worst, missing


def lensd_logits(out: Path) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as f:
        return f.get_tensor("logits")


def time_to_first_result(lensd: Path, model_dir: Path, tokens: np.ndarray, out: Path, runs: int,
                         script: str = TL_FIRST_RESULT):
    ids = ",".join(str(int(t)) for t in tokens[0])
    tl, ld = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-c", script, str(model_dir), ids],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        got = None
        for line in p.stdout:
            if line.startswith("FIRST_RESULT"):
                got = time.perf_counter() - t0
                break
        p.stdout.close()
        if p.wait() != 0 or got is None:
            sys.exit("the TransformerLens time-to-first-result script failed")
        tl.append(got)

        t0 = time.perf_counter()
        r = subprocess.run(
            [str(lensd), "cache", "--model", str(model_dir), "--tokens", ids, "--out", str(out)],
            capture_output=True,
            text=True,
        )
        ld.append(time.perf_counter() - t0)
        if r.returncode != 0:
            sys.exit(f"lensd failed: {r.stderr.strip()}")
    return statistics.median(tl), statistics.median(ld), tl, ld


def lensd_start_times(lensd: Path, model_dir: Path, runs: int) -> dict:
    """Wall seconds from a fresh process to lensd's first logits: `lensd run` (test_prompt
    on a short prompt, to its exit) and `lensd serve` (to its "lensd: ready" line); the
    median of runs each."""
    run_s, serve_s = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([str(lensd), "run", "--model", str(model_dir), "--prompt",
                            "The Eiffel Tower is in"], capture_output=True, text=True)
        run_s.append(time.perf_counter() - t0)
        if r.returncode != 0:
            sys.exit(f"lensd run failed: {r.stderr.strip()}")
        t0 = time.perf_counter()
        p = subprocess.Popen([str(lensd), "serve", "--model", f"m={model_dir}", "--port", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = None
        for line in p.stderr:
            if line.startswith("lensd: ready"):
                ready = time.perf_counter() - t0
                break
        p.terminate()
        p.wait(timeout=60)
        if ready is None:
            sys.exit("lensd serve printed no ready line")
        serve_s.append(ready)
    return {"run_s": statistics.median(run_s), "serve_s": statistics.median(serve_s)}


ROUNDS = 2


def measure_row(model, lensd, model_dir, tokens, full, n, out, label, bridge=False) -> dict:
    """One row: TransformerLens (bridge: TL 4.3's TransformerBridge) and lensd on the same
    tokens, then the checks.

    Both sides get one warm-up forward that is not counted: the reference's
    first run in this process, and the first forward of each lensd process
    (`--repeat k+1`; it also faults in the process's workspace and output
    buffers). The n timed runs of each side are taken in ROUNDS alternating
    rounds (reference, lensd, reference, lensd), so that a slow spell of the
    machine, which on a shared VM lasts seconds, falls on both sides instead
    of on whichever ran during it; the median is over all n."""
    load = OtherLoad()
    per_round = max(1, -(-n // ROUNDS))
    tl_times, ld_times, ld_firsts, timings = [], [], [], None
    log(f"{label}: {ROUNDS} rounds of 1 + {per_round} runs each side ...")
    tl_first = time_tl(model, tokens, full, 1)[0][0]
    tl_logits = tl_cache = None
    for _ in range(ROUNDS):
        tl_logits = tl_cache = None  # free the last round's tensors first
        times, tl_logits, tl_cache = time_tl(model, tokens, full, per_round)
        tl_times += times
        timings = run_lensd(lensd, model_dir, tokens, full, per_round + 1, out)
        ld_firsts.append(timings["forward_ms_first"])
        ld_times += timings["forward_ms"][1:]
    other_cpus = load.cpus()
    row = {
        "label": label, "n": len(tl_times), "tl_ms": statistics.median(tl_times),
        "tl_min": min(tl_times), "tl_first": tl_first,
        "lensd_ms": statistics.median(ld_times), "lensd_min": min(ld_times),
        "lensd_first": statistics.median(ld_firsts), "timings": timings,
        "logits_diff": max_abs_diff(lensd_logits(out), tl_logits.numpy()),
        "file_mb": out.stat().st_size / 1e6, "other_cpus": other_cpus,
    }
    if full and bridge:
        row["check"] = {"label": label, **compare_shared(out, tl_cache)}
    elif full:
        n_hooks, worst_name, worst, missing = compare_cache(out, tl_cache)
        row["check"] = {"label": label, "n": n_hooks, "worst_name": worst_name,
                        "worst": worst, "missing": missing}
    log(f"{label}: TL {row['tl_ms']:.1f} ms, lensd {row['lensd_ms']:.1f} ms "
        f"({row['tl_ms'] / row['lensd_ms']:.2f}x), logits diff {row['logits_diff']:.1e}, "
        f"other processes used {other_cpus:.2f} CPUs")
    return row


def measure_first_result(lensd, model_dir, tokens, out, runs, script: str = TL_FIRST_RESULT) -> dict:
    load = OtherLoad()
    log(f"time to first result, {runs} fresh processes each ...")
    tl_s, lensd_s, tl_all, lensd_all = time_to_first_result(lensd, model_dir, tokens, out, runs,
                                                            script)
    return {"runs": runs, "tl_s": tl_s, "lensd_s": lensd_s, "tl_all": tl_all,
            "lensd_all": lensd_all, **lensd_start_times(lensd, model_dir, runs),
            "other_cpus": load.cpus()}


def quietest(args, label: str, measure) -> dict:
    """measure(), and with --wait-idle, after waiting for quiet CPUs and again
    (up to --attempts in all) while other processes used more than 0.2 CPUs
    during it; the attempt they disturbed least is kept."""
    best = None
    attempts = args.attempts if args.wait_idle else 1
    for attempt in range(attempts):
        if args.wait_idle:
            wait_idle(args.wait_idle)
        got = measure()
        if best is None or got["other_cpus"] < best["other_cpus"]:
            best = got
        if best["other_cpus"] <= 0.2:
            break
        log(f"{label}: other processes used {got['other_cpus']:.2f} CPUs"
            + (", measuring again" if attempt + 1 < attempts else ", keeping the least disturbed"))
    return best


# ---------------------------------------------------------------- report


def _collapse(names) -> list:
    """Names with the block index replaced by *, each once, in first-seen order."""
    return list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", n) for n in names))


def checked_hooks(rows: list) -> str:
    full = [r for r in rows if "check" in r]
    if not full:
        return "none"
    worst = max(full, key=lambda r: r["check"]["worst"])["check"]
    if "lensd_only" in worst:  # against the bridge: the shared names
        lensd_only = sorted({m for r in full for m in r["check"]["lensd_only"]})
        other = sorted({m for r in full for m in r["check"]["bridge_only"]})
        aliases = [m for m in other if m.split(".")[-1] in ("hook_in", "hook_out")]
        legacy = _collapse(m for m in other if m not in aliases)
        text = (f"{full[0]['check']['n']} hook names shared with the bridge, worst "
                f"{worst['worst_name']} at {worst['worst']:.1e} on {worst['label']}; lensd's names "
                f"the bridge lacks: {', '.join(_collapse(lensd_only)) or 'none'}; the bridge's "
                f"{len(other)} other names are {len(aliases)} canonical aliases (hook_in/hook_out of "
                f"its components) and {', '.join(legacy) or 'nothing else'}")
        return text
    missing = sorted({m for r in full for m in r["check"]["missing"]})
    text = (f"{full[0]['check']['n']} hook points, worst {worst['worst_name']} at "
            f"{worst['worst']:.1e} on {worst['label']}")
    if missing:
        text += f"; names on one side only: {', '.join(missing)}"
    return text


def rows_ok(rows: list) -> bool:
    return all(r["logits_diff"] <= TOLERANCE for r in rows) and all(
        not r["check"]["missing"] and r["check"]["worst"] <= TOLERANCE and r["check"]["n"] > 0
        for r in rows if "check" in r)


def fmt_ms(ms: float) -> str:
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def render_section(sec: dict) -> list:
    """One model's tables: sec has title, ref (the reference's column name), rows, first."""
    rows, first, ref = sec["rows"], sec["first"], sec["ref"]
    short = "TL" if ref == "TransformerLens" else "bridge"
    out = [sec["title"], ""]
    if sec.get("intro"):
        out += [sec["intro"], ""]
    out += [
        f"| row | N | {ref} ms | lensd ms | {short} / lensd | max abs diff: logits, activations |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        acts = f", {r['check']['worst']:.1e}" if "check" in r else ""
        out.append(
            f"| {r['label']} | {r['n']} | {fmt_ms(r['tl_ms'])} | {fmt_ms(r['lensd_ms'])} "
            f"| {r['tl_ms'] / r['lensd_ms']:.2f}x | {r['logits_diff']:.1e}{acts} |"
        )
    if first:
        out.append(
            f"| time to first result (fresh process, 1x16, full cache) | {first['runs']} "
            f"| {first['tl_s'] * 1e3:,.0f} | {first['lensd_s'] * 1e3:,.0f} "
            f"| {first['tl_s'] / first['lensd_s']:.2f}x | |"
        )
    out += [
        "",
        f"ms: median of N timed runs each, after one warm-up forward each (uncounted), taken in "
        f"{ROUNDS} alternating rounds ({ref}, lensd, {ref}, lensd). {short} / lensd > 1 means "
        f"lensd is faster.",
    ]
    if first:
        out[-1] += (
            f" Time to first result: median of {first['runs']} fresh processes each ({ref} "
            + ", ".join(f"{t:.1f}" for t in first["tl_all"])
            + " s; lensd "
            + ", ".join(f"{t:.2f}" for t in first["lensd_all"])
            + f" s; other CPUs busy {first['other_cpus']:.2f}). lensd's first logits from a fresh "
            f"process, median of {first['runs']}: `lensd run` (test_prompt) "
            f"{first['run_s'] * 1e3:,.0f} ms to its exit, `lensd serve` "
            f"{first['serve_s'] * 1e3:,.0f} ms to its ready line.")
    out += [
        "",
        f"Correctness: lensd's logits against {ref}'s on every row, and on the full-cache "
        f"rows every cached activation ({checked_hooks(rows)}), max abs difference within "
        f"{TOLERANCE:g}: **{'PASS' if rows_ok(rows) else 'FAIL'}**.",
        "",
        f"### Breakdown{sec.get('breakdown_suffix', '')}",
        "",
        f"| row | {short} first ms | lensd first ms | {short} min ms | lensd min ms | lensd load ms "
        "| lensd write ms | lensd file MB | other CPUs busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timings"]
        out.append(
            f"| {r['label']} | {fmt_ms(r['tl_first'])} | {fmt_ms(r['lensd_first'])} "
            f"| {fmt_ms(r['tl_min'])} | {fmt_ms(r['lensd_min'])} "
            f"| {fmt_ms(t['load_ms'])} | {fmt_ms(t['write_ms'])} | {r['file_mb']:,.0f} "
            f"| {r['other_cpus']:.2f} |"
        )
    out.append("")
    return out


def render(env: dict, sections: list, wall_s: float) -> str:
    out = []
    for sec in sections:
        out += render_section(sec)
    out += [
        "first: the first forward after loading (the reference's warm-up run; for lensd the "
        "median over its processes of each one's first forward, what a one-shot `lensd cache` "
        "pays), which also allocates and faults in memory that later runs reuse. min: the fastest "
        "of the N runs. load and write: lensd reading and "
        "processing the weights, and writing (and fsyncing) the safetensors file, both outside "
        "forward_ms.",
        "",
        "other CPUs busy: how many of the CPUs other processes kept busy, on average, while the row "
        "ran (machine busy time less this benchmark's own CPU time, over wall time). Above about "
        "0.2 the row's times are inflated for both sides and should be rerun on a quiet machine.",
        "",
        "### Machine",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in env.items()]
    for sec in sections:
        for k, v in sec.get("ref_env", {}).items():
            out.append(f"- {k}: {v}")
        out.append(f"- {sec['ref']} model build ({sec['shape']}) in its process: "
                   f"{sec['tl_build_s']:.1f} s; its rows took {sec['wall_s'] / 60:.1f} min")
    out += [f"- whole benchmark: {wall_s / 60:.1f} min", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- main


def find_lensd(arg):
    for p in [arg, os.environ.get("LENSD_BIN"), REPO / "build" / "server" / "lensd"]:
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p).resolve()
    sys.exit(
        "no lensd binary: build it with `meson setup build && ninja -C build`, or pass --lensd BIN"
    )


def model_dir_of(workdir: Path, shape: str) -> Path:
    return workdir / f"{shape}-random"


def make_model(workdir: Path, shape: str, seed: int) -> Path:
    log(f"model: {model_dir_of(workdir, shape)}")
    if shape == GPT2:
        return make_gpt2_small_random.make(model_dir_of(workdir, shape), seed=seed)
    return make_family_random.make(model_dir_of(workdir, shape), shape, seed=seed)


def run_rows(args, model, lensd: Path, model_dir: Path, shape: str, out: Path,
             bridge: bool) -> list:
    shapes = [(16, 1), (16, 8)] if args.quick else [(16, 1), (16, 8), (256, 1), (256, 8)]
    rows = []
    for T, B in shapes:
        tokens = model_tokens(shape, B, T, seed=args.seed * 1000 + T * 10 + B)
        n = args.repeat or (3 if args.quick else 10 if T <= 16 else 5)
        for full in (True, False):
            label = f"{B}x{T}, {'full cache' if full else 'logits only'}"
            row = quietest(args, label, lambda: measure_row(model, lensd, model_dir, tokens,
                                                            full, n, out, label, bridge))
            rows.append(row)
            out.unlink()
    return rows


def first_result(args, lensd: Path, model_dir: Path, shape: str, out: Path, script: str):
    runs = 1 if args.quick else args.first_result_runs
    if runs <= 0:
        return None
    return quietest(args, "time to first result", lambda: measure_first_result(
        lensd, model_dir, model_tokens(shape, 1, 16, seed=args.seed), out, runs, script))


def gpt2_section(args, lensd: Path, model_dir: Path, scratch: Path) -> dict:
    """The gpt2-small rows against TransformerLens 3.9's HookedTransformer, in this process."""
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    ns: dict = {}
    exec(TL_BUILD, ns)
    model = ns["build_tl"](str(model_dir))
    tl_build_s = time.perf_counter() - t0
    log(f"TransformerLens model built in {tl_build_s:.1f} s")
    out = scratch / "row.safetensors"
    rows = run_rows(args, model, lensd, model_dir, GPT2, out, bridge=False)
    del model
    first = first_result(args, lensd, model_dir, GPT2, out, TL_FIRST_RESULT)
    return {"shape": GPT2, "ref": "TransformerLens", "rows": rows, "first": first,
            "tl_build_s": tl_build_s, "wall_s": time.perf_counter() - t_start,
            "title": "## lensd vs TransformerLens on gpt2-small (random weights, fp32, CPU)"}


def bridge_child(args) -> None:
    """--bridge-child SHAPE: the family rows against TL 4.3's bridge (this process has TL 4.3
    first on PYTHONPATH); writes the section as JSON to --child-out."""
    import torch
    import transformer_lens
    from importlib.metadata import version

    t_start = time.perf_counter()
    shape, workdir = args.bridge_child, args.workdir.resolve()
    lensd, model_dir = Path(args.lensd), model_dir_of(workdir, args.bridge_child)
    scratch = workdir / "scratch"
    t0 = time.perf_counter()
    ns: dict = {}
    exec(BRIDGE_BUILD, ns)
    model = ns["build_tl"](str(model_dir))
    tl_build_s = time.perf_counter() - t0
    log(f"TransformerBridge booted in {tl_build_s:.1f} s ({type(model.adapter).__name__})")
    ref_env = {
        f"TransformerLens bridge ({shape})":
        f"transformer_lens {version('transformer-lens')} from {Path(transformer_lens.__file__).parent}, "
        f"{type(model.adapter).__name__}, compatibility mode (default processing), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads",
    }
    out = scratch / "row.safetensors"
    rows = run_rows(args, model, lensd, model_dir, shape, out, bridge=True)
    del model
    first = first_result(args, lensd, model_dir, shape, out, BRIDGE_FIRST_RESULT)
    info = make_family_random.INFO[shape]
    sec = {"shape": shape, "ref": "TL 4.3 bridge", "rows": rows, "first": first,
           "tl_build_s": tl_build_s, "ref_env": ref_env, "wall_s": time.perf_counter() - t_start,
           "breakdown_suffix": f" ({info['label']})",
           "title": f"## lensd vs TransformerLens 4.3's TransformerBridge on the {info['label']} "
           "(random weights, fp32, CPU)"}
    args.child_out.write_text(json.dumps(sec))


def family_section(args, lensd: Path, shape: str) -> dict:
    """Runs this script again as --bridge-child SHAPE with TL 4.3 first on PYTHONPATH."""
    tl4 = args.tl4.resolve()
    if not (tl4 / "transformer_lens").is_dir():
        sys.exit(f"no TransformerLens 4.3 in {tl4}: run tools/setup_tl4.sh (or pass --tl4 DIR)")
    child_out = args.workdir.resolve() / "scratch" / f"{shape}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bridge-child", shape,
           "--child-out", str(child_out), "--lensd", str(lensd), "--workdir", str(args.workdir),
           "--repeat", str(args.repeat), "--first-result-runs", str(args.first_result_runs),
           "--seed", str(args.seed), "--wait-idle", str(args.wait_idle),
           "--attempts", str(args.attempts)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(tl4), os.environ.get("PYTHONPATH")) if p))
    log(f"{shape}: TL 4.3 bridge rows in a child process (PYTHONPATH={tl4})")
    if subprocess.run(cmd, env=env).returncode != 0:
        sys.exit(f"the bridge rows of {shape} failed")
    return json.loads(child_out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench",
                    help="models, scratch files and results.md (default build/bench)")
    ap.add_argument("--lensd", help="the lensd binary (default build/server/lensd, or $LENSD_BIN)")
    ap.add_argument("--models", default=",".join(ALL_MODELS),
                    help=f"comma list of the row sets to run (default all: {','.join(ALL_MODELS)})")
    ap.add_argument("--tl4", type=Path,
                    default=Path(os.environ.get("LENSD_TL4", REPO / "build" / "tl4")),
                    help="TransformerLens 4.3 (tools/setup_tl4.sh's folder), for the family rows")
    ap.add_argument("--repeat", type=int, default=0,
                    help="timed runs per row (default 10 at 16 tokens, 5 at 256)")
    ap.add_argument("--first-result-runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="weights and token ids")
    ap.add_argument("--quick", action="store_true", help="16-token rows only, N=3, 1 first-result run")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each row, wait up to S seconds for other processes to leave "
                    "the CPUs, and measure a disturbed row again (see --attempts)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="with --wait-idle, measurements of a row at most (default 3)")
    ap.add_argument("--bridge-child", choices=sorted(make_family_random.SHAPES), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bridge_child:
        bridge_child(args)
        return
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown or not models:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(ALL_MODELS)}")
    t_start = time.perf_counter()

    workdir = args.workdir.resolve()
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    # Time a copy, so that a rebuild during the run cannot change the binary
    # between rows.
    built = find_lensd(args.lensd)
    lensd = scratch / "lensd"
    shutil.copy2(built, lensd)
    dirs = {m: make_model(workdir, m, args.seed) for m in models}

    env = environment(built, lensd, dirs[models[0]])
    for k, v in env.items():
        log(f"{k}: {v}")

    sections = []
    for m in models:
        sections.append(gpt2_section(args, lensd, dirs[m], scratch) if m == GPT2
                        else family_section(args, lensd, m))
    shutil.rmtree(scratch, ignore_errors=True)

    ok = all(rows_ok(sec["rows"]) for sec in sections)
    report = render(env, sections, time.perf_counter() - t_start)
    (workdir / "results.md").write_text(report)
    print(report)
    log(f"written to {workdir / 'results.md'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
