"""Harvest (and attributions) cost as the number of components grows, at a fixed number of firings per token.

    OMP_NUM_THREADS=1 python benchmarks/harvest_scale.py                                 # C_total 1K, 4K, 16K, 40K
    OMP_NUM_THREADS=1 python benchmarks/harvest_scale.py --sizes 1024 4096 --tokens 16384 --attribution-batches 0
    python benchmarks/harvest_scale.py --sizes 40000 --device cuda                     # harvest on a GPU

Per size C_total the benchmark
1. builds a decomposition of a small LM through the real decompose stage (testkit/lm_fixtures.py: the tiny LM on
   the planted-feature corpus, 2 layers, both MLP projections decomposed, C_total / 4 components each, a few SPD
   steps: the CI functions are barely trained, which is fine for cost);
2. controls CI-L0 through the CI functions: every CI function's output-layer bias is lowered by one common
   constant, found by bisection on the first batch, so that about `--l0` components per token (all modules
   together) exceed the harvest's default ci_threshold (0.1), and the decomposition is saved so shifted (a barely
   trained CI function saturates at 1 on thousands of components per token at large C, so a threshold alone
   cannot do it); the measured L0 is printed;
3. runs one untimed one-batch harvest task first (it loads the numba kernels into their disk cache, compiling them
   once after a code change: ~20 s that a first task would otherwise count), then `--tasks` harvest array tasks
   over `--tokens` tokens in all, each in a fresh process (peak RSS from /proc VmHWM; seconds from the shard's own
   record, model loading included), then the merge of their shards in a fresh process (seconds, peak RSS), and
   reports shard and store bytes and the stored co-firing rows;
4. times a bare forward (target + CI functions) over the same batches in this process, under a task's malloc
   settings (spd.harvest.malloc: without them its large blocks are faulted in afresh every batch), for harvest/bare
   (= bare us/token / harvest us/token: the share of a task's time that is the forward itself);
5. times `--steady-batches` batches in this process, each one's bare forward, then its harvest activations and
   accumulation (medians, ms per batch: a task's per-batch work without its fixed costs, and their ratio);
6. computes attributions over `--attribution-batches` batches in a fresh process (seconds per batch, peak RSS),
   when that is not 0.

All sizes run in one invocation, one after the other: compare their ratios from one run, since the machine may be
shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from spd.harvest.activations import ActivationReader  # noqa: E402
from spd.harvest.config import HarvestSettings  # noqa: E402
from spd.harvest.data import CorpusSlice  # noqa: E402
from spd.harvest.malloc import keep_freed_memory  # noqa: E402
from spd.harvest.task import decomposition_corpus, slice_spec  # noqa: E402
from spd.models import load_decomposition  # noqa: E402
from spd.models.checkpoint import latest_model_file  # noqa: E402
from testkit.lm_fixtures import build_tiny_lm_decomposition, tiny_lm_decompose_config  # noqa: E402

N_MODULES = 4  # 2 layers x (up, down) projections

# each child prints one JSON line: what it measured and its own peak RSS (VmHWM belongs to the new process)
CHILD_PRELUDE = """
import json, sys, time
sys.path.insert(0, {root!r})
def peak_gb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
"""
TASK_CHILD = """
from spd.harvest import HarvestSettings, run_harvest_task
settings = HarvestSettings.model_validate_json({settings!r})
path = run_harvest_task({decomposition!r}, {out!r}, settings, {task}, seed=0, log=lambda _: None)
from spd.harvest.shard import read_shard
meta = read_shard(path, cofiring=False).meta  # after the peak-relevant work; its pairs are not needed
print(json.dumps({{"seconds": meta["seconds"], "tokens": meta["n_tokens"], "bytes": path.stat().st_size,
                  "method": meta["cofiring_method"], "kernels": meta["kernels"], "peak_gb": peak_gb()}}))
"""
MERGE_CHILD = """
from pathlib import Path
from spd.harvest import merge_harvest
start = time.perf_counter()
path = merge_harvest(Path({out!r}), {n_tasks}, Path({decomposition!r}), log=lambda _: None)
seconds = time.perf_counter() - start
import duckdb
with duckdb.connect(str(path), read_only=True) as con:
    rows = con.execute("SELECT count(*) FROM cofiring").fetchone()[0]
print(json.dumps({{"seconds": seconds, "bytes": path.stat().st_size, "cofiring_rows": rows, "peak_gb": peak_gb()}}))
"""
ATTRIBUTION_CHILD = """
from pathlib import Path
from spd.attributions import AttributionSettings, compute_shard
settings = AttributionSettings(batch_size={batch_size}, n_batches={n_batches}, top_k=50)
start = time.perf_counter()
compute_shard(settings, Path({decomposition!r}), Path({out!r}), 0, 1, log=lambda _: None)
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_gb": peak_gb()}}))
"""


def run_child(body: str, **fields: object) -> dict:
    """Run a measurement in a fresh Python process (one thread) and return the JSON it prints last."""
    code = CHILD_PRELUDE.format(root=str(REPO_ROOT)) + body.format(**fields)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


LAST_CI_BIAS = re.compile(r"^(ci_fn\..+)\.layers\.(\d+)\.b$")


def last_ci_biases(names: list[str]) -> list[str]:
    """The output-layer bias of every CI function (the highest-numbered layer of each)."""
    last: dict[str, tuple[int, str]] = {}
    for name in names:
        match = LAST_CI_BIAS.match(name)
        if match and int(match.group(2)) >= last.get(match.group(1), (-1, ""))[0]:
            last[match.group(1)] = (int(match.group(2)), name)
    return [name for _, name in last.values()]


def synchronize(device: str) -> float:
    """Wait for the device's queued work (CUDA runs asynchronously), then read the clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def set_ci_l0(decomposition: Path, settings: HarvestSettings, l0: int, n_bare: int) -> tuple[float, float, float]:
    """Shift every CI function's output bias by one constant so that ~l0 components per token fire at the harvest
    threshold on the first batch, and save the decomposition so shifted. Returns (shift, measured L0, bare
    us/token). A barely trained CI function at large C saturates at 1 on thousands of components per token, so no
    threshold can control L0; a bias shift moves every pre-activation down alike (bisection; L0 falls with it)."""
    model = load_decomposition(decomposition, settings.device)
    corpus = decomposition_corpus(decomposition)
    data = CorpusSlice(corpus, slice_spec(model.run_config, corpus, settings, 0))
    reader = ActivationReader(model, settings.output_top_m)
    batches = [b.tokens.to(settings.device) for _, b in zip(range(n_bare), data, strict=False)]
    params = dict(model.named_parameters())
    names = last_ci_biases(list(params))
    original = {n: params[n].detach().clone() for n in names}

    def l0_at(shift: float) -> float:
        for n in names:
            params[n].copy_(original[n] - shift)
        ci = reader(batches[0]).ci
        return float((ci > settings.ci_threshold).sum()) / batches[0].numel()

    lo, hi = -20.0, 20.0  # L0 at lo is above the target, at hi below (bisection keeps that)
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if l0_at(mid) > l0 else (lo, mid)
    shift = hi
    measured = l0_at(shift)
    model_file = latest_model_file(decomposition)
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    for n in names:
        state[n] = state[n] - shift
    torch.save(state, model_file)
    reader.bare_forward(batches[0])  # warm-up
    synchronize(settings.device)
    start = time.perf_counter()
    for tokens in batches:
        reader.bare_forward(tokens)
    synchronize(settings.device)
    bare_us = (time.perf_counter() - start) / sum(t.numel() for t in batches) * 1e6
    return shift, measured, bare_us


@torch.no_grad()
def steady_state(decomposition: Path, settings: HarvestSettings, n_batches: int) -> dict[str, float]:
    """Per-batch medians in this process, each batch's bare forward, then its harvest activations and accumulation
    (what a task does per batch, without its fixed costs: model load, kernel cache load, shard write)."""
    import statistics

    from spd.harvest.accumulators import TaskAccumulator

    device = settings.device
    model = load_decomposition(decomposition, device)
    corpus = decomposition_corpus(decomposition)
    spec = slice_spec(model.run_config, corpus, settings, 0)
    reader = ActivationReader(model, settings.output_top_m)
    acc = TaskAccumulator(reader.n_components, corpus.vocab_size, settings, 0, device)
    times: dict[str, list[float]] = {"bare": [], "activations": [], "accumulate": []}
    for i, batch in zip(range(n_batches + 2), CorpusSlice(corpus, spec), strict=False):
        tokens, starts = batch.tokens.to(device), batch.starts.to(device)
        t0 = synchronize(device)
        reader.bare_forward(tokens)
        t1 = synchronize(device)
        acts = reader(tokens)
        t2 = synchronize(device)
        acc.process(batch.index, starts, spec.seq_len, acts)
        t3 = synchronize(device)
        if i >= 2:  # the first two batches settle the heap and the co-firing method
            for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[name].append(seconds * 1e3)
    medians = {f"steady_{name}_ms": round(statistics.median(v), 1) for name, v in times.items()}
    harvest = medians["steady_activations_ms"] + medians["steady_accumulate_ms"]
    return {**medians, "steady_harvest_over_bare": round(medians["steady_bare_ms"] / harvest, 3)}


def measure(c_total: int, args: argparse.Namespace, tmp: Path) -> dict:
    started = time.perf_counter()
    per_module = c_total // N_MODULES
    config = tiny_lm_decompose_config(
        n_docs=args.n_docs, default_c=per_module, n_layers=2, spd_steps=args.spd_steps, lm_steps=20, seq_len=64
    )
    decomposition = build_tiny_lm_decomposition(tmp / f"decomposition-{c_total}", config)
    build_s = time.perf_counter() - started
    n_batches = args.tokens // (args.batch_size * 64)
    base = {"batch_size": args.batch_size, "n_batches": n_batches, "n_tasks": args.tasks, "device": args.device}
    settings = HarvestSettings(**base)
    shift, l0, bare_us = set_ci_l0(decomposition, settings, args.l0, args.bare_batches)
    # untimed: loads (or, after a code change, compiles) the numba kernels into numba's disk cache,
    # so the timed tasks measure harvesting, not a one-off compilation of ~20 s
    warm = HarvestSettings(**{**base, "n_batches": 1, "n_tasks": 1})
    warm_up = run_child(
        TASK_CHILD, settings=warm.model_dump_json(), decomposition=str(decomposition), out=str(tmp / "warm-up"), task=0
    )
    out = tmp / f"harvest-{c_total}"
    tasks = [
        run_child(
            TASK_CHILD, settings=settings.model_dump_json(), decomposition=str(decomposition), out=str(out), task=t
        )
        for t in range(args.tasks)
    ]
    merge = run_child(MERGE_CHILD, out=str(out), n_tasks=args.tasks, decomposition=str(decomposition))
    tokens = sum(t["tokens"] for t in tasks)
    harvest_us = sum(t["seconds"] for t in tasks) / tokens * 1e6
    row = {
        "C_total": per_module * N_MODULES,
        "L0": round(l0, 1),
        "ci_bias_shift": round(shift, 3),
        "tokens": tokens,
        "harvest_us_per_token": round(harvest_us, 1),
        "bare_us_per_token": round(bare_us, 1),
        "harvest_over_bare": round(bare_us / harvest_us, 3),
        "task_peak_gb": round(max(t["peak_gb"] for t in tasks), 2),
        "shard_mb": round(sum(t["bytes"] for t in tasks) / len(tasks) / 1e6, 1),
        "cofiring_methods": sorted({t["method"] for t in tasks}),
        "kernels": sorted({t["kernels"] for t in tasks}),
        "merge_s": round(merge["seconds"], 1),
        "merge_peak_gb": round(merge["peak_gb"], 2),
        "store_mb": round(merge["bytes"] / 1e6, 1),
        "cofiring_rows": merge["cofiring_rows"],
        "build_s": round(build_s, 1),
        "warm_up_task_s": round(warm_up["seconds"], 1),
    }
    if args.steady_batches:
        row.update(steady_state(decomposition, settings, args.steady_batches))
    if args.attribution_batches:
        attr = run_child(
            ATTRIBUTION_CHILD,
            batch_size=args.attribution_batch_size,
            n_batches=args.attribution_batches,
            decomposition=str(decomposition),
            out=str(tmp / f"attr-{c_total}"),
        )
        row["attr_s_per_batch"] = round(attr["seconds"] / args.attribution_batches, 2)
        row["attr_peak_gb"] = round(attr["peak_gb"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 40000])
    parser.add_argument("--tokens", type=int, default=65536, help="harvested tokens per size, over all tasks")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="windows of 64 tokens per harvest batch")
    parser.add_argument("--l0", type=int, default=128, help="target firings per token (all modules together)")
    parser.add_argument("--n-docs", type=int, default=6000, help="corpus documents (enough for --tokens)")
    parser.add_argument("--spd-steps", type=int, default=2)
    parser.add_argument("--bare-batches", type=int, default=8)
    parser.add_argument("--steady-batches", type=int, default=6, help="per-batch medians in-process; 0 skips")
    parser.add_argument("--attribution-batches", type=int, default=1, help="0 skips attributions")
    parser.add_argument("--attribution-batch-size", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="build under this directory and keep it")
    parser.add_argument("--device", default="cpu", help="where harvest, bare forward and steady state run (cuda)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # the bare forward under the malloc settings of a harvest task (spd.harvest.malloc)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        for c_total in args.sizes:
            print(json.dumps(measure(c_total, args, tmp)), flush=True)


if __name__ == "__main__":
    main()
