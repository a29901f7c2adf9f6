"""PipelineConfig loading: valid files, and every kind of bad input gets a clear UserError."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import configured_stages, load_pipeline, pipeline_schema
from pipeline.errors import UserError
from pipeline.registry import stage_registry
from pipeline.resources import Resources, StageResources, load_profile, resolve_resources


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_pipeline(_write(tmp_path, text))
    return str(info.value)


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    config, text = load_pipeline(_write(tmp_path, "run: {name: demo}\nstages:\n  t_source: {n_tasks: 2}\n"))
    assert config.run.name == "demo"
    assert config.run.seed == 0
    assert config.executor == "auto"
    assert config.slurm.profile == "default"
    assert list(configured_stages(config)) == ["t_source"]
    assert configured_stages(config)["t_source"].n_tasks == 2
    assert "t_source" in text


def test_configs_are_frozen(tmp_path: Path) -> None:
    config, _ = load_pipeline(_write(tmp_path, "run: {name: demo}\nstages:\n  t_source: {}\n"))
    with pytest.raises(Exception, match="frozen"):
        config.stages.t_source.n_tasks = 5


def test_schema_lists_every_registered_stage() -> None:
    schema = pipeline_schema()
    stages = schema["$defs"]["StagesSection"]["properties"]
    for name in ("decompose", "harvest", "attributions", "autointerp", "detection", "fuzzing", "intruder"):
        assert name in stages
    assert schema["additionalProperties"] is False


def test_builtin_stage_names_and_edges_are_fixed() -> None:
    registry = stage_registry()
    builtin = {n: s for n, s in registry.items() if not n.startswith("t_")}
    assert list(builtin) == ["decompose", "harvest", "attributions", "autointerp", "detection", "fuzzing", "intruder"]
    assert builtin["harvest"].upstreams == ("decompose",)
    assert builtin["attributions"].upstreams == ("decompose",)
    assert builtin["autointerp"].upstreams == ("harvest",)
    assert set(builtin["detection"].upstreams) == {"harvest", "autointerp"}
    assert set(builtin["fuzzing"].upstreams) == {"harvest", "autointerp"}
    assert builtin["intruder"].upstreams == ("harvest",)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pipeline file not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nstages:\n  t_source: {n_tasks: 2\n  t_sink: {}\n")
    assert "pipeline.yaml:4" in message
    assert "YAML syntax error" in message


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nstages:\n  t_source:\n    n_tasks: 2\n    n_taks: 3\n")
    assert "pipeline.yaml:5" in message
    assert "unknown key 'stages.t_source.n_taks'" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "unknown key 'executr'" in _error(tmp_path, "run: {name: demo}\nexecutr: local\n")


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nstages:\n  t_source: {n_tasks: many}\n")
    assert "stages.t_source.n_tasks" in message
    assert "'many'" in message
    assert "pipeline.yaml:3" in message


def test_unknown_stage_lists_known_ones(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nstages:\n  harvst: {}\n")
    assert "unknown stage 'harvst'" in message
    assert "harvest" in message


def test_unknown_stage_in_resource_overrides(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nslurm:\n  resources:\n    harvst: {mem_gb: 3}\n")
    assert "slurm.resources.harvst: unknown stage 'harvst'" in message


def test_unimplemented_stage_is_rejected(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nstages:\n  t_planned: {}\n")
    assert "stages.t_planned" in message
    assert "not implemented yet (issue #999)" in message


def test_bad_run_name_and_missing_run(tmp_path: Path) -> None:
    assert "run.name" in _error(tmp_path, "run: {name: 'a/b'}\n")
    assert "run: required field is missing" in _error(tmp_path, "executor: local\n")
    assert "must be a YAML mapping" in _error(tmp_path, "- a\n- b\n")


def test_bad_executor_value(tmp_path: Path) -> None:
    message = _error(tmp_path, "run: {name: demo}\nexecutor: kubernetes\n")
    assert "executor" in message and "'kubernetes'" in message


def test_resources_are_not_accepted_in_a_stage_config(tmp_path: Path) -> None:
    """Scheduler settings can never reach a worker: stage configs reject them."""
    assert "unknown key 'stages.t_source.mem_gb'" in _error(
        tmp_path, "run: {name: demo}\nstages:\n  t_source: {mem_gb: 4}\n"
    )


def test_profiles_resolve_with_overrides_winning() -> None:
    profile = load_profile("default", set(stage_registry()))
    tasks, merge = resolve_resources(profile, "harvest", None)
    assert tasks.gpus_per_node == 1
    assert tasks.array_parallelism == 8
    assert merge.gpus_per_node == 0
    assert merge.mem_gb == 64
    override = StageResources(mem_gb=10, partition="big", merge=Resources(mem_gb=200))
    tasks, merge = resolve_resources(profile, "harvest", override)
    assert (tasks.mem_gb, tasks.partition, tasks.gpus_per_node) == (10, "big", 1)
    assert merge.mem_gb == 200


def test_local_profile_exists_and_has_no_gpus() -> None:
    profile = load_profile("local", set(stage_registry()))
    tasks, _ = resolve_resources(profile, "harvest", None)
    assert tasks.gpus_per_node == 0
    assert tasks.partition == "debug"


def test_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no profile 'nope'"):
        load_profile("nope", set(stage_registry()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {mem_gb: -1}\n")
    with pytest.raises(UserError, match="defaults.mem_gb"):
        load_profile(str(bad), set(stage_registry()))


def test_reserved_sbatch_options_fail_at_load_with_file_and_line(tmp_path: Path) -> None:
    message = _error(
        tmp_path, "run: {name: demo}\nslurm:\n  resources:\n    t_source:\n      extra_sbatch: {dependency: x}\n"
    )
    assert "pipeline.yaml:5" in message and "dependency" in message and "cannot be overridden" in message


def test_extra_sbatch_spelling_is_normalised() -> None:
    assert Resources(extra_sbatch={"--mail_type": "FAIL"}).extra_sbatch == {"mail-type": "FAIL"}
