"""Harvest: exact counts for 1 and 4 tasks against a brute-force pass, uniform reservoirs, shards, the store API.

Real parts throughout: a tiny LM decomposition trained by the decompose stage, real torch on CPU, real
npz shards and a real DuckDB store.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from spd.data.batches import BatchConfig, BatchStream
from spd.harvest import (
    HarvestSettings,
    HarvestStore,
    ShardMissingError,
    counters,
    jit,
    merge_harvest,
    run_harvest_task,
)
from spd.harvest.accumulators import TaskAccumulator
from spd.harvest.activations import ActivationReader
from spd.harvest.batch_scan import (
    BatchEntries,
    Candidates,
    ScanRules,
    default_kernels,
    scan_batch,
    scan_batch_torch,
)
from spd.harvest.batch_scan_numba import scan_batch_numba
from spd.harvest.cofiring import CofiringCounter, SparsePairCounter, firing_lists, pair_keys_torch
from spd.harvest.counters import DenseCounter, DenseTokenFiringCounter, SparseCounter, SparseTokenFiringCounter
from spd.harvest.data import CorpusSlice
from spd.harvest.keys import (
    EMPTY_KEY,
    component_salts,
    firing_keys,
    firing_keys_py,
    hash64,
    hash64_py,
    magnitude_floor,
    magnitude_keys,
    position_hashes,
)
from spd.harvest.nonzero import flat_nonzero, split_flat_index
from spd.harvest.planted import feature_token_sets, match_rate, planted_feature_matches
from spd.harvest.reservoir import BatchSource, ExampleRows, ExampleSelection
from spd.harvest.shard import ShardData, read_shard, shard_path
from spd.harvest.task import slice_spec
from spd.harvest.top_m import CHUNK, top_m_indices
from spd.models import ComponentModel, load_decomposition, load_decomposition_corpus
from testkit.lm_fixtures import build_tiny_lm_decomposition

SEED = 1234
SETTINGS = {
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 24,
    "ci_threshold": 0.26,  # the tiny decomposition's CIs sit around 0.25: a threshold that splits them
    "context_tokens_per_side": 3,
    "examples_per_component": 7,
    "top_examples_per_component": 4,
    "output_top_m": 2,
}


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def _harvest(decomposition: Path, out_dir: Path, n_tasks: int, **overrides) -> Path:
    settings = HarvestSettings(**{**SETTINGS, "n_tasks": n_tasks, **overrides})
    for task in range(n_tasks):
        run_harvest_task(decomposition, out_dir, settings, task, seed=SEED, task_seed=task, log=lambda _: None)
    return merge_harvest(out_dir, n_tasks, decomposition, log=lambda _: None)


@pytest.fixture(scope="module")
def stores(decomposition: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return {n: _harvest(decomposition, tmp_path_factory.mktemp(f"harvest{n}"), n) for n in (1, 4)}


# --- building blocks ---------------------------------------------------------------------------------------


def test_keys_match_the_python_reference_and_spread_uniformly() -> None:
    gen = torch.Generator().manual_seed(0)
    xs = torch.randint(-(2**62), 2**62, (200,), generator=gen, dtype=torch.int64)
    assert [int(v) & (2**64 - 1) for v in hash64(xs)] == [hash64_py(int(x)) for x in xs]
    pos = torch.randint(0, 10**9, (200,), generator=gen)
    comp = torch.randint(0, 40_000, (200,), generator=gen)
    keys = firing_keys(77, pos, comp)
    assert keys.tolist() == [firing_keys_py(77, int(p), int(c)) for p, c in zip(pos, comp, strict=True)]
    many = firing_keys(3, torch.arange(100_000), torch.zeros(100_000, dtype=torch.int64))
    assert int(many.min()) >= 0 and int(many.max()) < 2**62
    deciles = torch.bincount((many // (2**62 // 10)).clamp(max=9), minlength=10)
    assert (deciles - 10_000).abs().max() < 500  # each decile holds ~10% of the keys


def test_components_firing_together_get_unrelated_samples() -> None:
    # every component's key is a bijection of the same position hash; the per-firing mixing round must still
    # make two components that fire at the same positions pick unrelated samples: the k smallest keys of two
    # components overlap as two independent uniform k-samples of n would (k^2 / n = 10 positions on average)
    n, k, n_comp = 100_000, 1000, 40
    positions = torch.arange(n)
    samples = [
        set(torch.topk(firing_keys(5, positions, torch.full((n,), c)), k, largest=False).indices.tolist())
        for c in range(n_comp)
    ]
    overlaps = torch.tensor([len(samples[a] & samples[b]) for a in range(n_comp) for b in range(a + 1, n_comp)])
    assert 8.5 < float(overlaps.float().mean()) < 11.5, overlaps
    assert int(overlaps.min()) >= 1 and int(overlaps.max()) <= 25, overlaps  # neither disjoint nor shared


def test_magnitude_keys_sort_by_absolute_value_then_tie_break() -> None:
    values = torch.tensor([0.5, -2.0, 1.0, -0.5, 0.0])
    tie = torch.tensor([10, 20, 30, 5, 1]) << 40
    order = torch.argsort(magnitude_keys(values, tie)).tolist()
    assert order == [1, 2, 3, 0, 4]  # |-2| > |1| > |0.5| (tie: smaller tie-break key first) > 0


@pytest.mark.parametrize(
    ("shape", "m"),
    [((4, 16, 1024), 3), ((64, 5003), 3), ((100, 300), 5), ((7, 1000), 1), ((50, 37), 3), ((64, 5000), 10)],
)
def test_top_m_indices_are_the_m_largest_of_each_row(shape: tuple[int, ...], m: int) -> None:
    # chunked (the chunk size does not divide 5003: a tail chunk) and fallback (V=37 is too small) paths
    gen = torch.Generator().manual_seed(len(shape) * 1000 + shape[-1])
    for logits in (torch.randn(*shape, generator=gen), torch.randint(0, 4, shape, generator=gen).float()):  # ties
        got = top_m_indices(logits, m)
        assert got.shape == (*shape[:-1], m)
        assert torch.equal(logits.gather(-1, got).sort(-1).values, logits.topk(m, -1).values.sort(-1).values)
        assert bool((got.sort(-1).values.diff(dim=-1) > 0).all())  # m distinct entries
    assert 5003 % CHUNK and 1000 % CHUNK  # two of the shapes above take the tail path


@pytest.mark.parametrize("shape", [(0, 7), (1, 1), (2048, 256), (300, 37)])
def test_flat_nonzero_lists_true_entries_like_torch(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    for density in (0.0, 0.03, 0.3, 1.0):
        mask = torch.rand(shape, generator=gen) < density
        for m in (mask, mask.T):  # contiguous and transposed (non-contiguous) memory
            flat = flat_nonzero(m)
            assert flat.dtype == torch.int64
            assert torch.equal(flat, m.reshape(-1).nonzero().squeeze(1))
            row, col = split_flat_index(flat, m.shape[1])
            expected_row, expected_col = m.nonzero(as_tuple=True)
            assert torch.equal(row, expected_row) and torch.equal(col, expected_col)


def test_magnitude_floor_is_the_smallest_value_a_key_can_beat() -> None:
    values = torch.tensor([0.5, -2.0, 1e-30, 0.0, 3.25])
    keys = magnitude_keys(values, torch.tensor([2**61, 5, 2**62 - 1, 7, 0]))
    assert torch.equal(magnitude_floor(keys), values.abs())
    assert float(magnitude_floor(torch.tensor([EMPTY_KEY]))[0]) == 0.0  # a free slot: anything can enter
    # below the floor a key is larger whatever its tie-break, so skipping those values loses no candidate
    below = magnitude_keys(torch.tensor([0.4999]), torch.tensor([0]))
    assert bool((below > magnitude_keys(torch.tensor([0.5]), torch.tensor([2**62 - 1]))).all())


@pytest.mark.parametrize("method", ["fp32", "int8", "sparse", "sparse-torch"])
@pytest.mark.parametrize("n_components", [5, 130, 300])  # below, across and beyond one 128-row matmul block
def test_cofiring_counts_pairs_above_the_diagonal_exactly(method: str, n_components: int) -> None:
    gen = torch.Generator().manual_seed(n_components)
    counter = CofiringCounter(n_components, "cpu", torch_only=method == "sparse-torch")
    counter.method = method.removesuffix("-torch")  # every way of counting must give the same exact counts
    expected = torch.zeros(n_components, n_components, dtype=torch.int64)
    for _ in range(3):
        firing = torch.rand(700, n_components, generator=gen) < 0.3
        counter.add(firing)
        expected += firing.long().T @ firing.long()
    a, b, n = counter.pairs()
    upper = torch.triu(torch.ones(n_components, n_components, dtype=torch.bool), diagonal=1) & (expected > 0)
    want_a, want_b = upper.nonzero(as_tuple=True)
    assert torch.equal(a.long(), want_a) and torch.equal(b.long(), want_b)
    assert torch.equal(n, expected[want_a, want_b])


def test_sparse_cofiring_grows_its_table_and_agrees_with_the_torch_pair_keys() -> None:
    """Rows with 0, 1 and many firings, a table that starts tiny and must double many times (and once for a row
    larger than half the table), against brute force and the torch reference of the loop."""
    gen = torch.Generator().manual_seed(3)
    C = 97
    counter = SparsePairCounter(C, capacity=16)
    expected = torch.zeros(C, C, dtype=torch.int64)
    for density in (0.0, 0.01, 0.2, 0.9):
        firing = torch.rand(50, C, generator=gen) < density
        counter.add(firing)
        expected += firing.long().T @ firing.long()
        offsets, comps = firing_lists(firing)
        keys = pair_keys_torch(offsets, comps, C)
        via_torch = torch.zeros(C * C, dtype=torch.int64).index_add_(0, keys, torch.ones_like(keys)).view(C, C)
        assert torch.equal(via_torch, torch.triu(firing.long().T @ firing.long(), diagonal=1))
    a, b, n = counter.pairs()
    want_a, want_b = (torch.triu(expected, diagonal=1) > 0).nonzero(as_tuple=True)
    assert torch.equal(a.long(), want_a) and torch.equal(b.long(), want_b) and torch.equal(n, expected[want_a, want_b])


def test_store_cofiring_equals_brute_force_when_counted_sparse(
    decomposition: Path, brute_force: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room for a dense table every task counts sparse; the store holds exactly the pairs whose total count
    over all tasks reaches cofiring_min_count (here 3: a pair counted twice in one task and once in another is
    kept), with their exact counts, in both orders."""
    monkeypatch.setattr("spd.harvest.cofiring.DENSE_TABLE_LIMIT", 0)
    store = _harvest(decomposition, tmp_path / "sparse", 3, cofiring_min_count=3)
    C = brute_force["input_counts"].shape[0]
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT DISTINCT cofiring_method FROM tasks").fetchall() == [("sparse",)]
        cofire = _sparse_table(con, "SELECT component, other, count FROM cofiring", (C, C))
    off_diagonal = brute_force["cofire"] - torch.diag(torch.diag(brute_force["cofire"]))
    expected = torch.where(off_diagonal >= 3, off_diagonal, 0)
    assert bool(((off_diagonal > 0) & (off_diagonal < 3)).any())  # the rule drops some pairs here
    assert torch.equal(cofire, expected)


def test_cofiring_picks_an_exact_method_on_the_first_batch() -> None:
    counter = CofiringCounter(40, "cpu")
    firing = torch.rand(256, 40) < 0.5
    counter.add(firing)
    assert counter.method in ("sparse", "fp32", "int8")
    _, _, n = counter.pairs()
    assert int(n.sum()) == int(torch.triu(firing.long().T @ firing.long(), diagonal=1).sum())


@pytest.mark.parametrize("n_rows", [1, 7, 256])
def test_the_first_batch_is_counted_sparse_in_two_halves_and_stays_exact(
    n_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The method is chosen on the first batch: its first half is counted untimed (kernel load, table growth), its
    second half timed against the dense products; whichever wins, the batch is counted once, exactly."""
    calls = []
    real_add = SparsePairCounter.add

    def add(self: SparsePairCounter, firing: torch.Tensor, lists=None) -> None:
        calls.append(firing.shape[0])
        real_add(self, firing, lists)

    monkeypatch.setattr(SparsePairCounter, "add", add)
    firing = torch.rand(n_rows, 40, generator=torch.Generator().manual_seed(n_rows)) < 0.5
    for winner in ("sparse", "int8"):  # the dense winner moves the first batch's sparse counts into its table
        calls.clear()
        monkeypatch.setattr("spd.harvest.cofiring.fastest", lambda timings, winner=winner: winner)
        counter = CofiringCounter(40, "cpu")
        counter.add(firing)
        assert counter.method == winner and calls == [n_rows // 2, n_rows - n_rows // 2]
        counter.add(firing)  # a second batch, counted by the chosen method
        a, b, n = counter.pairs()
        expected = 2 * torch.triu(firing.long().T @ firing.long(), diagonal=1)
        want_a, want_b = (expected > 0).nonzero(as_tuple=True)
        assert (
            torch.equal(a.long(), want_a) and torch.equal(b.long(), want_b) and torch.equal(n, expected[want_a, want_b])
        )


def test_corpus_slice_reads_exactly_the_batch_stream_shard(decomposition: Path) -> None:
    corpus = load_decomposition_corpus(decomposition)
    model = load_decomposition(decomposition)
    settings = HarvestSettings(**{**SETTINGS, "n_tasks": 3, "n_batches": 10})
    stream = BatchStream(corpus.tokens("train"), BatchConfig(seq_len=32, batch_size=8, dataset_seed=0, n_batches=10))
    seen = []
    for task in range(3):
        data = CorpusSlice(corpus, slice_spec(model.run_config, corpus, settings, task))
        expected = list(stream.iter_shard(task, 3))
        got = list(data)
        assert [b.index for b in got] == [b.index for b in expected]
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g.tokens, e.tokens) and torch.equal(g.starts, e.starts)
        seen += [b.index for b in got]
    assert sorted(seen) == list(range(10))  # disjoint and complete


@pytest.mark.parametrize("make", [lambda: SparseCounter(min_pending=50), lambda: DenseCounter(10**6)])
def test_counters_count_exactly(make) -> None:
    rng = random.Random(0)
    counter = make()
    truth: Counter[int] = Counter()
    for step in range(40):
        keys = [rng.randrange(10**6) if rng.random() < 0.1 else rng.randrange(300) for _ in range(rng.randrange(60))]
        if step % 2:
            counter.add(torch.tensor(keys, dtype=torch.int64))
        else:  # pre-aggregated (key, count) pairs, as the merge adds them
            pairs = Counter(keys)
            counter.add_counts(torch.tensor(list(pairs), dtype=torch.int64), torch.tensor(list(pairs.values())))
        truth.update(keys)
    assert dict(zip(counter.keys().tolist(), counter.counts().tolist(), strict=True)) == dict(truth)
    assert counter.keys().tolist() == sorted(truth)


def test_ci_written_into_blocks_equals_lower_leaky_ci_and_a_block_of_another_shape_is_refused() -> None:
    class OneLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(3, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    torch.manual_seed(0)
    model = ComponentModel(OneLinear(), {"a": 4})
    x = torch.randn(2, 7, 3)
    with torch.inference_mode():
        flat = torch.full((2, 7, 6), -5.0)  # the module's columns 1:5 of a wider tensor
        model.lower_leaky_ci_into({"a": x}, {"a": flat[..., 1:5]})
        assert torch.equal(flat[..., 1:5], model.lower_leaky_ci({"a": x})["a"])
        assert bool((flat[..., 0] == -5).all() and (flat[..., 5] == -5).all())  # its neighbours untouched
        with pytest.raises(ValueError, match=r"CI of shape \(2, 7, 4\) for an output block of \(14, 4\)"):
            model.lower_leaky_ci_into({"a": x}, {"a": torch.empty(14, 4)})


@pytest.mark.parametrize(("m", "C", "threshold"), [(1, 37, 0.4), (3, 37, 0.4), (3, 64, 0.95)])
def test_numba_scan_equals_the_torch_scan(m: int, C: int, threshold: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled CPU scan gives the torch scan's firings, candidates (same order) and counts; sums to fp32.
    C = 64 lists each row 8 flags at a time (most words without a firing at threshold 0.95); C = 37 entry by entry."""
    monkeypatch.setattr(counters, "EXACT_FP32_LIMIT", 700)  # the float32 count tables flush every other batch
    gen = torch.Generator().manual_seed(m)
    N, V, seed = 300, 23, 5
    salts = component_salts(seed, torch.arange(C))
    tables = {method: (DenseTokenFiringCounter(C, V), DenseTokenFiringCounter(C, V)) for method in ("torch", "numba")}
    for batch in range(4):
        ci, act = torch.rand(N, C, generator=gen), torch.randn(N, C, generator=gen)
        ci[:, 0], ci[:, 1] = 0.0, 1.0  # one component never fires, one always
        tokens = torch.randint(0, V, (N,), generator=gen)
        top_next = torch.stack([torch.randperm(V, generator=gen)[:m] for _ in range(N)])
        stream_position = torch.arange(N) + batch * N
        free = torch.rand(C, generator=gen) < 0.3  # components with free slots admit every firing
        rules = ScanRules(
            threshold,
            salts,
            uniform_threshold=torch.where(free, EMPTY_KEY, torch.randint(0, 2**61, (C,), generator=gen)),
            top_floor=torch.where(free, 0.0, torch.rand(C, generator=gen) * 2),
        )
        entries = BatchEntries(ci, act, tokens, top_next, position_hashes(seed, stream_position))
        scans = {method: scan_batch(method, entries, rules, *tables[method]) for method in tables}
        want, got = scans["torch"], scans["numba"]
        assert torch.equal(got.firing, want.firing) and torch.equal(want.firing, ci > threshold)
        torch.testing.assert_close(got.sums, want.sums, rtol=1e-5, atol=1e-4)
        assert torch.equal(want.sums[0], (ci > threshold).sum(0).float())
        assert torch.equal(got.sums[0], want.sums[0])
        offsets, listed = got.firing_lists  # the firings as CSR, what sparse co-firing counts pairs from
        assert torch.equal(offsets, torch.cat([torch.zeros(1, dtype=torch.int64), want.firing.sum(1).cumsum(0)]))
        assert torch.equal(listed, want.firing.nonzero(as_tuple=True)[1])
        for kind in ("uniform", "top"):
            for field in fields(Candidates):
                assert torch.equal(getattr(getattr(got, kind), field.name), getattr(getattr(want, kind), field.name))
        # the candidates by their definition, from the firing list and the one-call key function
        row, comp = want.firing.nonzero(as_tuple=True)
        keys, values = firing_keys(seed, stream_position[row], comp), act[row, comp]
        uniform = keys < rules.uniform_threshold[comp]
        top = values.abs() >= rules.top_floor[comp]
        assert 0 < int(uniform.sum()) < row.numel() and 0 < int(top.sum()) < row.numel()
        for candidates, where in ((want.uniform, uniform), (want.top, top)):
            assert torch.equal(candidates.token, row[where]) and torch.equal(candidates.comp, comp[where])
            assert torch.equal(candidates.key, keys[where]) and torch.equal(candidates.act, values[where])
    (torch_in, torch_out), (numba_in, numba_out) = tables["torch"], tables["numba"]
    for want_counter, got_counter in ((torch_in, numba_in), (torch_out, numba_out)):
        assert torch.equal(got_counter.keys(), want_counter.keys())
        assert torch.equal(got_counter.counts(), want_counter.counts())


def test_kernels_compile_where_nothing_is_writable_for_numbas_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    real_njit = jit.numba.njit

    def njit(*args, cache: bool = False, **kwargs):
        if cache:  # what numba raises when neither __pycache__ nor the user's cache directory is writable
            raise RuntimeError("cannot cache function 'add_one': no locator available for file 'x.py'")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(jit.numba, "njit", njit)

    def add_one(values):
        return values + 1

    assert jit.compiled(add_one)(np.arange(3)).tolist() == [1, 2, 3]


KERNEL_CACHE_SCRIPT = """
import json, torch
from spd.harvest.batch_scan import BatchEntries, ScanRules, scan_batch
from spd.harvest.batch_scan_numba import _scan
from spd.harvest.counters import DenseTokenFiringCounter
from spd.harvest.keys import EMPTY_KEY
N, C, V = 16, 4, 8
entries = BatchEntries(torch.rand(N, C), torch.randn(N, C), torch.randint(0, V, (N,)), torch.randint(0, V, (N, 2)),
                       torch.arange(N))
rules = ScanRules(0.5, torch.arange(C), torch.full((C,), EMPTY_KEY), torch.zeros(C))
scan_batch("numba", entries, rules, DenseTokenFiringCounter(C, V), DenseTokenFiringCounter(C, V))
stats = _scan.stats
print(json.dumps({"source": _scan.py_func.__code__.co_filename, "cache": stats.cache_path,
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def test_kernels_compiled_by_one_process_are_loaded_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numba's own disk cache (public `cache=True`, here under $NUMBA_CACHE_DIR): a process importing the same code
    loads the kernels another compiled."""
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    snapshot = tmp_path / "run" / "code"  # what a run's workers import
    shutil.copytree(repo / "spd", snapshot / "spd", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(snapshot)}
    found = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-P", "-c", KERNEL_CACHE_SCRIPT], capture_output=True, text=True, check=True, env=env
        )
        found.append(json.loads(run.stdout))
        assert found[-1]["source"].startswith(str(snapshot)), found[-1]  # the copy's kernels, not the checkout's
    assert (found[0]["misses"], found[0]["hits"]) == (1, 0)  # compiled once ...
    assert (found[1]["misses"], found[1]["hits"]) == (0, 1)  # ... and loaded by the next process
    assert found[0]["cache"] == found[1]["cache"]
    assert Path(found[0]["cache"]).is_relative_to(tmp_path / "cache")


FAULTS_SCRIPT = """
import resource, torch
from spd.harvest.malloc import keep_freed_memory
assert keep_freed_memory()
def batch():  # 128 MB of temporaries under the mmap threshold, two above it, and a small one after them, all freed
    for _ in range(3):
        temporaries = [torch.ones(2 << 20) for _ in range(16)]  # 8 MB each
        large = [torch.ones(10 << 20), torch.ones(35 << 20)]  # 40 and 140 MB: mapped afresh each time unless kept
        small = torch.ones(1000)
        del temporaries, large, small
batch()
batch()  # the heap reaches its layout within two batches
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    # fresh processes: glibc's own thresholds depend on the allocation history and the address-space layout;
    # without keep_freed_memory, 7 of 12 runs of this script here re-faulted 258K-295K pages over the three measured
    # batches (the others none): three runs all pass by chance ~7% of the time; with it, 40 of 40 runs faulted none
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, check=True)
        assert int(run.stdout) < 100, run.stdout


def test_kernels_are_numba_on_the_cpu_with_dense_token_counters_and_torch_otherwise() -> None:
    dense, sparse = DenseTokenFiringCounter(4, 8), SparseTokenFiringCounter(4, 8)
    assert default_kernels(torch.device("cpu"), (dense, dense)) == "numba"
    assert default_kernels(torch.device("cpu"), (dense, sparse)) == "torch"  # the kernel adds into dense tables only
    assert default_kernels(torch.device("cuda"), (dense, dense)) == "torch"
    with pytest.raises(TypeError, match="dense token counters"):
        scan_batch_numba(
            BatchEntries(torch.rand(2, 4), torch.rand(2, 4), torch.zeros(2, dtype=torch.int64),
                         torch.zeros(2, 1, dtype=torch.int64), torch.arange(2)),
            ScanRules(0.5, torch.arange(4), torch.full((4,), EMPTY_KEY), torch.zeros(4)),
            sparse, sparse,
        )  # fmt: skip


def test_both_scans_list_the_firings_as_csr_rows() -> None:
    """What sparse co-firing reads instead of a nonzero: each row's firing components, ascending, rows in order
    (rows with no firing included), the same from both scans and from the bool firing matrix."""
    gen = torch.Generator().manual_seed(5)
    N, C, V = 40, 23, 9
    ci = torch.rand(N, C, generator=gen) * (torch.rand(N, 1, generator=gen) > 0.3)  # about 30% of rows fire nowhere
    entries = BatchEntries(ci, torch.randn(N, C, generator=gen), torch.randint(0, V, (N,), generator=gen),
                           torch.randint(0, V, (N, 2), generator=gen), torch.arange(N))  # fmt: skip
    rules = ScanRules(0.6, torch.arange(C), torch.full((C,), EMPTY_KEY), torch.zeros(C))
    scans = [scan(entries, rules, DenseTokenFiringCounter(C, V), DenseTokenFiringCounter(C, V))
             for scan in (scan_batch_numba, scan_batch_torch)]  # fmt: skip
    want_offsets, want_comps = firing_lists(ci > 0.6)
    assert int(want_offsets[-1]) == int((ci > 0.6).sum()) > 0 and bool((want_offsets.diff() == 0).any())
    for scan in scans:
        assert scan.firing_lists is not None
        offsets, comps = scan.firing_lists
        assert torch.equal(offsets, want_offsets) and torch.equal(comps.long(), want_comps.long())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"examples_per_component": 1, "top_examples_per_component": 0, "context_tokens_per_side": 0, "output_top_m": 1},
    ],
)
def test_numba_and_torch_scans_give_the_same_shard(decomposition: Path, overrides: dict) -> None:
    model = load_decomposition(decomposition)
    corpus = load_decomposition_corpus(decomposition)
    settings = HarvestSettings(**{**SETTINGS, **overrides})
    spec = slice_spec(model.run_config, corpus, settings, 0)
    reader = ActivationReader(model, settings.output_top_m)
    shards = {}
    for method in ("torch", "numba"):
        acc = TaskAccumulator(reader.n_components, corpus.vocab_size, settings, SEED, "cpu", kernels=method)
        for batch in CorpusSlice(corpus, spec):
            acc.process(batch.index, batch.starts, spec.seq_len, reader(batch.tokens))
        shards[method] = acc.to_shard({})
    assert TaskAccumulator(reader.n_components, corpus.vocab_size, settings, SEED, "cpu").kernels == "numba"
    want, got = shards["torch"], shards["numba"]
    assert int(want.firing_count.sum()) > 0 and want.uniform_rows.key.numel() > 0
    for field in fields(ShardData):
        a, b = getattr(want, field.name), getattr(got, field.name)
        if field.name == "sums":
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-6)
        elif isinstance(a, ExampleRows):
            assert all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(ExampleRows)), field.name
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), field.name


@pytest.mark.parametrize("counter_class", [DenseTokenFiringCounter, SparseTokenFiringCounter])
def test_token_firing_counters_count_exactly(counter_class, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of counting (component, token) firings agree with a plain loop, across float32 flushes."""
    monkeypatch.setattr(counters, "EXACT_FP32_LIMIT", 100)  # flush the dense float32 window every few batches
    gen = torch.Generator().manual_seed(3)
    C, V, m = 7, 11, 2
    counter = counter_class(C, V)
    truth: Counter[tuple[int, int]] = Counter()
    for _ in range(25):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        firing = torch.rand(n, C, generator=gen) < 0.3
        tokens = torch.stack([torch.randperm(V, generator=gen)[:m] for _ in range(n)])  # m distinct per position
        row, comp = firing.nonzero(as_tuple=True)
        counter.add(tokens, firing.float(), row, comp)
        for r, c in zip(row.tolist(), comp.tolist(), strict=True):
            truth.update((c, t) for t in tokens[r].tolist())
    keys = counter.keys().tolist()
    assert keys == sorted(c * V + t for c, t in truth)
    assert dict(zip(keys, counter.counts().tolist(), strict=True)) == {c * V + t: n for (c, t), n in truth.items()}


def _rows(keys: torch.Tensor, tag: torch.Tensor, window: int = 3) -> ExampleRows:
    n = keys.numel()
    return ExampleRows(
        key=keys,
        tokens=tag.to(torch.int32).unsqueeze(1).repeat(1, window),
        ci=torch.zeros(n, window),
        act=tag.float().unsqueeze(1).repeat(1, window),
        sequence=tag,
        position=torch.zeros(n, dtype=torch.int64),
        batch=torch.zeros(n, dtype=torch.int64),
    )


def test_compiled_offer_keeps_what_queue_and_fold_keep() -> None:
    """The compiled CPU offer and the torch queue-and-fold end with the same examples, windows and provenance,
    over batches that fill the selections and then replace part of them, with a torch offer in between."""
    gen = torch.Generator().manual_seed(7)
    C, k, B, S, side = 9, 5, 4, 16, 2
    selections = {compiled: ExampleSelection(C, k, 2 * side + 1, fold_size=11) for compiled in (True, False)}
    for batch in range(12):
        tokens = torch.randint(0, 50, (B, S), generator=gen)
        ci, act = torch.rand(B * S, C, generator=gen), torch.randn(B * S, C, generator=gen)
        source = BatchSource(tokens, ci, act, torch.arange(B) * S + batch * B * S, S, batch, side)
        n = int(torch.randint(0, 30, (1,), generator=gen))
        comp = torch.randint(0, C - 1, (n,), generator=gen)  # the last component is never offered anything
        token, key = torch.randint(0, B * S, (n,), generator=gen), torch.randint(0, 2**62, (n,), generator=gen)
        for compiled, selection in selections.items():
            # batch 6 goes through the torch queue in both: the compiled one must fold it in before its next offer
            selection.offer_firings(comp, key, token, source, compiled and batch != 6)
    filled = selections[True].filled()
    assert int(filled[-1]) == 0 and int(filled.max()) == k and bool((filled[:-1] > 0).all())
    (got_comp, got_rank, got), (want_comp, want_rank, want) = (s.flat() for s in selections.values())
    assert torch.equal(got_comp, want_comp) and torch.equal(got_rank, want_rank)
    for field in fields(ExampleRows):
        assert torch.equal(getattr(got, field.name), getattr(want, field.name)), field.name
    assert torch.equal(selections[True].threshold, selections[False].threshold)


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e3
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="resident memory read from Linux /proc")
def test_example_slots_are_resident_only_for_components_that_fire() -> None:
    """50K components x 100 slots x 21-token windows: 1.38 GB of slots if filled up front; only the keys (40 MB)
    and the slots of the components that got examples become resident, and those read back exactly."""
    C, k, window = 50_000, 100, 21
    before = _resident_mb()
    selection = ExampleSelection(C, k, window)
    after_alloc = _resident_mb()
    keys = torch.arange(3 * k, dtype=torch.int64) * 7919 % 1_000_003  # distinct
    comp = torch.tensor([17, 25_000, 49_999]).repeat_interleave(k)
    tags = torch.arange(3 * k)
    selection.offer_rows(comp, _rows(keys, tags, window))
    after_offer = _resident_mb()
    full_mb = C * k * (window * 12 + 32) / 1e6
    assert after_alloc - before < 0.1 * full_mb, (before, after_alloc)
    assert after_offer - before < 0.1 * full_mb, (before, after_offer)
    got_comp, _, got = selection.flat()
    assert got_comp.unique().tolist() == [17, 25_000, 49_999]
    assert sorted(got.sequence.tolist()) == tags.tolist()  # each example's provenance is the one offered
    assert (got.tokens == got.sequence.unsqueeze(1)).all() and (got.act == got.sequence.unsqueeze(1)).all()
    assert int(selection.filled().sum()) == 3 * k


def test_selection_keeps_the_k_smallest_keys_per_component_and_merges_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    C, k = 6, 5
    parts = [ExampleSelection(C, k, 3), ExampleSelection(C, k, 3)]
    everything: list[tuple[int, int, int]] = []
    tag = 0
    for step in range(30):
        n = int(torch.randint(0, 40, (1,), generator=gen))
        comp = torch.randint(0, C - 1, (n,), generator=gen)  # the last component never fires
        keys = torch.randint(0, 2**62, (n,), generator=gen)
        tags = torch.arange(tag, tag + n)
        tag += n
        rows = _rows(keys, tags)
        fetched: list[int] = []

        def fetch(idx: torch.Tensor, rows: ExampleRows = rows, fetched: list[int] = fetched) -> ExampleRows:
            fetched.extend(idx.tolist())
            return rows.index(idx)

        parts[step % 2].offer(comp, keys, fetch)
        assert len(fetched) == len(set(fetched))  # a candidate's window is extracted at most once
        # ... and only when it is among the k smallest keys its component got in this offer
        for i in fetched:
            assert int(((comp == comp[i]) & (keys < keys[i])).sum()) < k
        everything += list(zip(comp.tolist(), keys.tolist(), tags.tolist(), strict=True))
    merged = ExampleSelection(C, k, 3)
    for part in parts:
        comp, _, rows = part.flat()
        merged.offer_rows(comp, rows)
    comp, rank, rows = merged.flat()
    for c in range(C):
        expected = sorted((key, t) for cc, key, t in everything if cc == c)[:k]
        mine = comp == c
        assert list(zip(rows.key[mine].tolist(), rows.sequence[mine].tolist(), strict=True)) == expected
        assert rank[mine].tolist() == list(range(len(expected)))
        assert (rows.tokens[mine] == rows.sequence[mine].unsqueeze(1)).all()  # payload moved with its key
    assert merged.filled().tolist() == [min(k, sum(cc == c for cc, _, _ in everything)) for c in range(C)]


def _chi2_sf_even_dof(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution for an even number of degrees of freedom."""
    m = dof // 2
    term, total = 1.0, 0.0
    for i in range(m):
        if i:
            term *= (x / 2) / i
        total += term
    return math.exp(-x / 2) * total


def _selection_frequencies(cap_per_batch: int | None) -> list[int]:
    """How often each of 21 firings is selected (k = 4) over 3000 independent trials, with the 21 firings
    spread very unevenly over 4 tasks and their batches. Trials are components (independent keys)."""
    trials, k = 3000, 4
    layout = [[[0], [1, 2]], [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]], [[15], [16], [17]], [[18, 19, 20]]]
    merged = ExampleSelection(trials, k, 1)
    for task in layout:
        part = ExampleSelection(trials, k, 1)
        for batch in task:
            pos = torch.tensor(batch).repeat(trials)
            comp = torch.arange(trials).repeat_interleave(len(batch))
            keys = firing_keys(SEED, pos, comp)
            if cap_per_batch is not None:  # the reference's per-batch cap: only the smallest key per batch
                keep = torch.zeros_like(keys, dtype=torch.bool)
                keep[torch.arange(trials) * len(batch) + keys.view(trials, len(batch)).argmin(1)] = True
                pos, comp, keys = pos[keep], comp[keep], keys[keep]
            part.offer(comp, keys, lambda idx, pos=pos, keys=keys: _rows(keys[idx], pos[idx], 1))
        comp, _, rows = part.flat()
        merged.offer_rows(comp, rows)
    _, _, rows = merged.flat()
    return torch.bincount(rows.sequence, minlength=21).tolist()


def test_merged_reservoirs_are_uniform_over_all_firings() -> None:
    counts = _selection_frequencies(cap_per_batch=None)
    expected = 3000 * 4 / 21
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert _chi2_sf_even_dof(chi2, 20) > 0.001, counts
    # the same test rejects a sampler that is uniform over batches rather than firings
    biased = _selection_frequencies(cap_per_batch=1)
    chi2_biased = sum((c - expected) ** 2 / expected for c in biased)
    assert _chi2_sf_even_dof(chi2_biased, 20) < 1e-9, biased


# --- exactness against a brute-force single pass ----------------------------------------------------------


@pytest.fixture(scope="module")
def brute_force(decomposition: Path) -> dict:
    """Every statistic computed directly from all batches of the stream in one plain pass."""
    model = load_decomposition(decomposition)
    corpus = load_decomposition_corpus(decomposition)
    stream = BatchStream(corpus.tokens("train"), BatchConfig(seq_len=32, batch_size=8, dataset_seed=0, n_batches=24))
    reader = ActivationReader(model, SETTINGS["output_top_m"])
    C, V = reader.n_components, corpus.vocab_size
    firing_count = torch.zeros(C, dtype=torch.int64)
    ci_sum = torch.zeros(C, dtype=torch.float64)
    input_counts = torch.zeros(C, V, dtype=torch.int64)
    output_counts = torch.zeros(C, V, dtype=torch.int64)
    cofire = torch.zeros(C, C, dtype=torch.int64)
    firings = []
    for batch in stream:
        with torch.inference_mode():
            logits, inputs = model.forward_with_inputs(batch.tokens)
            ci = torch.cat(
                [model.causal_importances(inputs).lower_leaky[p] for p in model.module_to_c], dim=-1
            ).reshape(-1, C)
            act = torch.cat(
                [
                    model.components(p).component_acts(inputs[p]) * model.components(p).U.norm(dim=1)
                    for p in model.module_to_c
                ],
                dim=-1,
            ).reshape(-1, C)
        fires = ci > SETTINGS["ci_threshold"]
        tokens = batch.tokens.reshape(-1)
        top = logits.topk(SETTINGS["output_top_m"], dim=-1).indices.reshape(-1, SETTINGS["output_top_m"])
        positions = (batch.starts.unsqueeze(1) + torch.arange(32)).reshape(-1)
        firing_count += fires.sum(0)
        ci_sum += ci.double().sum(0)
        fi = fires.long()
        cofire += fi.T @ fi
        for t, c in fires.nonzero().tolist():
            input_counts[c, tokens[t]] += 1
            for o in top[t].tolist():
                output_counts[c, o] += 1
            firings.append((c, int(positions[t]), float(act[t, c])))
    comp = torch.tensor([f[0] for f in firings])
    pos = torch.tensor([f[1] for f in firings])
    keys = firing_keys(SEED, pos, comp).tolist()
    mkeys = magnitude_keys(torch.tensor([f[2] for f in firings]), torch.tensor(keys)).tolist()
    uniform, top_sets = {}, {}
    for c in range(C):
        mine = [i for i, f in enumerate(firings) if f[0] == c]
        uniform[c] = sorted((keys[i], firings[i][1]) for i in mine)[: SETTINGS["examples_per_component"]]
        top_sets[c] = sorted((mkeys[i], firings[i][1]) for i in mine)[: SETTINGS["top_examples_per_component"]]
    return {
        "n_tokens": 24 * 8 * 32,
        "firing_count": firing_count,
        "ci_sum": ci_sum,
        "input_counts": input_counts,
        "output_counts": output_counts,
        "cofire": cofire,
        "uniform": uniform,
        "top": top_sets,
        "stream": corpus.tokens("train"),
    }


def _sparse_table(con: duckdb.DuckDBPyConnection, sql: str, shape: tuple[int, int]) -> torch.Tensor:
    dense = torch.zeros(shape, dtype=torch.int64)
    for a, b, n in con.execute(sql).fetchall():
        dense[a, b] = n
    return dense


@pytest.mark.parametrize("n_tasks", [1, 4])
def test_counts_equal_a_brute_force_single_pass(stores: dict[int, Path], brute_force: dict, n_tasks: int) -> None:
    bf = brute_force
    C, V = bf["input_counts"].shape
    with duckdb.connect(str(stores[n_tasks]), read_only=True) as con:
        assert con.execute("SELECT n_tokens, n_tasks FROM provenance").fetchone() == (bf["n_tokens"], n_tasks)
        rows = con.execute("SELECT firing_count, mean_ci FROM components ORDER BY component").fetchall()
        assert [r[0] for r in rows] == bf["firing_count"].tolist()
        assert torch.allclose(
            torch.tensor([r[1] for r in rows], dtype=torch.float64), bf["ci_sum"] / bf["n_tokens"], rtol=1e-6
        )
        inputs = _sparse_table(con, "SELECT component, token, count FROM token_stats WHERE direction='input'", (C, V))
        outputs = _sparse_table(con, "SELECT component, token, count FROM token_stats WHERE direction='output'", (C, V))
        assert torch.equal(inputs, bf["input_counts"]) and torch.equal(outputs, bf["output_counts"])
        cofire = _sparse_table(con, "SELECT component, other, count FROM cofiring", (C, C))
        off_diagonal = bf["cofire"] - torch.diag(torch.diag(bf["cofire"]))
        assert torch.equal(cofire, off_diagonal)
        for kind in ("uniform", "top"):
            got = con.execute(
                f"SELECT component, sample_key, stream_position FROM examples WHERE kind='{kind}' ORDER BY component, rank"
            ).fetchall()
            expected = [(c, key, p) for c in range(C) for key, p in bf[kind][c]]
            assert got == expected
        # windows hold the stream's tokens around the firing, the firing at `center`
        for tokens, center, stream_position in con.execute(
            "SELECT tokens, center, stream_position FROM examples USING SAMPLE 30 ROWS"
        ).fetchall():
            start = stream_position - center
            assert tokens == bf["stream"][start : start + len(tokens)].tolist()


def test_store_is_independent_of_the_number_of_tasks(stores: dict[int, Path]) -> None:
    exact = {
        "examples": "SELECT * EXCLUDE (ci, act) FROM examples ORDER BY component, kind, rank",
        "token_stats": "SELECT * FROM token_stats ORDER BY component, direction, token",
        "cofiring": "SELECT * FROM cofiring ORDER BY component, other",
        "vocab": "SELECT * FROM vocab ORDER BY token",
        "counts": "SELECT component, key, firing_count, n_examples, n_top_examples FROM components ORDER BY component",
    }
    with duckdb.connect(str(stores[1]), read_only=True) as one, duckdb.connect(str(stores[4]), read_only=True) as four:
        for name, sql in exact.items():
            assert one.execute(sql).fetchall() == four.execute(sql).fetchall(), name
        assert (
            one.execute("SELECT ci, act FROM examples ORDER BY component, kind, rank").fetchall()
            == four.execute("SELECT ci, act FROM examples ORDER BY component, kind, rank").fetchall()
        )
        assert four.execute("SELECT count(*), sum(n_batches) FROM tasks").fetchone() == (4, 24)
        methods = four.execute("SELECT DISTINCT cofiring_method FROM tasks").fetchall()
        assert methods and {m for (m,) in methods} <= {"sparse", "int8", "fp32"}
        assert four.execute("SELECT DISTINCT kernels FROM tasks").fetchall() == [("numba",)]  # CPU tasks


# --- shards, merge, store -----------------------------------------------------------------------------


def test_shards_are_sparse_and_record_their_slice(stores: dict[int, Path]) -> None:
    shard = read_shard(shard_path(stores[4].parent, 2))
    assert (
        shard.meta["task"] == 2 and shard.meta["slice"]["batch_start"] == 2 and shard.meta["slice"]["batch_step"] == 4
    )
    assert shard.meta["n_batches"] == 6 and len(shard.sequences) == 6 * 8
    assert shard.meta["cofiring_method"] in ("sparse", "int8", "fp32")  # the exact method this task timed fastest
    assert shard.meta["kernels"] == "numba"  # compiled scan and selections on the CPU (torch on other devices)
    assert shard.input_count.dtype == torch.int64 and shard.input_component.dtype == torch.int32
    assert bool((shard.input_count > 0).all()) and bool((shard.cofire_a < shard.cofire_b).all())
    assert not list(shard_path(stores[4].parent, 2).parent.glob(".*.tmp"))


def test_merge_refuses_with_a_shard_missing(decomposition: Path, tmp_path: Path) -> None:
    settings = HarvestSettings(**{**SETTINGS, "n_tasks": 3, "n_batches": 6})
    for task in (0, 2):
        run_harvest_task(decomposition, tmp_path, settings, task, seed=SEED, log=lambda _: None)
    with pytest.raises(ShardMissingError, match=r"shard-00001\.npz \(task 1\)"):
        merge_harvest(tmp_path, 3, decomposition, log=lambda _: None)
    assert not (tmp_path / "harvest.duckdb").exists()


def test_store_file_is_closed_and_opened_read_only(stores: dict[int, Path]) -> None:
    path = stores[4]
    assert sorted(p.name for p in path.parent.iterdir()) == ["harvest.duckdb", "shards"]  # no .wal, no temp
    with HarvestStore.open(path.parent) as store, pytest.raises(duckdb.Error, match="read-only"):
        store._con.execute("DELETE FROM components")


def test_store_api(stores: dict[int, Path]) -> None:
    with HarvestStore.open(stores[4].parent) as store:
        prov = store.provenance()
        assert prov["n_tokens"] == 24 * 8 * 32 and prov["settings"]["n_tasks"] == 4
        assert prov["code"]["spd_sources_sha256"] and prov["decomposition"]["model_sha256"]
        summaries = store.summaries()
        assert len(summaries) == 32 and [s.component for s in summaries] == list(range(32))
        alive = store.alive_components(min_density=0.05)
        densities = [s.firing_density for s in alive]
        assert densities == sorted(densities, reverse=True) and all(d > 0.05 for d in densities)
        assert {s.component for s in summaries if s.firing_density > 0.05} == {s.component for s in alive}
        c = alive[len(alive) // 2]
        assert store.summary(c.key) == c
        examples = store.examples(c.key)
        assert len(examples) == c.n_examples == min(c.firing_count, 7)
        assert all(e.component == c.component for e in examples) and [e.rank for e in examples] == list(
            range(len(examples))
        )
        for e in examples:
            assert e.ci[e.center] > store.ci_threshold and e.firings(store.ci_threshold)[e.center]
            assert len(e.tokens) == len(e.ci) == len(e.act) <= 7
        top = store.examples(c.component, kind="top")
        magnitudes = [abs(e.act[e.center]) for e in top]
        assert magnitudes == sorted(magnitudes, reverse=True)
        for direction in ("input", "output"):
            best = store.token_stats(c.component, direction, by="pmi", top_k=5)
            worst = store.token_stats(c.component, direction, by="pmi", top_k=5, bottom=True)
            assert best and worst and all(math.isfinite(t.pmi) for t in best + worst)
            assert best[0].pmi >= best[-1].pmi and worst[0].pmi <= worst[-1].pmi and worst[0].pmi <= best[0].pmi
            for t in best:
                assert t.recall == pytest.approx(t.count / c.firing_count)
                assert t.pmi == pytest.approx(math.log(t.count * store.n_tokens / (c.firing_count * t.total)))
        partners = store.cofiring(c.component, by="jaccard", top_k=3)
        assert partners and all(p.other != c.component for p in partners)
        assert partners[0].jaccard == pytest.approx(
            partners[0].count / (partners[0].count_self + partners[0].count_other - partners[0].count)
        )


def test_density_matched_sampling(stores: dict[int, Path]) -> None:
    with HarvestStore.open(stores[4]) as store:
        alive = store.alive_components()
        c = alive[len(alive) // 2]
        donors = store.density_matched_components(c.component, rel_tol=0.5)
        assert c.component not in donors
        for d in donors:
            assert abs(store.summary(d).firing_density - c.firing_density) <= 0.5 * c.firing_density
        picks = store.sample_density_matched_examples(c.component, n=6, rel_tol=0.5, seed=3)
        assert len(picks) == (6 if donors else 0)
        assert all(p.component in donors for p in picks)
        assert picks == store.sample_density_matched_examples(c.component, n=6, rel_tol=0.5, seed=3)
        assert store.sample_density_matched_examples(c.component, n=2, rel_tol=0.0) == [] or all(
            store.summary(p.component).firing_density == c.firing_density
            for p in store.sample_density_matched_examples(c.component, n=2, rel_tol=0.0)
        )
        same_layer = store.density_matched_components(c.component, rel_tol=10.0, exclude_same_layer=True)
        assert all(store.summary(d).layer != c.layer for d in same_layer)


def test_rerun_task_reproduces_its_shard_and_cleans_its_temp(decomposition: Path, tmp_path: Path) -> None:
    settings = HarvestSettings(**{**SETTINGS, "n_tasks": 2, "n_batches": 4})
    first = run_harvest_task(decomposition, tmp_path, settings, 1, seed=SEED, log=lambda _: None)
    before = read_shard(first)
    stale = first.with_name(f".{first.name}.99999.tmp")
    stale.write_bytes(b"partial")
    os.utime(stale)
    run_harvest_task(decomposition, tmp_path, settings, 1, seed=SEED, log=lambda _: None)
    after = read_shard(first)
    assert not stale.exists()
    assert torch.equal(before.input_count, after.input_count) and torch.equal(
        before.uniform_rows.key, after.uniform_rows.key
    )
    assert torch.equal(before.uniform_rows.ci, after.uniform_rows.ci)


# --- planted-feature match metric ---------------------------------------------------------------------


def test_feature_token_sets_come_from_the_planted_occurrences(decomposition: Path) -> None:
    corpus = load_decomposition_corpus(decomposition)
    sets = feature_token_sets(corpus)
    assert set(sets) == {f["id"] for f in corpus.catalogue["features"]}
    successor = corpus.feature("fixed_successor")["words"]
    assert {ids[0] for ids in successor.values() if len(ids) == 1} <= sets["fixed_successor"]
    tokenizer = corpus.tokenizer
    assert sets["number"] and all(tokenizer.decode([t]).strip().isdigit() for t in sets["number"])


def test_planted_feature_matching_rule(stores: dict[int, Path]) -> None:
    with HarvestStore.open(stores[1]) as store:
        c = store.alive_components(min_firings=10)[0]
        top = [t.token for t in store.token_stats(c.component, "input", by="pmi", top_k=3, min_count=5)]
        assert len(top) == 3
        never = set(range(store.provenance()["vocab_size"])) - {
            t.token for s in store.alive_components() for t in store.token_stats(s.component, "input", top_k=None)
        }
        never -= {
            t.token for s in store.alive_components() for t in store.token_stats(s.component, "output", top_k=None)
        }
        assert len(never) >= 3  # tokens no component ever fired on (the tiny corpus has plenty)
        token_sets = {"planted": set(top), "partial": {top[0], *never}, "absent": never}
        matches = {m.feature: m for m in planted_feature_matches(store, token_sets, top_k=3, min_count=5)}
    assert matches["planted"].matched and matches["planted"].direction in ("input", "output")
    assert not matches["partial"].matched and not matches["absent"].matched
    assert match_rate(list(matches.values())) == pytest.approx(1 / 3)


def test_autocast_bf16_reader_is_off_by_default_and_close_when_on(decomposition: Path) -> None:
    """HarvestSettings.autocast_bf16 (issue 24): off by default; on, the forwards run in bfloat16 and the batch's
    CIs and activations come back as fp32 tensors close to the fp32 ones."""
    assert HarvestSettings().autocast_bf16 is False
    model = load_decomposition(decomposition)
    corpus = load_decomposition_corpus(decomposition)
    settings = HarvestSettings(**SETTINGS)
    batch = next(iter(CorpusSlice(corpus, slice_spec(model.run_config, corpus, settings, 0))))
    exact = ActivationReader(model, settings.output_top_m)(batch.tokens)
    bf16 = ActivationReader(model, settings.output_top_m, autocast_bf16=True)(batch.tokens)
    assert bf16.ci.dtype == torch.float32 and bf16.act.dtype == torch.float32
    assert not torch.equal(bf16.act, exact.act)  # the forwards really ran in bfloat16
    assert (bf16.ci - exact.ci).abs().max() < 0.05
    assert (bf16.act - exact.act).abs().max() < 0.05 * exact.act.abs().max()
