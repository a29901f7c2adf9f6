"""The co-firing table's hard memory cap (issue 25): spills to disk at the cap, and the counts stay exact.

A `SparsePairCounter` never holds a table above its byte limit; at the limit it writes its pairs, sorted, to a
run file and starts over, so a pair's exact count is the sum over the runs and the final table. These tests force
many spills with a tiny cap: the counter against brute force (including a row with more pairs than the whole
table), then real harvests (tests/test_harvest.py's tiny decomposition and brute-force pass) whose stores must
equal the brute-force F^T F, for 1 and 3 tasks and with cofiring_min_count 3, with the store builder reading the
shards' co-firing members in small chunks. Spill directories are gone after a task, written or failed, and a
rerun after a crash that left one succeeds.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from spd.harvest import HarvestSettings, run_harvest_task
from spd.harvest.cofiring import CofiringCounter, PairRun, SparsePairCounter
from spd.harvest.shard import COFIRE_MEMBERS, cofiring_chunks, read_shard, shard_path
from tests import test_harvest
from tests.test_harvest import SEED, SETTINGS, _harvest, _sparse_table

# tests/test_harvest.py's module fixtures, found here by pytest under the same names: its tiny LM decomposition and
# its brute-force pass over the same batches (F^T F for the co-firing counts)
decomposition = test_harvest.decomposition
brute_force = test_harvest.brute_force

TINY_CAP = 4096  # bytes: 256 slots, so at most 128 distinct pairs before a spill
# bytes: 64 slots, 32 pairs; the harvests below see 228 distinct pairs (a 1-task harvest spills ~420 times)
HARVEST_CAP = 1024


def _dense(C: int, parts: list[tuple[np.ndarray | torch.Tensor, ...]]) -> torch.Tensor:
    """Sum (a, b, count) parts into a dense [C, C] table (duplicates across parts add up)."""
    out = torch.zeros(C, C, dtype=torch.int64)
    for a, b, n in parts:
        a, b, n = (torch.as_tensor(np.asarray(x)).long() for x in (a, b, n))
        out.index_put_((a, b), n, accumulate=True)
    return out


def _counter_total(counter: SparsePairCounter | CofiringCounter, C: int) -> torch.Tensor:
    final = counter.pairs()  # first: a table that spilled before is spilled once more by it
    parts = [chunk for run in counter.spills for chunk in run.chunks(50)]  # several chunks per run
    return _dense(C, [*parts, final])


def _check_run(run: PairRun) -> None:
    a, b, n = (np.concatenate(cols) for cols in zip(*run.chunks(), strict=True))
    assert len(a) == run.n and run.path.stat().st_size == 16 * run.n
    keys = a.astype(np.int64) * 1_000_000 + b
    assert bool((a < b).all()) and bool((np.diff(keys) > 0).all()) and bool((n > 0).all())  # sorted, distinct


def test_table_never_exceeds_its_cap_and_spilled_counts_are_exact(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    C = 97
    counter = SparsePairCounter(C, capacity=16, spill_dir=tmp_path / "spill", table_limit=TINY_CAP)
    expected = torch.zeros(C, C, dtype=torch.int64)
    for density in (0.0, 0.01, 0.05, 0.2, 0.9, 0.3):
        firing = torch.rand(40, C, generator=gen) < density
        counter.add(firing)
        assert counter.nbytes <= TINY_CAP and counter.peak_nbytes <= TINY_CAP  # within the add too (peak)
        expected += firing.long().T @ firing.long()
    assert counter.nbytes == TINY_CAP  # it grew up to the cap, not beyond
    assert len(counter.spills) >= 10  # far more distinct pairs than 128 were seen: many spills
    for run in counter.spills:
        _check_run(run)
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == [r.path.name for r in counter.spills]
    n_runs = len(counter.spills)
    assert torch.equal(_counter_total(counter, C), torch.triu(expected, diagonal=1))
    # at the end the full table went to one more run and was released, not listed and sorted in memory
    assert len(counter.spills) == n_runs + 1 and counter.nbytes == 16 * 16 and counter.pairs()[0].numel() == 0


def test_a_batch_with_more_pairs_than_the_table_is_counted_across_spills(tmp_path: Path) -> None:
    C = 60
    counter = SparsePairCounter(C, spill_dir=tmp_path, table_limit=256)  # 16 slots: 8 pairs per run
    firing = torch.ones(2, C, dtype=torch.bool)  # two rows of the same C (C - 1) / 2 = 1770 pairs
    counter.add(firing)
    # a pair met on both rows is one table entry with count 2 (pairs are gathered per component over the batch);
    # component 0 alone has 59 partners, more than the table holds, so the count resumes across spills mid-component
    assert counter.peak_nbytes == 256 and len(counter.spills) == 1770 // 8
    assert torch.equal(_counter_total(counter, C), torch.triu(torch.full((C, C), 2), diagonal=1))


def test_reaching_the_cap_without_a_spill_directory_is_an_error() -> None:
    counter = SparsePairCounter(30, table_limit=256)
    with pytest.raises(RuntimeError, match="cap of 256 bytes and has no spill directory"):
        counter.add(torch.ones(1, 30, dtype=torch.bool))
    assert not counter._partners.any()  # the failed batch leaves the per-component scratch row zero
    with pytest.raises(ValueError, match="below 16 slots"):
        SparsePairCounter(30, table_limit=255)


def test_spilled_first_batch_moves_into_the_dense_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a dense method wins the first batch, which was counted sparse and spilled, every run goes to the table."""
    monkeypatch.setattr("spd.harvest.cofiring.SPARSE_TABLE_LIMIT", TINY_CAP)
    gen = torch.Generator().manual_seed(1)
    C = 80
    counter = CofiringCounter(C, "cpu", spill_dir=tmp_path)
    first, second = (torch.rand(64, C, generator=gen) < 0.3 for _ in range(2))
    counter._sparse().add(first)
    runs = list(counter.spills)
    assert len(runs) >= 2
    counter._sparse_to_dense()
    counter.method = "fp32"
    counter.add(second)
    assert counter.spills == [] and not any(run.path.exists() for run in runs)
    expected = first.long().T @ first.long() + second.long().T @ second.long()
    assert torch.equal(_dense(C, [counter.pairs()]), torch.triu(expected, diagonal=1))


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Count sparse under the tiny cap (no dense table fits), read shards' pairs 1000 at a time; record the spills."""
    import spd.harvest.cofiring as cofiring

    monkeypatch.setattr(cofiring, "DENSE_TABLE_LIMIT", 0)
    monkeypatch.setattr(cofiring, "SPARSE_TABLE_LIMIT", HARVEST_CAP)
    monkeypatch.setattr("spd.harvest.store_builder.COFIRING_CHUNK_ROWS", 1000)
    seen: dict[str, list] = {"runs": [], "spill_dirs": set()}
    spill = SparsePairCounter.spill

    def recording_spill(self: SparsePairCounter) -> None:
        spill(self)
        if self.spills:
            seen["runs"].append((self.spills[-1].n, self.spills[-1].path.stat().st_size))
            seen["spill_dirs"].add(self.spill_dir)

    monkeypatch.setattr(SparsePairCounter, "spill", recording_spill)
    return seen


@pytest.mark.parametrize(("n_tasks", "min_count"), [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_store_cofiring_is_exact_when_tasks_spill(
    decomposition: Path,
    brute_force: dict,
    tmp_path: Path,
    capped: dict[str, list],
    n_tasks: int,
    min_count: int,
) -> None:
    store = _harvest(decomposition, tmp_path / "out", n_tasks, cofiring_min_count=min_count)
    C = brute_force["input_counts"].shape[0]
    off_diagonal = brute_force["cofire"] - torch.diag(torch.diag(brute_force["cofire"]))
    n_distinct = int((torch.triu(off_diagonal, diagonal=1) > 0).sum())
    assert n_distinct > 4 * HARVEST_CAP // 32  # the harvest sees many times what the capped table holds
    assert len(capped["runs"]) >= 3 * n_tasks  # every task spilled, several times
    assert all(size == 16 * n for n, size in capped["runs"])
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT DISTINCT cofiring_method FROM tasks").fetchall() == [("sparse",)]
        cofire = _sparse_table(con, "SELECT component, other, count FROM cofiring", (C, C))
    assert torch.equal(cofire, torch.where(off_diagonal >= min_count, off_diagonal, 0))
    if min_count == 3:
        assert bool(((off_diagonal > 0) & (off_diagonal < 3)).any())  # the rule drops some pairs here
    shards_dir = shard_path(tmp_path / "out", 0).parent
    assert capped["spill_dirs"] and all(d.parent == shards_dir for d in capped["spill_dirs"])
    assert not [p.name for p in shards_dir.iterdir() if "tmp" in p.name]  # spill directories removed after the task
    listed = 0
    for task in range(n_tasks):
        path = shard_path(tmp_path / "out", task)
        shard = read_shard(path)
        listed += len(shard.cofire_a)
        chunks = list(cofiring_chunks(path, 777))
        assert len(chunks) == -(-len(shard.cofire_a) // 777)  # read in bounded chunks, not whole members
        for name, column in zip(COFIRE_MEMBERS, zip(*chunks, strict=True), strict=True):
            assert np.array_equal(np.concatenate(column), getattr(shard, name).numpy())
        assert bool((shard.cofire_a < shard.cofire_b).all())
        skipped = read_shard(path, cofiring=False)  # what the merge loads: no pairs
        assert len(skipped.cofire_a) == 0 and torch.equal(skipped.firing_count, shard.firing_count)
    # the shards list pairs more than once (once per run that held them); the merge sums them
    assert listed > n_distinct
    assert torch.equal(
        _dense(C, [(s.cofire_a, s.cofire_b, s.cofire_count) for s in map(read_shard, _shards(tmp_path, n_tasks))]),
        torch.triu(off_diagonal, diagonal=1),
    )


def _shards(tmp_path: Path, n_tasks: int) -> list[Path]:
    return [shard_path(tmp_path / "out", task) for task in range(n_tasks)]


def test_capped_store_equals_the_uncapped_one(decomposition: Path, tmp_path: Path, monkeypatch) -> None:
    """The whole co-firing table, row for row, with and without the cap (both counted sparse, 3 tasks)."""
    monkeypatch.setattr("spd.harvest.cofiring.DENSE_TABLE_LIMIT", 0)
    tables = {}
    for cap in (None, HARVEST_CAP):
        if cap is not None:
            monkeypatch.setattr("spd.harvest.cofiring.SPARSE_TABLE_LIMIT", cap)
        store = _harvest(decomposition, tmp_path / f"cap{cap}", 3, cofiring_min_count=3)
        with duckdb.connect(str(store), read_only=True) as con:
            tables[cap] = con.execute("SELECT * FROM cofiring ORDER BY component, other").fetchall()
    assert tables[None] and tables[None] == tables[HARVEST_CAP]


def test_task_removes_its_spills_and_a_rerun_after_a_crash_succeeds(
    decomposition: Path, brute_force: dict, tmp_path: Path, capped: dict[str, list], monkeypatch
) -> None:
    settings = HarvestSettings(**{**SETTINGS, "n_tasks": 1})
    path = shard_path(tmp_path, 0)
    # a killed attempt left its spill directory (with runs in it) and a partial temp shard
    stale_dir = path.with_name(f".{path.name}.99999.tmp-spill")
    stale_dir.mkdir(parents=True)
    (stale_dir / "spill-00000.bin").write_bytes(b"\0" * 160)
    stale_tmp = path.with_name(f".{path.name}.99999.tmp")
    stale_tmp.write_bytes(b"partial")
    # a failing attempt (after counting, while writing) removes its own spill directory
    import spd.harvest.task as task_module

    def failing_write(*args, **kwargs) -> None:
        assert any(d.is_dir() and any(d.iterdir()) for d in capped["spill_dirs"])  # runs on disk at this point
        raise OSError("disk gone")

    with monkeypatch.context() as m:
        m.setattr(task_module, "write_shard", failing_write)
        with pytest.raises(OSError, match="disk gone"):
            run_harvest_task(decomposition, tmp_path, settings, 0, seed=SEED, log=lambda _: None)
    assert not stale_dir.exists() and not stale_tmp.exists()  # the attempt's start removed what the crash left
    assert not [p for p in path.parent.iterdir() if "tmp" in p.name]  # and the failure its own spills
    # a crash leaves the spill directory behind; the rerun removes it and writes a complete shard
    stale_dir.mkdir()
    (stale_dir / "spill-00003.bin").write_bytes(b"\1" * 32)
    logged: list[str] = []
    run_harvest_task(decomposition, tmp_path, settings, 0, seed=SEED, log=logged.append)
    assert any(stale_dir.name in line for line in logged)
    assert not [p.name for p in path.parent.iterdir() if "tmp" in p.name]
    shard = read_shard(path)
    off_diagonal = brute_force["cofire"] - torch.diag(torch.diag(brute_force["cofire"]))
    C = off_diagonal.shape[0]
    assert torch.equal(_dense(C, [(shard.cofire_a, shard.cofire_b, shard.cofire_count)]), torch.triu(off_diagonal, 1))
