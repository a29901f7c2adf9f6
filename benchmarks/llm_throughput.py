"""Throughput and overhead of the LLM client (spd/interp) against the loopback server of testkit/llm_server.py,
run in its own process so that its threads do not share the client's GIL.

    .venv/bin/python benchmarks/llm_throughput.py [--provider openai|anthropic] [--quick]

Three measurements, each printed as a ratio against its goal:

* concurrency: a server that takes a fixed delay per request (--delay, 1 s), no rate limit; the server's
  time-averaged requests in flight (first arrival to last answer) over max_concurrent. Goal >= 0.9. The
  SDK spends a few ms of CPU per request; with a short delay on a small, busy machine the client runs out
  of CPU before it runs out of slots (the printed client CPU per request shows when that happens).
* rate: a requests-per-minute limit well below what the concurrency allows; requests per minute seen by
  the server (arrivals, first to last) over the limit. Goal within 5 %.
* overhead: one request at a time, no server delay; the client's wall time per item minus the bare SDK
  call's, measured alternately in the same process (median of rounds). Goal < 1 ms. Everything the client
  adds is in it: budget reservation, pacing, retry wrapper, timeout, JSON + schema validation, the result
  row and its journal write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from spd.interp.config import LLMConfig, ModelPrice  # noqa: E402
from spd.interp.llm import LLMClient, RunSummary, make_provider  # noqa: E402
from spd.interp.providers.base import ChatProvider, Completion  # noqa: E402
from spd.interp.results import ResultJournal  # noqa: E402
from spd.interp.schemas import LabelInput  # noqa: E402
from spd.interp.standard_tasks import label_task  # noqa: E402
from spd.interp.tasks import WorkItem  # noqa: E402
from testkit.llm_server import LLMServerProcess  # noqa: E402

KEY_ENV = "SPD_BENCH_LLM_KEY"
TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component.")


def make_config(server: LLMServerProcess, provider: str, **overrides: Any) -> LLMConfig:
    settings: dict[str, Any] = {
        "provider": provider,
        "model": "bench-model",
        "base_url": server.openai_base_url if provider == "openai" else server.anthropic_base_url,
        "api_key_env": KEY_ENV,
        "budget_usd": 1000.0,  # exercised, never binding
        "prices": {"bench-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)},
        "progress": False,
        "max_retries": 0,
    }
    settings.update(overrides)
    return LLMConfig(**settings)


def work(n: int, prefix: str) -> list[WorkItem[LabelInput]]:
    return [WorkItem(f"{prefix}{i}", LabelInput(component_key=f"{prefix}{i}")) for i in range(n)]


def run_client(config: LLMConfig, n: int, prefix: str) -> tuple[RunSummary, float]:
    with tempfile.TemporaryDirectory() as folder, ResultJournal(Path(folder)) as journal:
        client = LLMClient(config, journal)
        started = time.perf_counter()
        summary = asyncio.run(client.run(TASK, work(n, prefix)))
        elapsed = time.perf_counter() - started
    if summary.n_ok != n:
        raise SystemExit(f"benchmark run failed: {summary}")
    return summary, elapsed


class TimedProvider:
    """Wraps a provider and adds up the wall time spent inside its SDK calls."""

    def __init__(self, inner: ChatProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.inside_s = 0.0

    async def complete(self, prompt: str, schema: dict[str, Any], schema_name: str) -> Completion:
        started = time.perf_counter()
        try:
            return await self.inner.complete(prompt, schema, schema_name)
        finally:
            self.inside_s += time.perf_counter() - started

    async def aclose(self) -> None:
        await self.inner.aclose()


def client_overhead_per_call(config: LLMConfig, n: int, prefix: str) -> tuple[float, float]:
    """(wall time per item, wall time per item outside the SDK call) for one client run, one at a time."""

    async def main() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as folder, ResultJournal(Path(folder)) as journal:
            provider = TimedProvider(make_provider(config, os.environ[KEY_ENV]))
            client = LLMClient(config, journal, provider=provider)
            started = time.perf_counter()
            summary = await client.run(TASK, work(n, prefix))
            elapsed = time.perf_counter() - started
            await provider.aclose()
        if summary.n_ok != n:
            raise SystemExit(f"benchmark run failed: {summary}")
        return elapsed / n, (elapsed - provider.inside_s) / n

    return asyncio.run(main())


def bare_sdk_seconds_per_call(config: LLMConfig, n: int, prefix: str) -> float:
    """The same requests through the provider SDK alone: one at a time, no client around them."""

    async def main() -> float:
        provider = make_provider(config, os.environ[KEY_ENV])
        schema = TASK.json_schema()
        prompts = [TASK.render_prompt(item.input) for item in work(n, prefix)]
        started = time.perf_counter()
        for prompt in prompts:
            await provider.complete(prompt, schema, TASK.name)
        elapsed = time.perf_counter() - started
        await provider.aclose()
        return elapsed / n

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test, not a measurement)")
    parser.add_argument(
        "--delay", type=float, default=1.0, help="server delay per request in the concurrency measurement (s)"
    )
    args = parser.parse_args()
    os.environ[KEY_ENV] = "sk-bench"
    scale = 0.2 if args.quick else 1.0
    rows: list[tuple[str, str, float, str, bool]] = []

    with LLMServerProcess() as server:
        # Warm-up: imports, first connections.
        run_client(make_config(server, args.provider, requests_per_minute=None), 20, "warm")

        # 1. Concurrency.
        max_concurrent, delay = 50, args.delay
        n = int(750 * scale)
        server.control(delay_s=delay, reset=True)
        cpu_before = time.process_time()
        _summary, elapsed = run_client(
            make_config(server, args.provider, max_concurrent=max_concurrent, requests_per_minute=None), n, "conc"
        )
        cpu_ms = (time.process_time() - cpu_before) / n * 1e3
        stats = server.stats()
        ratio = stats["mean_in_flight"] / max_concurrent
        detail = (
            f"mean {stats['mean_in_flight']:.2f} of {max_concurrent} (max {stats['max_in_flight']}); "
            f"{n} requests of {delay} s in {elapsed:.2f} s, ideal {n / max_concurrent * delay:.2f} s; "
            f"client CPU {cpu_ms:.2f} ms/request"
        )
        rows.append(("in flight / max_concurrent", ">= 0.90", ratio, detail, ratio >= 0.9))

        # 2. Rate limit.
        limit, n = 1200.0, int(240 * scale)
        server.control(delay_s=0.05, reset=True)
        run_client(make_config(server, args.provider, max_concurrent=50, requests_per_minute=limit), n, "rate")
        arrivals = server.stats()["arrivals"]
        observed = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60.0
        ratio = observed / limit
        detail = f"{observed:.1f} req/min observed, limit {limit:.0f}; {n} requests"
        rows.append(("requests per minute / limit", "0.95 .. 1.05", ratio, detail, 0.95 <= ratio <= 1.05))

        # 3. Overhead per call: time outside the SDK call, and (noisier) client vs bare SDK, alternating.
        server.control(delay_s=0.0, reset=True)
        n, rounds = int(300 * scale), 5
        serial = make_config(server, args.provider, max_concurrent=1, requests_per_minute=None)
        bare, ours, outside = [], [], []
        for r in range(rounds):
            bare.append(bare_sdk_seconds_per_call(serial, n, f"bare{r}-"))
            per_call, outside_sdk = client_overhead_per_call(serial, n, f"ours{r}-")
            ours.append(per_call)
            outside.append(outside_sdk)
        overhead_ms = statistics.median(outside) * 1e3
        bare_ms, ours_ms = statistics.median(bare) * 1e3, statistics.median(ours) * 1e3
        detail = (
            f"{overhead_ms:.3f} ms/call outside the SDK call (medians of {rounds} x {n}); "
            f"client {ours_ms:.3f} vs bare SDK {bare_ms:.3f} ms/call"
        )
        rows.append(("client overhead / 1 ms", "< 1.00", overhead_ms / 1.0, detail, overhead_ms < 1.0))

    print(f"LLM client throughput ({args.provider} wire format, loopback server, {os.cpu_count()} CPUs)")
    for name, goal, ratio, detail, met in rows:
        print(f"  {name:30s} {ratio:7.3f}   goal {goal:13s} {'MET' if met else 'MISSED':6s}  {detail}")


if __name__ == "__main__":
    main()
