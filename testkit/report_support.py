"""A synthetic run directory for report tests and the report benchmark: every store the report reads, written
with the stores' own writers (labels, scores, attributions) or, for the harvest (whose writer needs real
shards), with the harvest store's own schema (spd.harvest.schema.TABLES) filled with synthetic rows.

No test lives here; tests/test_report_units.py and benchmarks/report_scale.py use `make_synthetic_run`, and the
`browser` fixture (tests/conftest.py) uses the headless-Chromium helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from spd.attributions.layout import Layout
from spd.attributions.store import STORE_FILE as ATTRIBUTIONS_FILE
from spd.attributions.store import EdgeArrays, write_store
from spd.duckdb_store import create_table, insert_columns, insert_rows
from spd.harvest.schema import STORE_FILE as HARVEST_FILE
from spd.harvest.schema import STORE_FORMAT, STORE_FORMAT_VERSION, TABLES
from spd.interp.labels_store import LabelRecord, write_labels_store
from spd.interp.scoring.store import ScoreRecord, TrialRecord, store_file, write_score_store

ALL_STAGES = ("decompose", "harvest", "attributions", "autointerp", "detection", "fuzzing", "intruder")
UPSTREAMS = {
    "decompose": [],
    "harvest": ["decompose"],
    "attributions": ["decompose", "harvest"],
    "autointerp": ["harvest"],
    "detection": ["harvest", "autointerp"],
    "fuzzing": ["harvest", "autointerp"],
    "intruder": ["harvest"],
}
CHANCE = {"detection": 0.5, "fuzzing": 0.5, "intruder": 0.2}
SIDE = 10  # context tokens per side: windows of 21 tokens, as the harvest's default


@dataclass
class SyntheticRun:
    root: Path
    status: dict[str, Any]
    keys: list[str]
    alive: list[str]
    """Keys of components that fired, in flat order."""
    labels: dict[str, str | None] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)


def _modules(n_components: int, n_modules: int) -> list[tuple[str, int]]:
    base, extra = divmod(n_components, n_modules)
    names = [f"layers.{i // 2}.mlp.{'up_proj' if i % 2 == 0 else 'down_proj'}" for i in range(n_modules)]
    return [(name, base + (1 if i < extra else 0)) for i, name in enumerate(names)]


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any]) -> None:
    insert_columns(con, table, columns, pa.table(columns))  # Arrow: the list columns need it


def _lists(array: np.ndarray) -> pa.ListArray:
    """Rows of a 2-D array as an Arrow list column (DuckDB LIST), without a Python object per row."""
    rows, width = array.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width), pa.array(array.ravel()))


def write_harvest(out_dir: Path, modules: list[tuple[str, int]], rng: np.random.Generator, vocab: list[str]) -> None:
    """A harvest store with the real schema: ~10% dead components, the rest log-uniform densities in [1e-5, 0.1],
    5 top + 10 uniform examples and 20 input + 20 output token stats per alive component."""
    n_tokens, n_top, n_uniform, n_stats, window = 1_000_000, 5, 10, 20, 2 * SIDE + 1
    C, V = sum(c for _, c in modules), len(vocab)
    layer = np.concatenate([np.full(c, name, dtype=object) for name, c in modules])
    layer_index = np.concatenate([np.arange(c) for _, c in modules])
    density = 10 ** rng.uniform(-5, -1, C)
    density[rng.random(C) < 0.1] = 0.0
    count = np.round(density * n_tokens).astype(np.int64)
    alive = np.flatnonzero(count > 0)
    path = Path(out_dir) / HARVEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        for table, columns in TABLES.items():
            create_table(con, table, columns)
        offsets = np.cumsum([0] + [c for _, c in modules])[:-1]
        _insert(
            con,
            "layers",
            {
                "layer": [m for m, _ in modules],
                "layer_order": np.arange(len(modules), dtype=np.int32),
                "offset": offsets.astype(np.int32),
                "n_components": np.array([c for _, c in modules], dtype=np.int32),
            },
        )
        firing = count > 0
        _insert(
            con,
            "components",
            {
                "component": np.arange(C, dtype=np.int32),
                "key": [f"{name}:{i}" for name, i in zip(layer, layer_index, strict=True)],
                "layer": list(layer),
                "layer_index": layer_index.astype(np.int32),
                "firing_count": count,
                "firing_density": count / n_tokens,
                "mean_ci": density * 0.5,
                "mean_ci_firing": pa.array(np.where(firing, 0.6, np.nan), from_pandas=True),
                "mean_act": density * 0.1,
                "mean_act_firing": pa.array(np.where(firing, 1.5, np.nan), from_pandas=True),
                "mean_abs_act": density * 0.2,
                "n_examples": np.minimum(count, n_uniform).astype(np.int32),
                "n_top_examples": np.minimum(count, n_top).astype(np.int32),
            },
        )
        _insert(
            con,
            "vocab",
            {
                "token": np.arange(V, dtype=np.int32),
                "text": vocab,
                "input_count": rng.integers(1, 10_000, V),
                "output_count": rng.integers(1, 10_000, V),
            },
        )
        for direction in ("input", "output"):
            comp = np.repeat(alive, n_stats).astype(np.int32)
            _insert(
                con,
                "token_stats",
                {
                    "component": comp,
                    "direction": [direction] * len(comp),
                    "token": rng.integers(0, V, len(comp)).astype(np.int32),
                    "count": rng.integers(1, 100, len(comp)),
                    "precision": rng.random(len(comp)),
                    "recall": rng.random(len(comp)),
                    "pmi": rng.normal(2.0, 1.0, len(comp)),
                },
            )
        for kind, per in (("top", n_top), ("uniform", n_uniform)):
            n = np.minimum(count[alive], per)
            comp = np.repeat(alive, n).astype(np.int32)
            rank = np.concatenate([np.arange(k) for k in n]).astype(np.int32)
            rows = len(comp)
            tokens = rng.integers(0, V, (rows, window)).astype(np.int32)
            ci = rng.random((rows, window)).astype(np.float32) * 0.3
            ci[:, SIDE] = 0.5 + 0.5 * rng.random(rows)
            act = rng.normal(0, 0.3, (rows, window)).astype(np.float32)
            act[:, SIDE] = 1 + rng.random(rows)
            sequence = rng.integers(0, 10_000, rows)
            _insert(
                con,
                "examples",
                {
                    "component": comp,
                    "kind": [kind] * rows,
                    "rank": rank,
                    "tokens": _lists(tokens),
                    "ci": _lists(ci),
                    "act": _lists(act),
                    "center": np.full(rows, SIDE, dtype=np.int32),
                    "sequence": sequence,
                    "position": np.full(rows, 40, dtype=np.int32),
                    "stream_position": sequence * 128 + 40,
                    "doc": rng.integers(0, 1000, rows).astype(np.int32),
                    "doc_position": np.full(rows, 40, dtype=np.int32),
                    "batch": rng.integers(0, 100, rows).astype(np.int32),
                    "sample_key": np.arange(rows, dtype=np.int64),
                },
            )
        settings = {"ci_threshold": 0.1, "context_tokens_per_side": SIDE}
        row = {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "n_tokens": n_tokens,
            "n_batches": 100,
            "n_sequences": n_tokens // 128,
            "n_tasks": 1,
            "n_components": C,
            "vocab_size": V,
            "seed": 7,
            "ci_threshold": 0.1,
            "split": "train",
            "seq_len": 128,
            "batch_size": 32,
            "dataset_seed": 0,
            "decomposition": json.dumps({"path": "synthetic"}),
            "settings": json.dumps(settings),
            "code": json.dumps({"package_version": "synthetic"}),
            "runtime": json.dumps({}),
            "first_task_started_at": "2026-01-01T00:00:00+00:00",
            "last_task_finished_at": "2026-01-01T00:10:00+00:00",
            "merged_at": "2026-01-01T00:11:00+00:00",
            "merge_seconds": 1.0,
        }
        insert_rows(con, "provenance", TABLES["provenance"], [row])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def write_attributions(
    out_dir: Path, modules: list[tuple[str, int]], vocab_size: int, rng: np.random.Generator, top_k: int = 10
) -> None:
    """An attributions store (its own writer): for every component, top_k sources and top_k targets."""
    names = [m for m, _ in modules]
    connections = [("token:embed", f"component:{m}") for m in names]
    connections += [(f"component:{a}", f"component:{b}") for i, a in enumerate(names) for b in names[i + 1 :]]
    connections += [(f"component:{m}", "output:lm_head") for m in names]
    layout = Layout(
        embedding_module="embed",
        unembedding_module="lm_head",
        vocab_size=vocab_size,
        d_model=16,
        modules=tuple(names),
        n_components=tuple(c for _, c in modules),
        connections=tuple(connections),
        alive=tuple(tuple(True for _ in range(c)) for _, c in modules),
    )
    src_layer, src_index, tgt_layer, tgt_index = [], [], [], []
    out_layer = len(modules) + 1
    for m, (_, c) in enumerate(modules):
        me = m + 1
        n = c * top_k
        # sources of each component: tokens for the first module, earlier components otherwise
        tgt_layer.append(np.full(n, me))
        tgt_index.append(np.repeat(np.arange(c), top_k))
        if m == 0:
            src_layer.append(np.zeros(n, dtype=int))
            src_index.append(rng.integers(0, vocab_size, n))
        else:
            src_layer.append(np.full(n, m))
            src_index.append(rng.integers(0, modules[m - 1][1], n))
        # targets of each component: output logits
        src_layer.append(np.full(n, me))
        src_index.append(np.repeat(np.arange(c), top_k))
        tgt_layer.append(np.full(n, out_layer))
        tgt_index.append(rng.integers(0, vocab_size, n))
    edges = EdgeArrays(
        source_layer=np.concatenate(src_layer),
        source_index=np.concatenate(src_index),
        target_layer=np.concatenate(tgt_layer),
        target_index=np.concatenate(tgt_index),
        value=rng.normal(0, 1, sum(len(x) for x in src_layer)),
    )
    meta = {"n_tokens": 100_000, "n_batches": 10, "num_tasks": 1, "top_k": top_k, "layout": layout.to_dict()}
    write_store(Path(out_dir) / ATTRIBUTIONS_FILE, layout, edges, {}, meta)


def write_labels(out_dir: Path, alive: list[tuple[int, str, str]], rng: np.random.Generator) -> dict[str, str | None]:
    """A labels store (its own writer): every alive component labelled, about 5% failed."""
    records, labels = [], {}
    for i, (component, key, layer) in enumerate(alive):
        failed = rng.random() < 0.05
        label = None if failed else f"synthetic feature {i} ({['digits', 'names', 'punctuation'][i % 3]})"
        labels[key] = label
        records.append(
            LabelRecord(
                component=component,
                key=key,
                layer=layer,
                label=label,
                confidence=None if failed else ["low", "medium", "high"][i % 3],
                reasoning=None if failed else f"the top tokens of component {key} share a theme",
                provider="heuristic",
                model="token-match-v1",
                error="timeout after 3 attempts" if failed else None,
                cost_usd=0.0002,
            )
        )
    write_labels_store(Path(out_dir), records, meta={"strategy": "synthetic"})
    return labels


def write_scores(
    out_dir: Path, kind: str, alive: list[tuple[int, str, str]], rng: np.random.Generator, with_trials: bool
) -> tuple[dict[str, float | None], float]:
    """A score store (its own writer): about 3% of components failed (NULL score with its error)."""
    records, trials, scores, cost = [], [], {}, 0.0
    for component, key, layer in alive:
        failed = rng.random() < 0.03
        score = None if failed else float(np.clip(rng.normal(0.7, 0.15), 0, 1))
        scores[key] = score
        records.append(
            ScoreRecord(
                component=component,
                key=key,
                layer=layer,
                firing_density=None,
                label=None,
                score=score,
                ci_low=None if failed else max(0.0, score - 0.1),
                ci_high=None if failed else min(1.0, score + 0.1),
                chance=CHANCE[kind],
                n_trials=10,
                n_trials_ok=0 if failed else 10,
                n_trials_failed=10 if failed else 0,
                error="every trial failed" if failed else None,
            )
        )
        if with_trials:
            trials.append(
                TrialRecord(
                    item_key=f"{key}#0",
                    component=component,
                    key=key,
                    trial=0,
                    status="ok",
                    n_shown=5,
                    truth_json="{}",
                    answer_json=None,
                    outcome_json=None,
                    provider="heuristic",
                    model="token-match-v1",
                    prompt=None,
                    raw_response=None,
                    input_tokens=10,
                    output_tokens=2,
                    cost_usd=0.001,
                    latency_s=0.01,
                    attempts=1,
                    error_kind=None,
                    error=None,
                    finished_at=None,
                    session=None,
                )
            )
            cost += 0.001
    meta = {"prompt_version": "synthetic", "provider": "heuristic", "model": "token-match-v1", "seed": 1, "config": {}}
    write_score_store(Path(out_dir) / store_file(kind), kind, records, trials, meta)
    return scores, cost


def write_decompose(out_dir: Path, modules: list[tuple[str, int]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {f"eval/l0/0.1_{m}": 3.0 + i for i, (m, _) in enumerate(modules)}
    metrics |= {"eval/l0/0.1_mean": 4.0, "eval/lm/ce_unrecovered_ci_masked": 0.04}
    (out_dir / "summary.json").write_text(json.dumps({"metrics": metrics, "steps": 100, "seed": 1}))
    lines = [json.dumps({"step": s, **{f"train/l0/{m}": 50.0 / (1 + s) for m, _ in modules}}) for s in (0, 50, 100)]
    (out_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def make_synthetic_run(
    root: Path,
    n_components: int = 60,
    n_modules: int = 4,
    stores: tuple[str, ...] = ALL_STAGES,
    planned: tuple[str, ...] = ALL_STAGES,
    seed: int = 0,
    trials: bool = True,
    vocab_size: int = 500,
) -> SyntheticRun:
    """A run directory with `planned` stages in its plan (all COMPLETED in the returned status) and the stores
    of `stores` written. Returns the run, its status JSON and what the stores hold."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    modules = _modules(n_components, n_modules)
    vocab = [f"tok{i}" for i in range(vocab_size - 4)] + [" ", "\n", "<b>x</b>", "</script>"]
    status_stages = []
    for i, name in enumerate(s for s in ALL_STAGES if s in planned):
        status_stages.append(
            {
                "name": name,
                "state": "COMPLETED",
                "key": f"{i:016x}",
                "tasks": {"total": 1, "done": 1, "failed": 0, "running": 0},
                "job_ids": ["1"],
                "log_dir": str(root / "stages" / name / "logs"),
                "error": None,
                "failed_tasks": [],
                "elapsed_s": 12.5,
                "out_dir": str(root / "stages" / name / "out"),
                "inputs": {u: str(root / "stages" / u / "out") for u in UPSTREAMS[name] if u in planned},
                "num_tasks": 1,
                "seed": 100 + i,
                "started_at": "2026-01-01T00:00:00+00:00",
                "finished_at": "2026-01-01T00:00:13+00:00",
                "wall_s": 13.0,
            }
        )
        (root / "stages" / name / "out").mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    # The run record as `python run.py status RUN --json` gives it (pipeline.status.RunStatus, docs/cli.md): the
    # report reads only this, never the orchestrator's files, so none are written here.
    status = {
        "run_id": root.name,
        "run_dir": str(root),
        "executor": "local",
        "stages": status_stages,
        "created_at": "2026-01-01T00:00:00+00:00",
        "pipeline_file": None,
        "seed": 0,
        "code": {"commit": "0" * 40, "dirty": False, "snapshot": str(root / "code")},
        "versions": {"python": "3.11", "duckdb": duckdb.__version__},
        "last_command": None,
        "external": {},
    }

    def out(stage: str) -> Path:
        return root / "stages" / stage / "out"

    keys = [f"{m}:{i}" for m, c in modules for i in range(c)]
    run = SyntheticRun(root=root, status=status, keys=keys, alive=[])
    if "decompose" in stores:
        write_decompose(out("decompose"), modules)
    if "harvest" in stores:
        write_harvest(out("harvest"), modules, rng, vocab)
        with duckdb.connect(str(out("harvest") / HARVEST_FILE), read_only=True) as con:
            alive_rows = con.execute(
                "SELECT component, key, layer FROM components WHERE firing_count > 0 ORDER BY component"
            ).fetchall()
        run.alive = [key for _, key, _ in alive_rows]
    else:
        alive_rows = [(i, key, key.rpartition(":")[0]) for i, key in enumerate(keys)]
    if "attributions" in stores:
        write_attributions(out("attributions"), modules, len(vocab), rng)
    if "autointerp" in stores:
        run.labels = write_labels(out("autointerp"), alive_rows, rng)
        run.costs["autointerp"] = 0.0002 * len(alive_rows)
    for kind in ("detection", "fuzzing", "intruder"):
        if kind in stores:
            run.scores[kind], cost = write_scores(out(kind), kind, alive_rows, rng, trials)
            run.costs[kind] = cost
    return run


# --- headless Chromium ---------------------------------------------------------------------------------------


def chromium_executables() -> tuple[str, str] | None:
    """(browser, driver) executables when both are on PATH."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if chromium_executables() is None:
        return "chromium and chromium-driver are not installed (bash scripts/install_chromium.sh)"
    return None


def headless_chromium(chromium: str, chromedriver: str) -> Any:
    """A headless Chromium WebDriver with the window the report tests and benchmarks/report_scale.py use."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def screenshot(driver: Any, name: str) -> Path:
    """Save a screenshot of the page with the component panel in view; prints and returns its path
    (under $REPORT_ARTIFACTS_DIR, default <tmp>/spd-test-artifacts)."""
    artifacts = Path(os.environ.get("REPORT_ARTIFACTS_DIR", Path(tempfile.gettempdir()) / "spd-test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / name
    driver.execute_script("const p = document.getElementById('panel'); if (!p.hidden) p.scrollIntoView();")
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    print(f"\nreport screenshot: {path}")
    return path
