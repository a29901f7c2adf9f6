"""Dataset attributions on a real tiny LM decomposition: exactness against brute-force autograd, the stage's
array + merge contract (1 task == 4 tasks, empty task, missing shard), alive masks and the read API.

Brute force: the 1-layer tiny LM is written out by hand (its own submodules, no hooks), every decomposed
module's leaf is an explicit input, and the full per-position Jacobian of every target (component
activations and *logits*, not the residual) is taken with torch.autograd.functional.jacobian, then
contracted with the activations. Tolerances: float64 accumulator vs float64 brute force, |diff| <= 1e-9 x
the largest value; the float32 stage pipeline (shard -> merge -> store) vs float64 brute force, |diff| <=
1e-4 x the largest value of the block + 1e-4 relative.
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import duckdb
import pytest
import torch
from torch.nn import functional as F

from spd.attributions import (
    AttributionAccumulator,
    AttributionSettings,
    AttributionsStore,
    Layer,
    Node,
    alive_from_harvest,
    all_alive,
    build_layout,
    load_shard,
    merge_shards,
)
from spd.attributions.data import attribution_batches
from spd.attributions.endpoints import unembedding_matrix
from spd.duckdb_store import create_table
from spd.harvest.schema import TABLES as HARVEST_TABLES
from spd.models import MaskInfo, load_decomposition
from spd.shard_checksums import write_checksum
from stages.attributions import STAGE, AttributionsConfig
from stages.base import StageContext
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline

UP, DOWN = "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"
TOK, OUT = "token:embed", "output:lm_head"
SMALL = {"seq_len": 8, "batch_size": 2, "n_batches": 3, "top_k": 400}  # top_k > every layer: all edges kept


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomp"))


def _run_stage(decomposition: Path, out_dir: Path, n_tasks: int, harvest: Path | None = None, **settings) -> Path:
    """Run every task then the merge in-process, exactly as the worker calls them."""
    config = AttributionsConfig(n_tasks=n_tasks, **{**SMALL, **settings})
    upstreams = {"decompose": decomposition} | ({"harvest": harvest} if harvest else {})
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage="attributions", out_dir=out_dir, upstream_dirs=upstreams, num_tasks=n_tasks, seed=3)
    assert STAGE.num_tasks(config) == n_tasks
    for i in range(n_tasks):
        STAGE.run_task(config, ctx, i)
    STAGE.merge(config, ctx)
    return out_dir / "attributions.duckdb"


# --- brute force ---------------------------------------------------------------------------------------


def _explicit_forward(model, emb, up_leaf, down_leaf):
    """The 1-layer tiny LM by hand, with each decomposed module's output computed from an explicit leaf."""
    target = model.target_model
    block = target.layers[0]
    up, down = model.components(UP), model.components(DOWN)
    assert up.bias is None and down.bias is None
    x1 = emb + block.attn(block.attn_norm(emb))
    h_up = block.mlp_norm(x1) @ up.V
    h_down = F.gelu(up_leaf @ up.U, approximate="tanh") @ down.V
    logits = target.lm_head(target.final_norm(x1 + down_leaf @ down.U))
    return h_up, h_down, logits


def _brute_force(model, batches: list[torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """Sums over batches of sum_{b,p,p'} J[b,p,t ; b,p',s] A[b,p',s] for every (source, target) layer pair."""
    vocab = model.target_model.embed.num_embeddings
    totals: dict[tuple[str, str], torch.Tensor] = {}
    for tokens in batches:
        emb = model.target_model.embed(tokens)
        zero = torch.zeros(*tokens.shape, model.module_to_c[UP], dtype=emb.dtype)
        h_up = _explicit_forward(model, emb, zero, zero)[0]
        h_down = _explicit_forward(model, emb, h_up, zero)[1]
        jac = torch.autograd.functional.jacobian(
            lambda e, u, d: _explicit_forward(model, e, u, d), (emb, h_up, h_down), vectorize=True
        )
        one_hot = F.one_hot(tokens, vocab).to(emb.dtype)
        for t_pos, t_name in enumerate((f"component:{UP}", f"component:{DOWN}", OUT)):
            per_token = torch.einsum("bptcqd,cqd->tcq", jac[t_pos][0], emb)
            blocks = {
                TOK: torch.einsum("tcq,cqv->vt", per_token, one_hot),
                f"component:{UP}": torch.einsum("bptcqs,cqs->st", jac[t_pos][1], h_up),
                f"component:{DOWN}": torch.einsum("bptcqs,cqs->st", jac[t_pos][2], h_down),
            }
            for s_name, block in blocks.items():
                totals[(s_name, t_name)] = totals.get((s_name, t_name), 0) + block
    return totals


def _double_model(decomposition: Path):
    model = load_decomposition(decomposition).double()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def stream_batches(decomposition: Path) -> list[torch.Tensor]:
    """The windows the stage processes with SMALL settings (3 batches of 2 x 8 tokens)."""
    model = load_decomposition(decomposition)
    return [b.tokens for b in attribution_batches(decomposition, model.run_config, AttributionSettings(**SMALL))]


@pytest.fixture(scope="module")
def brute(decomposition: Path, stream_batches: list[torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    return _brute_force(_double_model(decomposition), stream_batches)


def test_explicit_forward_is_the_all_ones_component_model(decomposition: Path) -> None:
    """Guards the brute force itself: the hand-written forward is the model the stage differentiates."""
    model = _double_model(decomposition)
    tokens = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    masks = {p: MaskInfo(mask=torch.ones(2, 8, c, dtype=torch.float64)) for p, c in model.module_to_c.items()}
    emb = model.target_model.embed(tokens)
    zero = torch.zeros(2, 8, 16, dtype=torch.float64)
    h_up = _explicit_forward(model, emb, zero, zero)[0]
    h_down = _explicit_forward(model, emb, h_up, zero)[1]
    torch.testing.assert_close(_explicit_forward(model, emb, h_up, h_down)[2], model(tokens, masks))


def test_accumulator_equals_brute_force_autograd_float64(
    decomposition: Path, stream_batches: list[torch.Tensor], brute: dict[tuple[str, str], torch.Tensor]
) -> None:
    model = _double_model(decomposition)
    layout = build_layout(model, AttributionSettings(), all_alive(model.module_to_c))
    # forward order, not module_to_c's (sorted) order; connectivity found by autograd
    assert layout.modules == (UP, DOWN)
    expected_pairs = {
        (TOK, f"component:{UP}"),
        (f"component:{UP}", f"component:{DOWN}"),
        (TOK, OUT),
        (f"component:{DOWN}", OUT),
    }
    assert set(layout.connections) == expected_pairs
    w_u = unembedding_matrix(model, "lm_head")
    # one backward per target; batched backwards with a ragged last chunk; the module-input basis projected by V
    for chunk, basis in ((1, "targets"), (5, "auto"), (5, "inputs")):
        acc = AttributionAccumulator(model, layout, targets_per_backward=chunk, basis=basis)
        assert acc.uses_inputs(Layer("component", UP)) == (basis == "inputs")  # auto: C=16 < d_in=32
        for tokens in stream_batches:
            acc.add_batch(tokens)
        assert acc.n_tokens == 48
        for (s_name, t_name), expected in brute.items():
            key = f"{s_name}->{t_name}"
            if (s_name, t_name) not in expected_pairs:
                assert key not in acc.sums
                assert expected.abs().max() == 0, f"{key}: brute force finds a path the probe missed"
                continue
            got = acc.sums[key]
            target = Layer.from_key(t_name)
            if acc.basis_of(target) == "residual":
                got = got @ w_u.T
            elif acc.basis_of(target) == "inputs":  # module-input columns: the merge multiplies by V
                got = got @ model.components(target.module).V
            scale = expected.abs().max().item()
            assert scale > 1e-3, f"{key}: brute-force block is (near) zero"
            torch.testing.assert_close(got, expected, atol=1e-9 * scale, rtol=1e-9)


# --- the stage: shard -> merge -> store ------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_task_store(decomposition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_stage(decomposition, tmp_path_factory.mktemp("attr1") / "out", n_tasks=1)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _all_edges(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            "SELECT source_kind, source_module, source_index, target_kind, target_module, target_index, value "
            "FROM edges_named ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def test_store_equals_brute_force_including_output_logits(
    one_task_store: Path, stream_batches: list[torch.Tensor], brute: dict[tuple[str, str], torch.Tensor]
) -> None:
    _assert_store_is_brute_force(one_task_store, stream_batches, brute)


def test_input_basis_store_is_narrow_and_equals_brute_force(
    decomposition: Path,
    stream_batches: list[torch.Tensor],
    brute: dict[tuple[str, str], torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Input-basis blocks stay [source nodes, d_in] in the shard (never [C, C]); the merge's V projection, in
    3-row chunks here, and gradient chunks cut by a tiny budget give the brute-force numbers."""
    import spd.attributions.compute as compute
    import spd.attributions.merge as merge

    monkeypatch.setattr(merge, "CHUNK_BYTES", 8 * 16 * 3)  # 3 source rows per chunk for the 16 components
    monkeypatch.setattr(compute, "GRAD_BUDGET_BYTES", 1)  # one target per batched backward
    store = _run_stage(decomposition, tmp_path / "out", n_tasks=2, backward_basis="inputs")
    model = load_decomposition(decomposition)
    shard = load_shard(tmp_path / "out/shards/shard-00000.pt")
    assert shard["bases"] == {f"component:{UP}": "inputs", f"component:{DOWN}": "inputs", OUT: "residual"}
    d_in = {UP: model.components(UP).d_in, DOWN: model.components(DOWN).d_in}
    assert d_in[UP] != model.module_to_c[UP] and d_in[DOWN] != model.module_to_c[DOWN]  # the widths tell
    for key, block in shard["sums"].items():
        target = Layer.from_key(key.split("->")[1])
        width = shard["layout"]["d_model"] if target.kind == "output" else d_in[target.module]
        assert block.shape[1] == width, key
    _assert_store_is_brute_force(store, stream_batches, brute)


def _assert_store_is_brute_force(
    store_path: Path, stream_batches: list[torch.Tensor], brute: dict[tuple[str, str], torch.Tensor]
) -> None:
    n_tokens = sum(b.numel() for b in stream_batches)
    stored = {(e[0], e[1], e[2], e[3], e[4], e[5]): e[6] for e in _all_edges(store_path)}
    checked = 0
    for (s_name, t_name), total in brute.items():
        expected = total / n_tokens
        scale = expected.abs().max().item()
        (s_kind, s_mod), (t_kind, t_mod) = s_name.split(":"), t_name.split(":")
        for s, t in (expected != 0).nonzero().tolist():  # every nonzero pair is stored (top_k covers all)
            got = stored.get((s_kind, s_mod, s, t_kind, t_mod, t))
            assert got is not None, f"{s_name}:{s} -> {t_name}:{t} missing"
            assert abs(got - expected[s, t].item()) <= 1e-4 * scale + 1e-4 * abs(expected[s, t].item())
            checked += 1
    assert len(stored) == checked
    with AttributionsStore.open(store_path) as store:
        assert store.n_tokens == n_tokens == 3 * 2 * 8
        some = next(iter(stored))  # the read API returns the same numbers
        assert store.value(Node(*some[:3]), Node(*some[3:])) == stored[some]
        outputs = store._con.execute("SELECT count(*), max(abs(value)) FROM edges_named WHERE target_kind = 'output'")
        n_out, max_out = outputs.fetchone()
    assert n_out > 0 and max_out > 1e-3  # the output target is present and not all zero (reference bug 4.2)


def test_one_task_equals_four_tasks_through_the_cli(decomposition: Path, one_task_store: Path, tmp_path: Path) -> None:
    """4 array tasks on the local executor (task 3 gets no batch: 3 batches) merge to the 1-task result."""
    stage = {"inputs": {"decompose": str(decomposition)}, "n_tasks": 4, **SMALL}
    pipeline = {"run": {"name": "attr4", "seed": 0}, "executor": "local", "local": {"parallelism": 4}}
    write_pipeline(tmp_path / "p.yaml", {**pipeline, "stages": {"attributions": stage}})
    before = _digests(decomposition)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert _digests(decomposition) == before  # the upstream is byte-identical afterwards
    out = tmp_path / "runs/attr4/stages/attributions/out"
    store_path = out / "attributions.duckdb"
    assert [load_shard(out / f"shards/shard-{i:05d}.pt")["n_tokens"] for i in range(4)] == [16, 16, 16, 0]
    assert sorted(p.name for p in out.iterdir()) == ["attributions.duckdb", "shards"]  # no .wal, no temp file
    assert not store_path.stat().st_mode & stat.S_IWUSR  # out/ is read-only once the stage is done
    one, four = _all_edges(one_task_store), _all_edges(store_path)
    assert [e[:6] for e in one] == [e[:6] for e in four]
    scale = max(abs(e[6]) for e in one)  # float32 partial sums (and other thread counts) round differently
    for a, b in zip(one, four, strict=True):
        assert b[6] == pytest.approx(a[6], rel=1e-5, abs=1e-6 * scale)
    with AttributionsStore.open(store_path) as store:
        assert store.meta["num_tasks"] == 4 and store.n_tokens == 48
        assert not any(v != v for *_, v in four)  # no NaN from the empty task


def test_merge_names_every_unreadable_shard_at_once(decomposition: Path, tmp_path: Path) -> None:
    """Shards of an older format (here /1, whose component blocks were [sources, C]) are each their task's bad
    output, all named in one error, so a single rerun recomputes them all."""
    from spd.shard_checksums import ShardsCorrupt

    config = AttributionsConfig(n_tasks=3, **SMALL)
    ctx = StageContext(stage="attributions", out_dir=tmp_path, upstream_dirs={"decompose": decomposition},
                       num_tasks=3, seed=0)  # fmt: skip
    for i in range(3):
        STAGE.run_task(config, ctx, i)
    for i in (0, 2):
        path = tmp_path / f"shards/shard-{i:05d}.pt"
        payload = torch.load(path, weights_only=True)  # not memory-mapped: the file is replaced below
        torch.save({**payload, "format": "spd-attributions-shard/1"}, path.with_name("old.pt"))
        path.with_name("old.pt").replace(path)
        write_checksum(path)  # intact files of another format: only parsing can refuse them
    with pytest.raises(ShardsCorrupt, match="shard-00000.pt.*\n.*shard-00002.pt") as refused:
        STAGE.merge(config, ctx)
    assert sorted(refused.value.invalid_tasks) == [0, 2]


def test_a_layer_without_alive_targets_costs_no_backward_in_any_basis(decomposition: Path) -> None:
    model = load_decomposition(decomposition)
    alive = all_alive(model.module_to_c)
    alive.alive[DOWN] = [False] * model.module_to_c[DOWN]
    layout = build_layout(model, AttributionSettings(), alive)
    down = Layer("component", DOWN)
    counts = {}
    for basis in ("targets", "inputs", "auto"):
        acc = AttributionAccumulator(model, layout, basis=basis)
        assert acc.basis_of(down) == "targets" and acc.block_width(down) == 0
        counts[basis] = acc.backwards_per_batch()
    # what is left: UP's 16 alive components (targets) or its 32 input dims (inputs; auto picks the 16), + d_model
    assert counts == {"targets": 16 + layout.d_model, "inputs": 32 + layout.d_model, "auto": 16 + layout.d_model}


def test_merge_names_missing_shards_and_refuses_zero_tokens(decomposition: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = AttributionsConfig(n_tasks=4, **SMALL)
    ctx = StageContext(
        stage="attributions", out_dir=out, upstream_dirs={"decompose": decomposition}, num_tasks=4, seed=0
    )
    for i in (0, 1, 3):
        STAGE.run_task(config, ctx, i)
    with pytest.raises(FileNotFoundError, match=r"1 of 4 shard\(s\) missing.*shard-00002\.pt \(task 2\)"):
        STAGE.merge(config, ctx)
    assert not (out / "attributions.duckdb").exists()
    empty_dir = tmp_path / "empty"  # the empty task 3 of 4, relabelled as the only task of a run
    payload = dict(load_shard(out / "shards/shard-00003.pt"))
    assert payload["n_tokens"] == 0 and payload["sums"] == {}
    empty_dir.mkdir()
    torch.save({**payload, "task": 0, "num_tasks": 1}, empty_dir / "shard-00000.pt")
    write_checksum(empty_dir / "shard-00000.pt")  # as a task does after writing its shard
    with pytest.raises(ValueError, match="processed any token"):
        merge_shards(empty_dir, 1, decomposition, tmp_path / "a.duckdb")
    assert not (tmp_path / "a.duckdb").exists()


# --- alive masks ---------------------------------------------------------------------------------------


def _harvest_store(path: Path, rows: list[tuple[str, int, float]], n_tokens: int = 1000) -> None:
    """A harvest store with spd/harvest's own `components` table (all the alive reader needs); rows are
    (module, index in the module, firing density), the flat index is the row's position."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        create_table(con, "components", HARVEST_TABLES["components"])
        con.executemany(
            "INSERT INTO components VALUES (?, ?, ?, ?, ?, ?, 0, NULL, 0, NULL, 0, 0, 0)",
            [(flat, f"{m}:{i}", m, i, round(d * n_tokens), d) for flat, (m, i, d) in enumerate(rows)],
        )


def test_alive_masks_from_harvest_drop_dead_components(decomposition: Path, tmp_path: Path) -> None:
    dead_up, dead_down = {0, 1, 2}, {5}
    rows = [(UP, c, 0.0 if c in dead_up else 0.2) for c in range(16)]
    rows += [(DOWN, c, 0.0 if c in dead_down else 0.1) for c in range(16) if c != 9]  # 9: no row -> dead
    harvest = tmp_path / "harvest_out"
    _harvest_store(harvest / "harvest.duckdb", rows)
    before = _digests(harvest)
    store_path = _run_stage(decomposition, tmp_path / "out", n_tasks=2, harvest=harvest)
    assert _digests(harvest) == before  # read-only: no byte of the harvest store changes
    with AttributionsStore.open(store_path) as store:
        assert store.meta["alive_source"] == str(harvest / "harvest.duckdb")
        alive = dict(
            ((m, c), a) for m, c, a in store._con.execute("SELECT module, component, alive FROM components").fetchall()
        )
        assert {k for k, a in alive.items() if not a} == {(UP, 0), (UP, 1), (UP, 2), (DOWN, 5), (DOWN, 9)}
        assert store.is_alive(f"{UP}:3") and not store.is_alive(f"{UP}:0")
        assert store.top_sources(f"{DOWN}:5", k=5) == [] and store.top_targets(f"{UP}:1", k=5) == []
        dead_edges = store._con.execute(
            "SELECT count(*) FROM edges_named WHERE (source_kind = 'component' AND (source_module, source_index) IN "
            f"(('{UP}', 0), ('{UP}', 1), ('{UP}', 2), ('{DOWN}', 5), ('{DOWN}', 9))) OR (target_kind = 'component' "
            f"AND (target_module, target_index) IN (('{UP}', 0), ('{UP}', 1), ('{UP}', 2), ('{DOWN}', 5), ('{DOWN}', 9)))"
        ).fetchone()[0]
        assert dead_edges == 0
        assert store.top_sources(f"{DOWN}:0", k=3, kinds=("component",))  # alive ones still have edges


def test_alive_reader_thresholds_densities_and_rejects_a_mismatched_harvest(tmp_path: Path) -> None:
    db = tmp_path / "h" / "harvest.duckdb"
    _harvest_store(db, [("a", 0, 0.5), ("a", 1, 0.0)])
    masks = alive_from_harvest(db, {"a": 3})
    assert masks.alive == {"a": [True, False, False]} and masks.density == {"a": [0.5, 0.0, None]}
    assert alive_from_harvest(db, {"a": 2}, min_density=0.6).alive == {"a": [False, False]}
    with pytest.raises(ValueError, match=r"no rows for decomposed module\(s\) \['b'\]"):
        alive_from_harvest(db, {"a": 2, "b": 4})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        alive_from_harvest(tmp_path / "nope.duckdb", {"a": 2})
    # the index within the module (layer_index) counts, not the flat index across modules (component)
    flat = tmp_path / "flat" / "harvest.duckdb"
    _harvest_store(flat, [("a", 0, 0.0), ("a", 1, 0.3), ("b", 0, 0.2), ("b", 1, 0.0)])
    assert alive_from_harvest(flat, {"a": 2, "b": 2}).alive == {"a": [False, True], "b": [True, False]}
    _harvest_store(tmp_path / "bad" / "harvest.duckdb", [("a", 5, 0.1)])
    with pytest.raises(ValueError, match="outside their module's range"):
        alive_from_harvest(tmp_path / "bad" / "harvest.duckdb", {"a": 2})


# --- read API --------------------------------------------------------------------------------------------


def test_read_api_rankings_and_errors(one_task_store: Path) -> None:
    with AttributionsStore.open(one_task_store.parent) as store:  # a directory finds its attributions.duckdb
        target = f"{DOWN}:3"
        pos = store.top_sources(target, k=5)
        neg = store.top_sources(target, k=5, sign="negative")
        assert pos and neg
        assert [a.value for a in pos] == sorted((a.value for a in pos), reverse=True) and pos[0].value > 0
        assert [a.value for a in neg] == sorted(a.value for a in neg) and neg[-1].value < 0
        assert all(a.target == Node.component(DOWN, 3) for a in pos)
        comps = store.top_sources(target, k=3, kinds=("component",))
        assert {a.source.kind for a in comps} == {"component"} and {a.source.module for a in comps} == {UP}
        assert store.value(comps[0].source, target) == comps[0].value
        outs = store.top_targets(f"{DOWN}:3", k=4, kinds=("output",))
        assert len(outs) == 4 and all(a.target.kind == "output" and a.target.module == "lm_head" for a in outs)
        assert store.value(f"{DOWN}:3", f"output:{outs[0].target.index}") == outs[0].value
        tok = store.top_sources("output:10", k=2, kinds=("token",))
        assert all(a.source.kind == "token" for a in tok)
        assert store.value(f"{DOWN}:3", f"{UP}:1") is None  # down never reaches up
        assert (TOK, f"component:{UP}") in store.connected_layers()
        with pytest.raises(ValueError, match="keeps the top 400"):
            store.top_sources(target, k=401)
        with pytest.raises(KeyError, match="no component layer"):
            store.top_sources("layers.7.mlp.up_proj:0")
        with pytest.raises(KeyError, match="out of range"):
            store.top_targets(f"{UP}:16")
        with pytest.raises(ValueError, match="never a target"):
            store.top_sources("token:3")
        with pytest.raises(ValueError, match="cannot parse"):
            store.node("no_index")
        with pytest.raises(duckdb.Error):  # opened read-only
            store._con.execute("DELETE FROM edges")


def test_batched_backward_falls_back_to_one_per_target(
    decomposition: Path, stream_batches: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An op without a vmap rule must not fail the task: same sums from one backward per target, and a warning."""
    model = load_decomposition(decomposition)
    layout = build_layout(model, AttributionSettings(), all_alive(model.module_to_c))
    reference = AttributionAccumulator(model, layout, targets_per_backward=1)
    reference.add_batch(stream_batches[0])
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::fake_op")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    acc = AttributionAccumulator(model, layout, targets_per_backward=8)
    with pytest.warns(UserWarning, match="falling back to one backward per target"):
        acc.add_batch(stream_batches[0])
    for key, block in reference.sums.items():
        torch.testing.assert_close(acc.sums[key], block)


def test_alive_masks_agree_with_the_real_harvest_store(decomposition: Path, tmp_path: Path) -> None:
    """Guards the contract with spd/harvest: its store, read by our reader, gives its own alive set."""
    from spd.harvest.store import HarvestStore
    from stages.harvest import STAGE as HARVEST
    from stages.harvest import HarvestConfig

    out = tmp_path / "harvest"
    out.mkdir()
    config = HarvestConfig(n_tasks=1, device="cpu", batch_size=4, n_batches=2)
    ctx = StageContext(stage="harvest", out_dir=out, upstream_dirs={"decompose": decomposition}, num_tasks=1, seed=0)
    HARVEST.run_task(config, ctx, 0)
    HARVEST.merge(config, ctx)
    model = load_decomposition(decomposition)
    masks = alive_from_harvest(out / "harvest.duckdb", model.module_to_c)
    ours = {(m, i) for m, flags in masks.alive.items() for i, alive in enumerate(flags) if alive}
    store = HarvestStore.open(out)
    try:
        theirs = {(c.layer, c.layer_index) for c in store.alive_components(min_density=0.0, min_firings=1)}
    finally:
        store.close()
    assert ours == theirs and 0 < len(ours) <= 32


def test_batched_backward_out_of_memory_is_raised_not_turned_into_the_slow_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a missing batching rule falls back to one backward per target; running out of memory must surface."""
    from spd.attributions import compute

    acc = compute.AttributionAccumulator.__new__(compute.AttributionAccumulator)
    acc._batched = True

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(compute.torch.autograd, "grad", oom)
    leaf = torch.zeros(2, requires_grad=True)
    with pytest.raises(torch.OutOfMemoryError):
        acc._grads(leaf * 2, torch.arange(2), [leaf])
    assert acc._batched
