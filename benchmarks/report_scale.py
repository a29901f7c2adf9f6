"""Report build time, sizes and the page's speed and memory in Chromium, for a synthetic run of 40,000 components.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report_scale.py [--components 40000] [--modules 8] [--keep DIR]

Builds a synthetic run directory with every store the report reads (testkit/report_support.py: the labels,
score and attributions stores through their own writers, the harvest store with its own schema; ~90% of the
components alive, a 50,257-token vocabulary, 5 top + 10 uniform examples of 21 tokens each, 20 input + 20
output token stats, 10 attributions in and out), then times `spd.report` in three parts: gather (read every
store), render (plots, page, packed component files) and write (components/ swapped in, then index.html), and
reports the bytes of index.html by part and of components/ per file. With chromium and chromedriver installed it
opens the page headless from file:// and measures: the time until the table is ready, a sort of all rows, the
next page, a text filter, opening a component (loading its chunk and the token table, then another chunk, then
one already loaded), and browser memory (JS heap from the DevTools Performance domain; resident memory of
Chromium's processes from /proc) after load, after opening components in 40 chunks and after a GC, and what the
data of 40 chunks alone add (loaded, inflated and parsed on a fresh page, no panel drawn).

Issue 27's goals: the table ready in under 2 s, under 500 MB of browser memory, the build in under 2 minutes.

--keep DIR reuses (or creates) the synthetic run in DIR; building its stores takes minutes at 40,000
components, the report itself does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from spd.report.data import gather_report  # noqa: E402
from spd.report.render import COMPONENTS_DIR, render_report, write_rendered  # noqa: E402
from testkit.report_support import (  # noqa: E402
    SyntheticRun,
    chromium_executables,
    headless_chromium,
    make_synthetic_run,
)

BUILD_GOAL_S = 120.0
OPEN_GOAL_MS = 2000.0
MEMORY_GOAL_MB = 500.0
VOCAB_SIZE = 50_257  # GPT-2's: token ids of 5 digits, as in a real LM's examples
MB = 1e6


def synthetic_run(folder: Path, components: int, modules: int) -> tuple[SyntheticRun | None, float]:
    marker = folder / "status.json"  # the run record the report reads, written once the stores are built
    if marker.is_file():
        return None, 0.0
    started = time.perf_counter()
    run = make_synthetic_run(
        folder / "run", n_components=components, n_modules=modules, trials=False, vocab_size=VOCAB_SIZE
    )
    marker.write_text(json.dumps(run.status))
    return run, time.perf_counter() - started


def page_parts(page: str) -> dict[str, int]:
    sizes: dict[str, int] = {"total": len(page.encode())}
    for part, pattern in (
        ("meta JSON", r'id="report-meta"[^>]*>(.*?)</script>'),
        ("table JSON", r'id="table-data"[^>]*>(.*?)</script>'),
        ("plots (SVG)", r"(<svg.*?</svg>)"),
        ("CSS", r"<style>(.*?)</style>"),
    ):
        sizes[part] = sum(len(m.encode()) for m in re.findall(pattern, page, re.S))
    return sizes


def sidecar_sizes(folder: Path) -> dict[str, float]:
    chunks = [p.stat().st_size for p in folder.glob("chunk-*.js")]
    tokens = [p.stat().st_size for p in folder.glob("tokens-*.js")]
    return {
        "files": len(chunks) + len(tokens),
        "total MB": (sum(chunks) + sum(tokens)) / MB,
        "chunks": len(chunks),
        "chunk min MB": min(chunks, default=0) / MB,
        "chunk median MB": statistics.median(chunks) / MB if chunks else 0.0,
        "chunk max MB": max(chunks, default=0) / MB,
        "token files": len(tokens),
        "token files MB": sum(tokens) / MB,
    }


def _descendants(pid: int) -> list[int]:
    """Processes below `pid` (chromedriver -> chromium and its zygotes, renderers, GPU and utility processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _memory_kb(pid: int) -> tuple[str, int, int]:
    """(command line, RSS kB, PSS kB) of a process: PSS shares each shared page among its users, so PSS of all
    Chromium's processes adds up to their real footprint where a sum of RSS would count shared pages again."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    rss, pss = (int(re.search(rf"^{k}:\s+(\d+) kB", rollup, re.M).group(1)) for k in ("Rss", "Pss"))  # type: ignore[union-attr]
    return cmdline, rss, pss


def browser_memory(driver: Any) -> dict[str, float]:
    """JS heap of the page (DevTools Performance.getMetrics), and memory of Chromium's processes: the largest
    renderer (the page's) and the proportional total of all of them (browser, GPU, utility, renderers)."""
    metrics = {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
    renderer = (0, 0)
    total_pss = 0
    for pid in _descendants(driver.service.process.pid):
        try:
            cmdline, rss, pss = _memory_kb(pid)
        except OSError:
            continue
        total_pss += pss
        if "--type=renderer" in cmdline and rss > renderer[0]:
            renderer = (rss, pss)
    return {
        "JS heap used (MB)": metrics["JSHeapUsedSize"] / MB,
        "JS heap total (MB)": metrics["JSHeapTotalSize"] / MB,
        "page renderer RSS (MB)": renderer[0] * 1024 / MB,
        "page renderer PSS (MB)": renderer[1] * 1024 / MB,
        "all Chromium processes PSS (MB)": total_pss * 1024 / MB,
    }


OPEN_ROW = """
const done = arguments[arguments.length - 1]; const row = arguments[0];
const t = performance.now();
location.hash = '#component=' + encodeURIComponent(row);
const poll = () => {
  const p = document.getElementById('panel');
  if (p.dataset.key === row) done(performance.now() - t);
  else if (p.textContent.startsWith('cannot read')) done(-1);
  else setTimeout(poll, 1);
};
poll();
"""


# The page's own loading path (report.js, "data chunks") without drawing panels: load 40 chunk scripts, inflate
# and parse each, keep none. What the data alone cost the renderer, apart from the panels' DOM.
DATA_ONLY = """
const done = arguments[arguments.length - 1]; const meta = JSON.parse(document.getElementById('report-meta').textContent);
const got = {};
window.SPD_REPORT_CHUNK = (build, name, data) => { got[name] = data; };
(async () => {
  const t = performance.now();
  for (let i = 0; i < 40; i++) {
    const name = 'chunk-' + Math.round(i * (meta.n_chunks - 1) / 39);
    await new Promise((resolve, reject) => {
      const s = document.createElement('script'); s.src = meta.components + '/' + name + '.js';
      s.onload = () => { s.remove(); resolve(); }; s.onerror = reject; document.head.append(s);
    });
    const bin = atob(got[name]); delete got[name];
    const bytes = new Uint8Array(bin.length);
    for (let j = 0; j < bin.length; j++) bytes[j] = bin.charCodeAt(j);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    JSON.parse(await new Response(stream).text());
  }
  done(performance.now() - t);
})();
"""


def browser_timings(page: Path) -> dict[str, float] | str:
    executables = chromium_executables()
    if executables is None:
        return "chromium/chromedriver not installed (bash scripts/install_chromium.sh)"
    from selenium.webdriver.common.by import By

    driver = headless_chromium(*executables)
    try:
        driver.execute_cdp_cmd("Performance.enable", {})
        driver.get("about:blank")
        blank = browser_memory(driver)
        started = time.perf_counter()
        driver.get(page.as_uri())  # returns after the load event; the table is drawn by the page's inline script
        wall_ms = 1000 * (time.perf_counter() - started)
        assert driver.execute_script("return document.body.dataset.ready") == "1", "table not ready at load"
        nav = driver.execute_script("return performance.getEntriesByType('navigation')[0].toJSON()")
        out: dict[str, float] = {
            "table ready: DOMContentLoaded, from navigation start (ms)": nav["domContentLoadedEventEnd"],
            "load event end, from navigation start (ms)": nav["loadEventEnd"],
            "driver.get() wall time, incl. WebDriver round trip (ms)": wall_ms,
        }
        out.update({f"about:blank: {k}": v for k, v in blank.items() if "heap" not in k})
        out.update({f"after load: {k}": v for k, v in browser_memory(driver).items()})
        out["sort all rows by label (ms)"] = driver.execute_script(
            "const t = performance.now(); document.querySelector('#header-row th[data-col=\"label\"]').click();"
            "return performance.now() - t;"
        )
        out["next page (ms)"] = driver.execute_script(
            "const t = performance.now(); document.getElementById('next-page').click(); return performance.now() - t;"
        )
        out["filter by module, incl. the 150 ms input debounce (ms)"] = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const count = document.getElementById('match-count');"
            "const before = count.textContent; const box = document.querySelector('#filter-row input[data-col=\"module\"]');"
            "const t = performance.now(); box.value = 'up_proj'; box.dispatchEvent(new Event('input'));"
            "const poll = () => count.textContent !== before ? done(performance.now() - t) : setTimeout(poll, 2); poll();"
        )
        keys = driver.execute_script(
            "return JSON.parse(document.getElementById('table-data').textContent).rows.map(r => r[0])"
        )
        chunk_size = driver.execute_script(
            "return JSON.parse(document.getElementById('report-meta').textContent).chunk_size"
        )
        n_chunks = -(-len(keys) // chunk_size)
        last = keys[-1]
        other = keys[(n_chunks // 2) * chunk_size]
        same = keys[(n_chunks // 2) * chunk_size + 1]
        out["open a component: first (its chunk + the token table) (ms)"] = driver.execute_async_script(OPEN_ROW, last)
        out["open a component: another chunk (ms)"] = driver.execute_async_script(OPEN_ROW, other)
        out["open a component: a chunk already loaded (ms)"] = driver.execute_async_script(OPEN_ROW, same)
        out["chunk scripts left in the DOM"] = len(driver.find_elements(By.CSS_SELECTOR, "head script[src]"))
        spread = sorted({round(i * (n_chunks - 1) / 39) for i in range(40)})  # 40 chunks (all when fewer)
        many = [keys[min(len(keys) - 1, c * chunk_size + 2)] for c in spread]
        times = [driver.execute_async_script(OPEN_ROW, key) for key in many]
        out["open a component in each of 40 chunks: median (ms)"] = statistics.median(times)
        out["open a component in each of 40 chunks: max (ms)"] = max(times)
        out.update({f"after 40 chunks: {k}": v for k, v in browser_memory(driver).items()})
        driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
        time.sleep(1)
        out.update({f"after 40 chunks and a GC: {k}": v for k, v in browser_memory(driver).items()})
        out["rows in the DOM"] = len(driver.find_elements(By.CSS_SELECTOR, "#table-body tr"))
        driver.get(page.as_uri())  # a fresh page: the data of 40 chunks alone, no panel drawn
        before = browser_memory(driver)
        driver.set_script_timeout(300)
        out["data only: load, inflate and parse 40 chunks (ms)"] = driver.execute_async_script(DATA_ONLY)
        after = browser_memory(driver)
        out.update({f"data only: 40 chunks add to {k}": after[k] - before[k] for k in after})
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe and min(times) > 0, severe or times
        return out
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, default=40_000)
    parser.add_argument("--modules", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or create the synthetic run in this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="report-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  cpus={os.cpu_count()}  folder={folder}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    run, made_s = synthetic_run(folder, args.components, args.modules)
    root = folder / "run"
    status = run.status if run is not None else json.loads((folder / "status.json").read_text())
    if run is not None:
        print(f"synthetic run: {args.components} components, {len(run.alive)} alive, stores built in {made_s:.1f} s")
    else:
        print(f"synthetic run reused from {root}")

    started = time.perf_counter()
    model = gather_report(root, status)
    gathered = time.perf_counter()
    rendered = render_report(model)
    rendered_at = time.perf_counter()
    path = write_rendered(rendered, root)
    written = time.perf_counter()
    total = written - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
    figures: dict[str, Any] = {
        "load average at start": load,
        "alive components": len(model["rows"]),
        "components": model["plot_data"]["n_components"],
        "build": {
            "gather s": gathered - started,
            "render s": rendered_at - gathered,
            "write s": written - rendered_at,
            "total s": total,
            "peak RSS MB": peak_mb,
        },
    }
    print(f"\nreport of {len(model['rows'])} alive components ({model['plot_data']['n_components']} in all)")
    print(f"  gather (read every store)              {gathered - started:7.2f} s")
    print(f"  render (plots, page, packed chunks)    {rendered_at - gathered:7.2f} s")
    print(f"  write (components/ swap, index.html)   {written - rendered_at:7.2f} s")
    print(f"  build total                            {total:7.2f} s   = {total / BUILD_GOAL_S:.2f} x the 2 min goal")
    print(f"  peak resident memory of the build      {peak_mb:7.0f} MB")
    parts = page_parts(path.read_text())
    figures["index.html MB"] = {k: v / MB for k, v in parts.items()}
    for part, size in parts.items():
        print(f"  index.html {part:<28} {size / MB:7.2f} MB")
    sidecars = sidecar_sizes(path.parent / COMPONENTS_DIR)
    figures["components/"] = sidecars
    for part, value in sidecars.items():
        print(
            f"  components/ {part:<27} {value:7.2f}"
            if isinstance(value, float)
            else f"  components/ {part:<27} {value:7d}"
        )
    del model, rendered

    timings = browser_timings(path)
    print("\nin headless Chromium (page from file://):")
    if isinstance(timings, str):
        print(f"  skipped: {timings}")
    else:
        figures["browser"] = timings
        version = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
        figures["chromium"] = version
        print(f"  {version}")
        for name, value in timings.items():
            print(f"  {name:<66} {value:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
