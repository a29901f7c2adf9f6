"""Data-parallel SPD training (issue 26): 2 gloo processes on 127.0.0.1 against 1-process runs.

Each 2-process job is started with torch.multiprocessing (spawn) as plain processes, so a rank that fails does
not take the other down with it (mp.spawn would): the test sees whether the survivor fails on its own.
Every rank writes its outcome (state dicts, or the error) to a file outside the run directories.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from spd.data import CorpusConfig, build_corpus
from spd.data.corpus import Corpus
from spd.lm import TinyLMConfig, TinyLMTrainConfig, train_and_save_lm
from spd.losses.persistent_pgd import PersistentPGDConfig, PersistentPGDState
from spd.targets import TMSModel, TMSTargetConfig, load_target
from spd.targets.lm import LMData, LMDataConfig
from spd.train import Decomposer, SPDConfig, decompose
from spd.train.distributed import DataParallel, ProcessGroupSpec, data_parallel

DETERMINISTIC = [
    {"classname": "FaithfulnessLoss", "coeff": 1e3},
    {"classname": "CIMaskedReconLoss", "coeff": 1.0},
    {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 2.0},
]
PPGD_LOSSES = [
    {"classname": "FaithfulnessLoss", "coeff": 1.0},
    {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm": 1.0},
    {"classname": "StochasticReconLoss", "coeff": 1.0},
    {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "scope": {"type": "repeat_across_batch", "n_sources": 2}},
    {"classname": "PersistentPGDReconSubsetLoss", "coeff": 1.0, "scope": {"type": "per_batch_per_position"}},
]


def _lm_cfg() -> SPDConfig:
    return SPDConfig(
        default_C=8,
        ci_fn={"fn_type": "shared_mlp", "hidden_dims": [8]},
        output_loss_type="kl",
        losses=DETERMINISTIC,
        lr_schedule={"start_val": 3e-3, "fn_type": "constant", "final_val_frac": 1.0},
        steps=20,
        batch_size=4,
        eval_batch_size=4,
        faithfulness_warmup_steps=5,
        eval_freq=10,
        n_eval_steps=2,
        train_log_freq=1,
    )


def _tms_cfg(losses: list[dict[str, Any]], steps: int) -> SPDConfig:
    return SPDConfig(
        default_C=5,
        losses=losses,
        steps=steps,
        batch_size=8,
        eval_freq=steps,
        n_eval_steps=2,
        train_log_freq=1,
        faithfulness_warmup_steps=3,
        lr_schedule={"start_val": 1e-3, "fn_type": "constant", "final_val_frac": 1.0},
    )


def _tms() -> tuple[TMSModel, TMSTargetConfig]:
    torch.manual_seed(0)
    tc = TMSTargetConfig(n_hidden_layers=1)
    return TMSModel(tc).eval().requires_grad_(False), tc


def _run_lm(root: Path, out: Path, parallel: DataParallel | None) -> dict[str, Any]:
    """The tiny LM decomposition, through decompose(parallel=...)."""
    lm, lm_config = load_target(root / "lm")
    data = LMData(Corpus(root / "corpus"), 16, LMDataConfig(dataset_seed=3))
    return decompose(lm, lm_config, _lm_cfg(), out, seed=0, data=data, log=lambda _: None, parallel=parallel)


def _run_tms(out: Path, cfg: SPDConfig, parallel: DataParallel | None) -> dict[str, Any]:
    """A TMS decomposition through Decomposer, returning what this rank ended with."""
    target, tc = _tms()
    dec = Decomposer(target, cfg, out, 1, torch.device("cpu"), tc, log=lambda _: None, parallel=parallel)
    summary = dec.run()
    return {
        "summary": summary,
        "model": {k: v.clone() for k, v in dec.model.state_dict().items()},
        "ppgd": {n: s.state_dict() for n, s in dec.ppgd_states.items()},
    }


# --- what each rank runs (module level: spawned processes import it) --------------------------------------


def _job_equivalence(dp: DataParallel, root: Path) -> dict[str, Any]:
    out = root / ("lm2" if dp.is_main else "lm2_rank1")  # rank 1 writes nothing: its directory never appears
    _run_lm(root, out, dp)
    tms_out = root / ("tms2" if dp.is_main else "tms2_rank1")
    tms = _run_tms(tms_out, _tms_cfg(DETERMINISTIC, 10), dp)
    ppgd = _run_tms(root / ("ppgd2" if dp.is_main else "ppgd2_rank1"), _tms_cfg(PPGD_LOSSES, 6), dp)
    return {"tms": tms, "ppgd": ppgd}


def _job_rank1_raises(dp: DataParallel, root: Path) -> dict[str, Any]:
    original = Decomposer._train_step

    def failing(self: Decomposer, step: int) -> dict[str, Any]:
        if self.parallel.rank == 1 and step == 3:
            raise RuntimeError("injected failure on rank 1")
        return original(self, step)

    Decomposer._train_step = failing  # type: ignore[method-assign]
    return _run_tms(root / f"fail_rank{dp.rank}", _tms_cfg(DETERMINISTIC, 50), dp)


def _job_rank1_hangs(dp: DataParallel, root: Path) -> dict[str, Any]:
    original = Decomposer._train_step

    def hanging(self: Decomposer, step: int) -> dict[str, Any]:
        if self.parallel.rank == 1 and step == 3:
            (root / "results" / "hang_start").write_text(str(time.time()))
            time.sleep(6.0)  # alive but silent: only the collective timeout can tell
        return original(self, step)

    Decomposer._train_step = hanging  # type: ignore[method-assign]
    return _run_tms(root / f"hang_rank{dp.rank}", _tms_cfg(DETERMINISTIC, 50), dp)


def _job_resume(dp: DataParallel, root: Path) -> dict[str, Any]:
    """An uninterrupted 2-process run, and one killed on both ranks after its save at step 4, then rerun."""
    cfg = _tms_cfg(PPGD_LOSSES, 8).model_copy(update={"save_freq": 4, "eval_freq": 3})
    suffix = "" if dp.is_main else "_rank1"
    _run_tms(root / f"whole{suffix}", cfg, dp)
    original = Decomposer._train_step

    def killed(self: Decomposer, step: int) -> dict[str, Any]:
        if step == 6:
            raise KeyboardInterrupt  # every rank at once, as when the job is cancelled
        return original(self, step)

    Decomposer._train_step = killed  # type: ignore[method-assign]
    with contextlib.suppress(KeyboardInterrupt):
        _run_tms(root / f"killed{suffix}", cfg, dp)
    Decomposer._train_step = original  # type: ignore[method-assign]
    kept = sorted(p.name for p in (root / "killed" / "resume").iterdir()) if dp.is_main else []
    return {"kept": kept, "resumed": _run_tms(root / f"killed{suffix}", cfg, dp)}


def _job_slow_preparation(dp: DataParallel, root: Path) -> dict[str, Any]:
    """Each rank in turn prepares for longer than the collective timeout (2 s), then a collective still works."""
    with dp.main_first():
        time.sleep(3.0)
        (root / "results" / f"prepared{dp.rank}").write_text(str(time.time()))
    return {"sum": dp.sum_floats([float(dp.rank + 1)])}


JOBS: dict[str, Callable[[DataParallel, Path], dict[str, Any]]] = {
    "slow_preparation": _job_slow_preparation,
    "equivalence": _job_equivalence,
    "rank1_raises": _job_rank1_raises,
    "rank1_hangs": _job_rank1_hangs,
    "resume": _job_resume,
}


def _worker(rank: int, world: int, port: int, job: str, root: str, timeout_s: float) -> None:
    torch.set_num_threads(1)
    spec = ProcessGroupSpec(rank, world, rank, "127.0.0.1", port, timeout_s=timeout_s)
    results = Path(root) / "results"
    try:
        with data_parallel(spec, "cpu") as dp:
            outcome = JOBS[job](dp, Path(root))
        torch.save(outcome, results / f"rank{rank}.pt")
    except BaseException as e:
        (results / f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(job: str, root: Path, timeout_s: float = 60.0, wait_s: float = 120.0) -> tuple[list[int | None], float]:
    """Run `job` on 2 ranks; returns their exit codes (None: still running when killed) and the wall time."""
    (root / "results").mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, job, str(root), timeout_s)) for r in range(2)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(0.0, wait_s - (time.monotonic() - start)))
    codes: list[int | None] = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes, time.monotonic() - start


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def _deterministic(key: str) -> bool:
    """Eval values that use no random masks (the 2-process run samples its masks on other streams)."""
    return not any(s in key for s in ("stoch_masked", "random_masked", "elapsed_s"))


@pytest.fixture(scope="module")
def dist_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-process jobs and their 1-process references, run once for the module."""
    root = tmp_path_factory.mktemp("dist")
    corpus = build_corpus(CorpusConfig(n_docs=80, vocab_size=300), root / "corpus")
    model_cfg = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=16)
    train_and_save_lm(corpus, TinyLMTrainConfig(model=model_cfg, steps=10, batch_size=8, log_every=1000), root / "lm")
    codes, _ = _launch("equivalence", root)
    errors = {p.name: p.read_text() for p in (root / "results").glob("*.err")}
    assert codes == [0, 0], errors
    _run_lm(root, root / "lm1", None)
    ranks = [torch.load(root / "results" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    tms1 = _run_tms(root / "tms1", _tms_cfg(DETERMINISTIC, 10), None)
    return {"root": root, "ranks": ranks, "tms1": tms1}


def test_lm_two_processes_log_the_same_losses_and_reach_the_same_weights(dist_runs: dict[str, Any]) -> None:
    root = dist_runs["root"]
    one, two = _records(root / "lm1"), _records(root / "lm2")
    train1 = [r for r in one if "train/loss/total" in r]
    train2 = [r for r in two if "train/loss/total" in r]
    assert [r["step"] for r in train1] == [r["step"] for r in train2] == list(range(20))
    # abs: the KL losses (~5e-4 here) are differences of float32 log-probs of size ~5, and 4 rows or 2 + 2 rows
    # round differently by ~1e-8 (the gap does not grow over the steps: the trajectories stay together)
    for a, b in zip(train1, train2, strict=True):
        for key in (k for k in a if k.startswith(("train/loss/", "train/l0/", "train/grad_norm/"))):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=3e-8), (a["step"], key)
    w1 = torch.load(root / "lm1" / "model_20.pth", weights_only=True)
    w2 = torch.load(root / "lm2" / "model_20.pth", weights_only=True)
    assert w1.keys() == w2.keys()
    assert max(_rel(w2[k], w1[k]) for k in w1) < 1e-5
    # eval metrics: reduced as sums and counts over the ranks' slices, equal to the 1-process values
    evals1 = [r for r in one if any(k.startswith("eval/") for k in r)]
    evals2 = [r for r in two if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals1] == [r["step"] for r in evals2] == [0, 10, 20]
    for a, b in zip(evals1, evals2, strict=True):
        keys = [k for k in a if k.startswith("eval/") and _deterministic(k)]
        assert len(keys) > 10 and set(keys) <= set(b)
        for k in keys:
            # ce_unrecovered = (ce_X - ce_target) / (ce_zero - ce_target): a ratio of small gaps between CEs that
            # agree to 1e-7, so float32 rounding is amplified ~100x there
            rel = 1e-4 if "ce_unrecovered" in k else 1e-5
            assert b[k] == pytest.approx(a[k], rel=rel, abs=3e-8), (a["step"], k)
    config = json.loads((root / "lm2" / "config.json").read_text())
    summary = json.loads((root / "lm2" / "summary.json").read_text())
    assert config["world_size"] == 2 and summary["world_size"] == 2
    assert json.loads((root / "lm1" / "config.json").read_text())["world_size"] == 1


def test_only_rank_0_writes(dist_runs: dict[str, Any]) -> None:
    root = dist_runs["root"]
    for name in ("lm2_rank1", "tms2_rank1", "ppgd2_rank1"):
        assert not (root / name).exists(), name
    assert sorted(p.name for p in (root / "lm2").iterdir()) == sorted(p.name for p in (root / "lm1").iterdir())


def test_tms_two_processes_match_one(dist_runs: dict[str, Any]) -> None:
    root, tms1 = dist_runs["root"], dist_runs["tms1"]
    train1 = [r for r in _records(root / "tms1") if "train/loss/total" in r]
    train2 = [r for r in _records(root / "tms2") if "train/loss/total" in r]
    assert len(train1) == len(train2) == 10
    for a, b in zip(train1, train2, strict=True):
        assert b["train/loss/total"] == pytest.approx(a["train/loss/total"], rel=1e-5)
    final = dist_runs["ranks"][0]["tms"]["model"]
    assert max(_rel(final[k], v) for k, v in tms1["model"].items()) < 1e-5
    m1, m2 = tms1["summary"]["metrics"], dist_runs["ranks"][0]["tms"]["summary"]["metrics"]
    for k, v in m1.items():
        assert m2[k] == pytest.approx(v, rel=1e-5, abs=1e-9), k


def test_parameters_and_shared_sources_identical_on_every_rank(dist_runs: dict[str, Any]) -> None:
    r0, r1 = (r["ppgd"] for r in dist_runs["ranks"])
    assert r0["model"].keys() == r1["model"].keys()
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    for r in dist_runs["ranks"]:  # the deterministic runs too
        assert all(torch.equal(v, dist_runs["ranks"][0]["tms"]["model"][k]) for k, v in r["tms"]["model"].items())
    shared0, shared1 = r0["ppgd"]["PersistentPGDReconLoss"], r1["ppgd"]["PersistentPGDReconLoss"]
    own0, own1 = r0["ppgd"]["PersistentPGDReconSubsetLoss"], r1["ppgd"]["PersistentPGDReconSubsetLoss"]
    for path, s in shared0["sources"].items():
        assert s.shape[0] == 2 and torch.equal(s, shared1["sources"][path])  # repeat_across_batch: one adversary
        assert torch.equal(shared0["m"][path], shared1["m"][path]) and shared0["m"][path].abs().sum() > 0
        assert own0["sources"][path].shape[0] == 4  # per_batch_per_position: the local batch, 8 / 2
        assert not torch.equal(own0["sources"][path], own1["sources"][path])
    saved = torch.load(dist_runs["root"] / "ppgd2" / "ppgd_6.pth", weights_only=True)
    for path, s in saved["PersistentPGDReconSubsetLoss"]["sources"].items():
        assert s.shape[0] == 8  # the 1-process shape: every rank's rows, in rank order
        assert torch.equal(s, torch.cat([own0["sources"][path], own1["sources"][path]]))
        assert torch.equal(
            saved["PersistentPGDReconSubsetLoss"]["v"][path], torch.cat([own0["v"][path], own1["v"][path]])
        )
    assert torch.equal(saved["PersistentPGDReconLoss"]["sources"]["linear1"], shared0["sources"]["linear1"])


def test_a_failing_rank_fails_the_other(tmp_path: Path) -> None:
    codes, wall = _launch("rank1_raises", tmp_path, timeout_s=10.0, wait_s=60.0)
    assert codes[0] not in (0, None) and codes[1] not in (0, None), codes  # neither hangs nor succeeds
    assert "injected failure" in (tmp_path / "results" / "rank1.err").read_text()
    assert (tmp_path / "results" / "rank0.err").is_file()
    assert wall < 45
    assert not (tmp_path / "fail_rank0" / "summary.json").exists()


def test_a_hung_rank_fails_the_other_within_the_timeout(tmp_path: Path) -> None:
    codes, _ = _launch("rank1_hangs", tmp_path, timeout_s=2.0, wait_s=60.0)
    assert codes[0] not in (0, None), codes
    hang_start = float((tmp_path / "results" / "hang_start").read_text())
    failed_after = (tmp_path / "results" / "rank0.err").stat().st_mtime - hang_start
    assert failed_after < 5.0, failed_after  # timeout_s=2 bounds the wait, not the 6 s the peer stays silent


def test_target_preparation_may_outlast_the_collective_timeout_and_rank_0_goes_first(tmp_path: Path) -> None:
    codes, _ = _launch("slow_preparation", tmp_path, timeout_s=2.0, wait_s=60.0)
    assert codes == [0, 0], [p.read_text() for p in (tmp_path / "results").glob("*.err")]
    first, second = (float((tmp_path / "results" / f"prepared{r}").read_text()) for r in (0, 1))
    assert second - first >= 2.5  # rank 1 started its 3 s block only after rank 0 finished its own
    assert [torch.load(tmp_path / "results" / f"rank{r}.pt")["sum"] for r in (0, 1)] == [[3.0], [3.0]]


def test_two_process_run_resumes_exactly(tmp_path: Path) -> None:
    codes, _ = _launch("resume", tmp_path)
    assert codes == [0, 0], {p.name: p.read_text() for p in (tmp_path / "results").glob("*.err")}
    r0 = torch.load(tmp_path / "results" / "rank0.pt", weights_only=False)
    assert r0["kept"] == ["metrics_4.jsonl", "state_4.pth"]
    state = r0["resumed"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_records(killed)) == strip(_records(whole))
    for name in ("model_8.pth", "ppgd_8.pth", "ppgd_4.pth"):
        a = torch.load(whole / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        if name.startswith("model"):
            assert all(torch.equal(a[k], b[k]) for k in a), name
        else:
            for loss, sd in a.items():
                assert all(torch.equal(v, b[loss]["sources"][k]) for k, v in sd["sources"].items()), name
    assert not (killed / "resume").exists() and not (tmp_path / "killed_rank1").exists()
    assert state["summary"]["world_size"] == 2


def test_batch_not_divisible_by_world_size(tmp_path: Path) -> None:
    target, tc = _tms()
    cfg = _tms_cfg(DETERMINISTIC, 2)
    with pytest.raises(ValueError, match=r"batch_size=8 is not divisible by world_size=3"):
        Decomposer(target, cfg, tmp_path / "a", 0, torch.device("cpu"), tc, parallel=DataParallel(0, 3))
    cfg = cfg.model_copy(update={"eval_batch_size": 6})
    with pytest.raises(ValueError, match=r"eval_batch_size=6 is not divisible by world_size=4"):
        Decomposer(target, cfg, tmp_path / "b", 0, torch.device("cpu"), tc, parallel=DataParallel(1, 4))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # raised before writing anything
    with pytest.raises(ValueError, match="n_sources=4 must divide the per-rank batch 2"):
        scope = {"type": "repeat_across_batch", "n_sources": 4}
        PersistentPGDState({"a": 3}, (4,), PersistentPGDConfig(scope=scope), rank=1, world_size=2)


def test_single_process_needs_no_group() -> None:
    with data_parallel(None, "cpu") as dp:
        assert dp.is_main and dp.world_size == 1 and not torch.distributed.is_initialized()
        x = torch.ones(3)
        assert dp.shard(x) is x and dp.mean_floats({"a": 1.5}) == {"a": 1.5}
        with dp.main_first():
            dp.barrier()
    assert DataParallel(1, 2, 1).device_for(torch.device("cuda")) == torch.device("cuda", 1)
    assert DataParallel(1, 2, 1).device_for("cpu") == torch.device("cpu")
