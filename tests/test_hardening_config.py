"""Hostile or malformed input files fail with one line naming the file, exit 2, no traceback (issue 22).

tests/data/bad_configs/ holds the pipeline files that can be checked in as they are; here are the cases
that need a second file (a `slurm.profile` written next to the pipeline), an environment variable, or
a limit checked from both sides (accepted at the bound, refused past it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_pipeline, resolve_out_dir
from pipeline.errors import UserError
from pipeline.registry import stage_registry
from pipeline.resources import load_profile


def _cli(command: str, pipeline: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [command, str(pipeline)])
    message = result.stderr if hasattr(result, "stderr") and result.stderr else result.output
    return result.exit_code, message


def _assert_refused(command: str, pipeline: Path, *expected: str) -> str:
    """Exit 2 with one line (after the `error:` prefix) holding every `expected` text; nothing created."""
    code, message = _cli(command, pipeline)
    assert code == 2, message
    assert "Traceback" not in message, message
    assert len(message.strip().splitlines()) == 1, message
    for text in expected:
        assert text in message, message
    assert not (pipeline.parent / "runs").exists()
    return message


def _bomb(levels: int = 8, width: int = 9) -> list[str]:
    """Lines of a YAML sequence whose last item is `width`**`levels` scalars once its aliases are expanded."""
    lines = [f"  - &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return [*lines, f"  - [{', '.join([f'*l{levels - 1}'] * width)}]"]


# A profile file that safe_load choked on (a traceback) or that it read with a silent surprise.
PROFILE_CASES = {
    "not_utf8": (b"description: caf\xe9 cluster\ndefaults: {partition: gpu}\n", ":1: slurm profile is not UTF-8"),
    "deep_sequence": (b"stages: " + b"[" * 5000 + b"]" * 5000 + b"\n", ":1: YAML nesting deeper than 64 levels"),
    "deep_mapping": (b"stages: " + b"{a: " * 5000 + b"1" + b"}" * 5000 + b"\n", "YAML nesting deeper than 64"),
    "alias_bomb": ("\n".join(["description:", *_bomb()]).encode() + b"\n", "aliases expand it to more than"),
    "duplicate_key": (b"defaults: {mem_gb: 4}\nmerge: {}\ndefaults: {mem_gb: 64}\n", "duplicate key 'defaults'"),
    "huge_int": (b"defaults: {time_min: " + b"7" * 5000 + b"}\n", "defaults.time_min: integer of 5000 characters"),
}


@pytest.mark.parametrize("case", list(PROFILE_CASES))
@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_profile_file_is_one_line_naming_it(case: str, command: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    content, expected = PROFILE_CASES[case]
    profile = tmp_path / "cluster.yaml"
    profile.write_bytes(content)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"run: {{name: demo}}\nexecutor: local\nslurm: {{profile: {profile}}}\n")
    _assert_refused(command, pipeline, str(profile), expected)


def test_bad_profile_file_through_load_profile(tmp_path: Path) -> None:
    profile = tmp_path / "cluster.yaml"
    profile.write_bytes(b"defaults:\n  partition: gpu\n  partition: cpu\n")
    with pytest.raises(UserError, match=r"cluster.yaml:3: defaults: duplicate key 'partition' \(lines 2 and 3\)"):
        load_profile(str(profile), set(stage_registry()))


def test_run_name_length_is_capped(tmp_path: Path, monkeypatch) -> None:
    """Names become file names (`.<name>.lock`, job names): 100 characters is the most accepted."""
    monkeypatch.chdir(tmp_path)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"run: {{name: {'n' * 100}}}\nexecutor: local\nstages: {{t_source: {{n_tasks: 1}}}}\n")
    code, message = _cli("plan", pipeline)
    assert code == 0, message
    pipeline.write_text(f"run: {{name: {'n' * 250}}}\nexecutor: local\nstages: {{t_source: {{n_tasks: 1}}}}\n")
    for command in ("run", "plan"):
        code, message = _cli(command, pipeline)
        assert code == 2 and "run.name" in message and "at most 100 characters" in message, message
        assert "Traceback" not in message and "n" * 100 not in message  # the value is shown cut short
    assert not (tmp_path / "runs").exists()


def test_seed_bounds(tmp_path: Path) -> None:
    """0 <= seed < 2**63: both ends accepted, one past either end refused with the field named."""
    path = tmp_path / "pipeline.yaml"
    for seed in (0, 2**63 - 1):
        path.write_text(f"run: {{name: demo, seed: {seed}}}\n")
        assert load_pipeline(path)[0].run.seed == seed
    for seed in (-1, 2**63):
        path.write_text(f"run: {{name: demo, seed: {seed}}}\n")
        with pytest.raises(UserError, match=r"pipeline.yaml:1: run\.seed"):
            load_pipeline(path)


def test_out_dir_variables_are_expanded_or_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPD_TEST_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv("SPD_TEST_UNSET", raising=False)
    path = tmp_path / "pipeline.yaml"
    path.write_text("run: {name: demo, out_dir: '${SPD_TEST_SCRATCH}/runs'}\n")
    assert resolve_out_dir(load_pipeline(path)[0]) == tmp_path / "scratch" / "runs"
    path.write_text("run:\n  name: demo\n  out_dir: '$SPD_TEST_SCRATCH/${SPD_TEST_UNSET}/runs'\nexecutor: local\n")
    with pytest.raises(UserError, match=r"pipeline.yaml:3: run.out_dir: environment variable \$SPD_TEST_UNSET is"):
        load_pipeline(path)
    _assert_refused("run", path, "run.out_dir", "$SPD_TEST_UNSET")
    assert list(tmp_path.iterdir()) == [path]  # no literal `$SPD_TEST_UNSET` directory either


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the last word wins in safe_load: a repeated key deep in a stage is as silent as a second `run:`
        (
            "run: {name: demo}\nstages:\n  t_source:\n    n_tasks: 1\n    n_tasks: 5\n",
            "pipeline.yaml:5: stages.t_source: duplicate key 'n_tasks' (lines 4 and 5)",
        ),
        ("run: {name: demo, name: other}\n", "pipeline.yaml:1: run: duplicate key 'name' (lines 1 and 1)"),
        (
            "run: &r {name: demo, again: *r}\n",
            "pipeline.yaml:1: run.again: alias *r refers to the collection it is part of",
        ),
        ("run: {name: demo}\nstages:\n" + "- " * 5000 + "x\n", "pipeline.yaml:3: YAML nesting deeper than 64"),
        ("run: {name: demo, seed: 2024-13-01}\n", "run.seed: cannot read value '2024-13-01': month must be in"),
        ("run: {name: demo}\nexecutor: local\u0000\n", "pipeline.yaml:2: unacceptable character #x0000"),
        (
            "run: {name: demo}\nstages:\n  t_source: {n_tasks: 1}\nbig:\n" + "\n".join(_bomb()) + "\n",
            "aliases expand it to more than 100000 values",
        ),
    ],
    ids=["nested_duplicate", "flow_duplicate", "recursive_alias", "deep_block_sequence", "bad_date", "nul", "bomb"],
)
def test_hostile_pipeline_text_is_one_line(text: str, expected: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    for command in ("plan", "run"):
        _assert_refused(command, path, expected)


def test_moderate_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    """Anchors for sharing a block, and `<<` overridden by an explicit key, are ordinary YAML: still fine."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "run: {name: demo}\nslurm:\n  resources:\n    t_source: &big {mem_gb: 64, cpus_per_task: 8}\n"
        "    t_sink: {<<: *big, mem_gb: 8}\nstages:\n  t_source: {n_tasks: 2}\n"
    )
    config, _ = load_pipeline(path)
    assert config.slurm.resources.t_source.mem_gb == 64
    assert (config.slurm.resources.t_sink.mem_gb, config.slurm.resources.t_sink.cpus_per_task) == (8, 8)
