"""Report build time and page size for a run with 10,000 components, and how the page responds in Chromium.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report_scale.py [--components 10000] [--modules 8] [--keep DIR]

Builds a synthetic run directory with every store the report reads (tests/report_support.py: the labels,
score and attributions stores through their own writers, the harvest store with its own schema; ~90% of the
components alive, a 50,257-token vocabulary, 5 top + 10 uniform examples of 21 tokens each, 20 input + 20
output token stats, 10 attributions in and out), then times `spd.report.build_report` (gather and render separately) and reports the
page's size by part. With chromium and chromedriver installed it then opens the page headless and times: load
until the table is ready, a sort of all rows, the next page, a text filter, and opening a component (inflating
its chunk). Issue 11's goal: build under 60 s, page responsive.

--keep DIR reuses (or creates) the synthetic run in DIR; building its stores takes minutes at 10,000
components (the attributions writer inserts its component table row by row), the report itself does not.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from spd.report.data import gather_report  # noqa: E402
from spd.report.render import write_report  # noqa: E402
from tests.report_support import (  # noqa: E402
    SyntheticRun,
    chromium_executables,
    headless_chromium,
    make_synthetic_run,
)

GOAL_S = 60.0
VOCAB_SIZE = 50_257  # GPT-2's: token ids of 5 digits, as in a real LM's examples


def synthetic_run(folder: Path, components: int, modules: int) -> tuple[SyntheticRun | None, float]:
    marker = folder / "run" / "plan.json"
    if marker.is_file():
        return None, 0.0
    started = time.perf_counter()
    run = make_synthetic_run(
        folder / "run", n_components=components, n_modules=modules, trials=False, vocab_size=VOCAB_SIZE
    )
    return run, time.perf_counter() - started


def page_parts(page: str) -> dict[str, int]:
    sizes: dict[str, int] = {"total": len(page.encode())}
    for part, pattern in (
        ("table JSON", r'id="table-data"[^>]*>(.*?)</script>'),
        ("component chunks (gzip+base64)", r'id="chunk-\d+"[^>]*>(.*?)</script>'),
        ("plots (SVG)", r"(<svg.*?</svg>)"),
    ):
        sizes[part] = sum(len(m.encode()) for m in re.findall(pattern, page, re.S))
    return sizes


def browser_timings(page: Path) -> dict[str, float] | str:
    executables = chromium_executables()
    if executables is None:
        return "chromium/chromedriver not installed (bash scripts/install_chromium.sh)"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium(*executables)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        out = {"load until the table is ready (ms)": driver.execute_script("return performance.now()")}
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
        out["open a component: inflate its chunk and draw the panel (ms)"] = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const t = performance.now();"
            "const rows = document.querySelectorAll('#table-body tr'); rows[rows.length - 1].click();"
            "const poll = () => document.querySelector('#panel .example') ? done(performance.now() - t)"
            " : setTimeout(poll, 2); poll();"
        )
        out["rows in the DOM"] = len(driver.find_elements(By.CSS_SELECTOR, "#table-body tr"))
        return out
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, default=10_000)
    parser.add_argument("--modules", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or create the synthetic run in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="report-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  cpus={os.cpu_count()}  folder={folder}")

    run, made_s = synthetic_run(folder, args.components, args.modules)
    root = folder / "run"
    status = run.status if run is not None else {"run_id": "run", "run_dir": str(root), "stages": []}
    if run is not None:
        print(f"synthetic run: {args.components} components, {len(run.alive)} alive, stores built in {made_s:.1f} s")
    else:
        print(f"synthetic run reused from {root}")

    started = time.perf_counter()
    model = gather_report(root, status)
    gathered = time.perf_counter()
    path = write_report(model, root)
    written = time.perf_counter()
    total = written - started
    print(f"\nreport of {len(model['rows'])} alive components ({model['plot_data']['n_components']} in all)")
    print(f"  gather (read every store)      {gathered - started:7.2f} s")
    print(f"  render + plots + atomic write  {written - gathered:7.2f} s")
    print(f"  build total                    {total:7.2f} s   = {total / GOAL_S:.2f} x the {GOAL_S:.0f} s goal")
    for part, size in page_parts(path.read_text()).items():
        print(f"  page {part:<34} {size / 1e6:7.2f} MB")

    timings = browser_timings(path)
    print("\nin headless Chromium:")
    if isinstance(timings, str):
        print(f"  skipped: {timings}")
    else:
        for name, value in timings.items():
            print(f"  {name:<62} {value:8.1f}")


if __name__ == "__main__":
    main()
