"""DAG building, topological order, upstream resolution and stage keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_pipeline
from pipeline.dag import Plan, build_plan, stage_key
from pipeline.errors import UserError
from pipeline.registry import stage_module, stage_registry
from pipeline.resources import load_profile


def _plan(tmp_path: Path, text: str) -> Plan:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    config, _ = load_pipeline(path)
    registry = stage_registry()
    modules = {n: stage_module(n) for n in registry}
    return build_plan(config, registry, modules, load_profile("default", set(registry)))


BASE = "run: {name: demo, seed: 1}\nstages:\n  t_after: {}\n  t_sink: {scale: 2}\n  t_source: {n_tasks: 3}\n"


def test_topological_order_whatever_the_file_order(tmp_path: Path) -> None:
    plan = _plan(tmp_path, BASE)
    assert plan.order() == ["t_source", "t_sink", "t_after"]
    assert plan.stages["t_sink"].upstreams == ("t_source",)
    assert plan.stages["t_source"].num_tasks == 3
    assert plan.stages["t_source"].has_merge_job
    assert not plan.stages["t_sink"].has_merge_job


def test_downstream_closure(tmp_path: Path) -> None:
    plan = _plan(tmp_path, BASE)
    assert plan.downstream_closure({"t_sink"}) == {"t_sink", "t_after"}
    assert plan.downstream_closure({"t_source"}) == {"t_source", "t_sink", "t_after"}
    assert plan.downstream_closure({"t_after"}) == {"t_after"}


def test_cycle_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cycle: t_cycle_a -> t_cycle_b -> t_cycle_a|cycle: t_cycle_b -> t_cycle_a"):
        _plan(tmp_path, "run: {name: demo}\nstages:\n  t_cycle_a: {}\n  t_cycle_b: {}\n")


def test_missing_upstream_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'t_sink' needs upstream 't_source'.*inputs\.t_source"):
        _plan(tmp_path, "run: {name: demo}\nstages:\n  t_sink: {}\n")


def test_upstream_given_as_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="stages.t_sink.inputs.t_source: .* does not exist"):
        _plan(tmp_path, f"run: {{name: demo}}\nstages:\n  t_sink: {{inputs: {{t_source: {tmp_path / 'none'}}}}}\n")


def test_input_for_a_stage_that_is_not_an_upstream(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not upstreams of 't_source'"):
        _plan(tmp_path, f"run: {{name: demo}}\nstages:\n  t_source: {{inputs: {{t_sink: {tmp_path}}}}}\n")


def test_upstream_given_as_finished_stage_dir_uses_its_key(tmp_path: Path) -> None:
    stage_dir = tmp_path / "old" / "stages" / "t_source"
    (stage_dir / "out").mkdir(parents=True)
    (stage_dir / "done.json").write_text(json.dumps({"key": "abc123"}))
    text = f"run: {{name: demo}}\nstages:\n  t_sink: {{inputs: {{t_source: {stage_dir}}}}}\n"
    plan = _plan(tmp_path, text)
    assert plan.stages["t_sink"].external == {"t_source": str(stage_dir / "out")}
    assert plan.stages["t_sink"].upstreams == ()
    (stage_dir / "done.json").write_text(json.dumps({"key": "other"}))
    assert _plan(tmp_path, text).stages["t_sink"].key != plan.stages["t_sink"].key


def test_keys_are_stable_and_change_only_downstream(tmp_path: Path) -> None:
    a = _plan(tmp_path, BASE)
    b = _plan(tmp_path, BASE)
    assert {n: s.key for n, s in a.stages.items()} == {n: s.key for n, s in b.stages.items()}
    changed = _plan(tmp_path, BASE.replace("scale: 2", "scale: 3"))
    assert changed.stages["t_source"].key == a.stages["t_source"].key
    assert changed.stages["t_sink"].key != a.stages["t_sink"].key
    assert changed.stages["t_after"].key != a.stages["t_after"].key


def test_seed_changes_every_key(tmp_path: Path) -> None:
    a = _plan(tmp_path, BASE)
    b = _plan(tmp_path, BASE.replace("seed: 1", "seed: 2"))
    assert all(a.stages[n].key != b.stages[n].key for n in a.stages)
    assert a.stages["t_source"].seed != b.stages["t_source"].seed


def test_resources_do_not_change_keys(tmp_path: Path) -> None:
    a = _plan(tmp_path, BASE)
    b = _plan(tmp_path, BASE + "slurm:\n  resources:\n    t_sink: {mem_gb: 99}\n")
    assert b.stages["t_sink"].resources.mem_gb == 99
    assert {n: s.key for n, s in a.stages.items()} == {n: s.key for n, s in b.stages.items()}


def test_stage_key_is_canonical() -> None:
    assert stage_key("s", {"a": 1, "b": 2}, 0, {}) == stage_key("s", {"b": 2, "a": 1}, 0, {})
    assert stage_key("s", {"a": 1}, 0, {}) != stage_key("t", {"a": 1}, 0, {})
    assert stage_key("s", {"a": 1}, 0, {"u": "x"}) != stage_key("s", {"a": 1}, 0, {"u": "y"})


def test_plan_round_trips_through_records(tmp_path: Path) -> None:
    plan = _plan(tmp_path, BASE)
    again = Plan.from_records(json.loads(json.dumps(plan.to_records())))
    assert again.stages == plan.stages


def test_zero_tasks_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="n_tasks"):
        _plan(tmp_path, "run: {name: demo}\nstages:\n  t_source: {n_tasks: 0}\n")
