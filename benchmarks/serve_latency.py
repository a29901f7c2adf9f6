"""Latency of `run.py serve` on a finished run: the prompt view and the attribution graph of a 64-token prompt.

    python benchmarks/serve_latency.py [RUN] [--repeats 7] [--threads N]

RUN defaults to runs/quickstart (make it with `bash scripts/quickstart.sh`). The prompt is the first 64 tokens (or
the decomposition's window length, if shorter) of its evaluation split (real text of its corpus, so the CI is as sparse as it is in use). Each
repeat calls POST /api/prompt then POST /api/graph (defaults: keep_fraction 0.8, max_edges 1000) through FastAPI's
TestClient, so the times include validation and JSON encoding, but not a network; the two are alternated in one
process on the same thread count. Also printed: opening the run (model + panels, the panels from the stores on the
first start, from RUN/serve/'s cache on the second) and the graph's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pipeline import orchestrator  # noqa: E402
from pipeline.runs import RunDir  # noqa: E402
from spd.models import load_decomposition_data  # noqa: E402
from spd.serve.app import create_app  # noqa: E402
from spd.serve.panels import CACHE_PREFIX  # noqa: E402
from spd.serve.session import SERVE_DIR, open_served_run  # noqa: E402

PROMPT_TOKENS = 64


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", default=str(REPO_ROOT / "runs" / "quickstart"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        sys.exit(f"no run at {run_dir}: run `bash scripts/quickstart.sh` first")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"run {run_dir}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    for cached in (run_dir / SERVE_DIR).glob(f"{CACHE_PREFIX}*"):  # the first open gathers them from the stores
        cached.unlink()
    status = orchestrator.status(RunDir(run_dir)).to_json()  # the run record, as `run.py serve` passes it
    try:
        run, cold = _timed(lambda: open_served_run(run_dir, status, log=lambda _: None))
    except ValueError as e:
        sys.exit(str(e))
    run, warm = _timed(lambda: open_served_run(run_dir, status, log=lambda _: None))
    print(f"open the run: {cold:.2f} s gathering the panels ({len(run.panels.details)}), {warm:.2f} s from the cache")

    n_tokens = min(PROMPT_TOKENS, run.max_tokens or PROMPT_TOKENS)
    split = run.model.run_config.get("data", {}).get("eval_split", "val")
    ids = [int(t) for t in load_decomposition_data(run.decomposition_dir).tokens(split)[:n_tokens]]
    client = TestClient(create_app(run))
    body = {"token_ids": ids}
    client.post("/api/prompt", json=body).raise_for_status()  # warm-up: first calls pay one-off allocations
    client.post("/api/graph", json=body).raise_for_status()
    prompt_s, graph_s, total_s = [], [], []
    for _ in range(args.repeats):
        view, t_prompt = _timed(lambda: client.post("/api/prompt", json=body))
        graph, t_graph = _timed(lambda: client.post("/api/graph", json=body))
        view.raise_for_status()
        graph.raise_for_status()
        prompt_s.append(t_prompt)
        graph_s.append(t_graph)
        total_s.append(t_prompt + t_graph)
    g = graph.json()
    active = sum(len(p["active"]) for p in view.json()["positions"])
    print(f"prompt: {len(ids)} tokens, {active} (position, component) pairs above CI {run.ci_threshold}")
    print(
        f"graph: {g['n_nodes']} nodes, {g['n_edges']} non-zero edges, {len(g['edges'])} kept "
        f"({g['kept_abs'] / max(g['total_abs'], 1e-30):.0%} of |attribution|), causal prefixes {g['causal_prefixes']}"
    )
    for name, values in (("prompt view", prompt_s), ("graph", graph_s), ("prompt view + graph", total_s)):
        print(
            f"{name:>20}: median {statistics.median(values) * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f}, {args.repeats} repeats)"
        )


if __name__ == "__main__":
    main()
