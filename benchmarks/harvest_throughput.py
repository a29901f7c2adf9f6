"""Harvest throughput against a bare forward pass, and the merge's peak memory for 1, 4 and 16 shards.

    python benchmarks/harvest_throughput.py --decomposition runs/quickstart/stages/decompose/out
    python benchmarks/harvest_throughput.py --from-pipeline examples/quickstart.yaml   # trains the decomposition first
    python benchmarks/harvest_throughput.py --device cuda --batch-size 64 --n-batches 60
    python benchmarks/harvest_throughput.py --no-cofiring --merge-shards        # without the C x C co-firing
    python benchmarks/harvest_throughput.py --kernels torch --merge-shards      # the torch kernels on the CPU too

Throughput: the same batches (already on the device) go through
- bare: the target forward + the CI functions (`ActivationReader.bare_forward`), nothing else;
- read: what the harvest reads of a batch (bare + component activations + the target's top-m predictions);
- harvest: what a harvest task does per batch (forward, CI, component activations, top-m predictions, every
  accumulator and both example sets), plus writing the shard's contents out at the end;
- harvest_reading: the same with each batch read from the token file as a task reads it (the story corpus, or the
  token cache of a Hugging Face dataset for an imported reference run): `reading_ratio` = harvest / this;
each timed `--repeats` times after a warm-up, in this one process; tokens/s and their ratio (of the medians) are
printed, and the ratio of each repeat's own bare and harvest passes (run back to back: robust to slow drifts of a
shared machine).
Merge memory: the same data harvested by 1, 4 and 16 tasks (in this process), then each merge runs in a fresh
subprocess that reports its peak RSS (VmHWM, Linux) and its peak before merging (imports).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from spd.harvest import HarvestSettings, run_harvest_task
from spd.harvest.accumulators import TaskAccumulator
from spd.harvest.activations import ActivationReader
from spd.harvest.batch_scan import Kernels
from spd.harvest.data import CorpusSlice
from spd.harvest.malloc import keep_freed_memory
from spd.harvest.task import decomposition_corpus, slice_spec
from spd.models import load_decomposition
from spd.utils import resolve_device

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DECOMPOSITION = REPO_ROOT / "runs/quickstart/stages/decompose/out"

# Peak RSS from /proc/self/status VmHWM: unlike ru_maxrss (kept across execve, so a child forked from this
# big process would report this process's size), the high-water mark belongs to the new address space.
MERGE_CHILD = """
import json, sys, time
from pathlib import Path
from spd.harvest import merge_harvest
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
before = status_kb("VmHWM")
t = time.monotonic()
merge_harvest(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), log=lambda _: None)
print(json.dumps({"rss_before_kb": before, "peak_kb": status_kb("VmHWM"), "seconds": time.monotonic() - t}))
"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_decomposition(pipeline_file: Path, out_dir: Path) -> Path:
    """Train the `decompose` stage of a pipeline file into out_dir (what the quickstart does)."""
    from stages.base import StageContext
    from stages.decompose import STAGE, DecomposeConfig

    data = yaml.safe_load(pipeline_file.read_text())
    config = DecomposeConfig.model_validate(data["stages"]["decompose"])
    ctx = StageContext("decompose", out_dir, {}, num_tasks=1, seed=int(data.get("run", {}).get("seed", 0)))
    assert STAGE.run_task is not None
    STAGE.run_task(config, ctx, 0)
    return out_dir


def throughput(decomposition: Path, settings: HarvestSettings, repeats: int, kernels: Kernels | None) -> dict:
    device = resolve_device(settings.device)
    keep_freed_memory()  # as a harvest task does: bare and harvest passes alike reuse their pages
    model = load_decomposition(decomposition, device)
    corpus = decomposition_corpus(decomposition)
    spec = slice_spec(model.run_config, corpus, settings, 0)
    batches = [(b.index, b.tokens.to(device), b.starts.to(device)) for b in CorpusSlice(corpus, spec)]
    reader = ActivationReader(model, settings.output_top_m)
    n_tokens = sum(t.numel() for _, t, _ in batches)

    def bare() -> None:
        for _, tokens, _ in batches:
            reader.bare_forward(tokens)

    def read() -> None:  # what the harvest reads of each batch, before any accumulation
        for _, tokens, _ in batches:
            reader(tokens)

    def new_accumulator() -> TaskAccumulator:
        return TaskAccumulator(reader.n_components, corpus.vocab_size, settings, 0, device, kernels)

    def harvest() -> None:
        acc = new_accumulator()
        for index, tokens, starts in batches:
            acc.process(index, starts, spec.seq_len, reader(tokens))
        acc.to_shard({})

    def harvest_reading() -> None:
        """The same harvest, each batch read from the token file (corpus or token cache) as a task reads it."""
        acc = new_accumulator()
        for batch in CorpusSlice(corpus, spec):
            acc.process(batch.index, batch.starts.to(device), spec.seq_len, reader(batch.tokens.to(device)))
        acc.to_shard({})

    variants = {"bare": bare, "read": read, "harvest": harvest, "harvest_reading": harvest_reading}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up (kernels, allocator, caches)
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(device),
        "components": reader.n_components,
        "kernels": new_accumulator().kernels,
        "vocab": corpus.vocab_size,
        "tokens": n_tokens,
        "bare_tokens_per_s": n_tokens / median["bare"],
        "read_tokens_per_s": n_tokens / median["read"],
        "harvest_tokens_per_s": n_tokens / median["harvest"],
        "ratio": median["bare"] / median["harvest"],
        # data loading's share: harvest on batches already in memory over harvest reading them from the token file
        "reading_ratio": median["harvest"] / median["harvest_reading"],
        "source": type(corpus).__name__,
        # the two passes of one repeat run back to back, so their ratio cancels the machine's slow drifts
        "paired_ratios": [b / h for b, h in zip(times["bare"], times["harvest"], strict=True)],
        "times": times,
    }


def merge_memory(decomposition: Path, settings: HarvestSettings, shard_counts: list[int], work: Path) -> list[dict]:
    rows = []
    for n in shard_counts:
        out = work / f"shards{n}"
        task_settings = settings.model_copy(update={"n_tasks": n})
        t = time.perf_counter()
        for task in range(n):
            run_harvest_task(decomposition, out, task_settings, task, seed=0, log=lambda _: None)
        tasks_s = time.perf_counter() - t
        shard_bytes = sum(p.stat().st_size for p in (out / "shards").glob("shard-*.npz"))
        child = subprocess.run(
            [sys.executable, "-c", MERGE_CHILD, str(out), str(n), str(decomposition)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append({"shards": n, "shard_mb": shard_bytes / 1e6, "tasks_s": tasks_s, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decomposition", type=Path, default=None)
    parser.add_argument("--from-pipeline", type=Path, default=None, help="train its decompose stage first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-batches", type=int, default=None, help="global batches (default: the whole split)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant (0: skip throughput)")
    parser.add_argument("--no-cofiring", action="store_true", help="harvest with cofiring: false")
    parser.add_argument(
        "--kernels", choices=["numba", "torch"], default=None, help="per-batch kernels (default: numba on CPU)"
    )
    parser.add_argument("--merge-shards", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--merge-examples", type=int, default=1000, help="reservoir k for the merge-memory runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="harvest-bench-") as tmp:
        work = Path(tmp)
        if args.from_pipeline is not None:
            t = time.perf_counter()
            decomposition = build_decomposition(args.from_pipeline, work / "decomposition")
            print(f"trained the decomposition of {args.from_pipeline} in {time.perf_counter() - t:.1f}s")
        else:
            decomposition = args.decomposition or DEFAULT_DECOMPOSITION
        settings = HarvestSettings(
            device=args.device, batch_size=args.batch_size, n_batches=args.n_batches, cofiring=not args.no_cofiring
        )
        if args.repeats > 0:
            report_throughput(decomposition, throughput(decomposition, settings, args.repeats, args.kernels))
        if args.merge_shards:
            merge_settings = settings.model_copy(
                update={"examples_per_component": args.merge_examples, "context_tokens_per_side": 20}
            )
            print(f"merge peak RSS (examples_per_component {args.merge_examples}, window 41):")
            for row in merge_memory(decomposition, merge_settings, args.merge_shards, work):
                print(
                    f"  {row['shards']:>3} shards ({row['shard_mb']:8.1f} MB on disk): peak RSS "
                    f"{row['peak_kb'] / 1024:7.1f} MB (after imports {row['rss_before_kb'] / 1024:6.1f} MB), "
                    f"merge {row['seconds']:.1f}s; tasks took {row['tasks_s']:.1f}s"
                )


def report_throughput(decomposition: Path, r: dict) -> None:
    print(
        f"decomposition {decomposition}: {r['components']} components, vocab {r['vocab']}, device {r['device']}, "
        f"{r['tokens']} tokens per pass, threads {torch.get_num_threads()}, kernels {r['kernels']}"
    )
    print(f"  bare forward (target + CI functions): {r['bare_tokens_per_s']:>12,.0f} tokens/s")
    print(f"  ... + component acts, top-m outputs:  {r['read_tokens_per_s']:>12,.0f} tokens/s")
    print(f"  harvest task loop:                    {r['harvest_tokens_per_s']:>12,.0f} tokens/s")
    print(f"  ratio harvest / bare:                 {r['ratio']:.3f}   (goal >= 0.6)")
    print(
        f"  harvest reading each batch from the {r['source']} file / on batches in memory: {r['reading_ratio']:.3f}"
        "   (goal >= 0.9: data loading is not the bottleneck)"
    )
    paired = r["paired_ratios"]
    print(
        f"  ratio per repeat (same repeat's passes): median {statistics.median(paired):.3f}, "
        f"range {min(paired):.3f}-{max(paired):.3f}"
    )
    print(f"  seconds per pass: {json.dumps({k: [round(x, 3) for x in v] for k, v in r['times'].items()})}")


if __name__ == "__main__":
    main()
