"""The stage graph of a pipeline: edges, topological order, closures and stage keys.

A stage key is a content hash of the stage name, its canonical config, its seed and its
upstreams' keys, so changing one stage's config changes its key and the keys of all its
descendants, and nothing else (the caching rule of Snakemake/Nextflow).
"""

from __future__ import annotations

import graphlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config import configured_stages, resource_override
from pipeline.errors import UserError
from pipeline.resources import Resources, SlurmProfile, resolve_resources
from pipeline.runs import RunDir, finished_stage_output, is_stage_name
from stages.base import StageSpec


@dataclass(frozen=True)
class PlannedStage:
    """One stage as it will run: config, edges, key and resources all resolved.

    Plain data (JSON-serialisable through `to_record`), so `rerun`, `status` and executors work
    from plan.json alone, without rebuilding anything from the pipeline file.
    """

    name: str
    module: str
    config: dict[str, Any]  # the stage config as JSON, validated
    upstreams: tuple[str, ...]  # upstream stages that run in this pipeline
    external: dict[str, str]  # upstream stage -> existing output directory outside this run
    key: str
    seed: int
    num_tasks: int
    resources: Resources
    merge_resources: Resources
    # out/ paths a same-key redo copies from the superseded directory (e.g. an LLM journal: never pay twice)
    kept_on_redo: tuple[str, ...] = ()
    # What went into the key besides config and seed: the upstreams' (dependency) keys and the digest of
    # files the config names. Recorded so a plan can say which of them changed, and so a dependant's
    # restricted key (dependency_key) can be recomputed from the records alone.
    upstream_keys: dict[str, str] = field(default_factory=dict)
    sources: str | None = None

    @property
    def has_merge_job(self) -> bool:
        """Arrays get a dependent merge job that checks every task marker and writes done.json."""
        return self.num_tasks > 1

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "config": self.config,
            "upstreams": list(self.upstreams),
            "external": self.external,
            "key": self.key,
            "seed": self.seed,
            "num_tasks": self.num_tasks,
            "resources": self.resources.model_dump(mode="json"),
            "merge_resources": self.merge_resources.model_dump(mode="json"),
            "kept_on_redo": list(self.kept_on_redo),
            "upstream_keys": self.upstream_keys,
            "sources": self.sources,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PlannedStage:
        return cls(
            name=record["name"],
            module=record["module"],
            config=record["config"],
            upstreams=tuple(record["upstreams"]),
            external=dict(record["external"]),
            key=record["key"],
            seed=int(record["seed"]),
            num_tasks=int(record["num_tasks"]),
            resources=Resources.model_validate(record["resources"]),
            merge_resources=Resources.model_validate(record["merge_resources"]),
            kept_on_redo=tuple(record.get("kept_on_redo", ())),
            upstream_keys={str(k): str(v) for k, v in record.get("upstream_keys", {}).items()},
            sources=record.get("sources"),
        )


@dataclass
class Plan:
    stages: dict[str, PlannedStage] = field(default_factory=dict)  # topological order

    def order(self) -> list[str]:
        return list(self.stages)

    def downstream_closure(self, names: set[str]) -> set[str]:
        """`names` and every stage that depends on one of them, transitively."""
        closed = set(names)
        for name, stage in self.stages.items():  # topological order: parents come first
            if any(u in closed for u in stage.upstreams):
                closed.add(name)
        return closed

    def to_records(self) -> list[dict[str, Any]]:
        return [stage.to_record() for stage in self.stages.values()]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Plan:
        """The plan of stage records in topological order; ValueError/KeyError/TypeError on a record that
        breaks what the records promise (a name that is no stage name, an upstream that is not an earlier
        stage, a missing field), since names from records build paths and keys decide what is redone."""
        stages: dict[str, PlannedStage] = {}
        for record in records:
            name = record["name"]
            if not is_stage_name(name) or name in stages:
                raise ValueError(f"stage name {name!r} is not a stage name, or is there twice")
            stage = PlannedStage.from_record(record)
            if not isinstance(stage.key, str) or not stage.key or stage.num_tasks < 1:
                raise ValueError(f"stage {name!r}: its key {stage.key!r} or num_tasks {stage.num_tasks} is unusable")
            if not isinstance(stage.config, dict) or not all(isinstance(d, str) for d in stage.external.values()):
                raise ValueError(f"stage {name!r}: its config or external inputs are not of the recorded types")
            later = [u for u in stage.upstreams if u not in stages]
            if later or not all(is_stage_name(u) for u in stage.external):
                raise ValueError(f"stage {name!r}: upstreams {list(stage.upstreams)} are not all earlier stages")
            stages[name] = stage
        return cls(stages)


def load_plan(run: RunDir) -> tuple[dict[str, Any], Plan]:
    """plan.json and its stages as a Plan. A record that does not parse is the user's to fix (exit 2 with the
    file named), never a traceback: status, cancel and rerun all start here."""
    record = run.read_plan()
    try:
        return record, Plan.from_records(record["stages"])
    except KeyError as e:
        problem = f"a stage record lacks the field {e}"
    except (TypeError, ValueError, AttributeError) as e:  # pydantic's ValidationError is a ValueError
        problem = str(e).splitlines()[0]
    raise UserError(f"{run.plan_json}: {problem}; was it edited by hand? (`python run.py <pipeline file>` writes it)")


def stage_seed(run_seed: int, stage: str) -> int:
    digest = hashlib.sha256(f"{run_seed}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def stage_key(
    name: str, config_json: dict[str, Any], seed: int, upstream_keys: dict[str, str], sources: str | None = None
) -> str:
    """Content hash of what a stage computes from; `sources` (a digest of files outside the run the config points
    at) enters only when set, so stages without such files hash exactly their config, seed and upstreams."""
    fields: dict[str, Any] = {"stage": name, "config": config_json, "seed": seed, "upstreams": upstream_keys}
    if sources is not None:
        fields["sources"] = sources
    material = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def dependency_key(upstream: PlannedStage, fields: tuple[str, ...] | None) -> str:
    """What a dependant's key takes from an upstream in the same plan: its whole key, or, where the dependant
    declares the only fields of the upstream's config it depends on (StageSpec.upstream_fields), the key of
    exactly those fields with the upstream's seed, upstream keys and sources (early cut-off)."""
    if fields is None:
        return upstream.key
    chosen = {f: upstream.config.get(f) for f in fields}
    return "fields:" + stage_key(upstream.name, chosen, upstream.seed, upstream.upstream_keys, upstream.sources)


def recorded_stage_key(plan: Plan, name: str, spec: StageSpec) -> str:
    """The key stage `name` of a recorded plan hashes to now, from its recorded config and seed, its upstreams'
    recorded keys, the keys of outputs it was given by path and the files its config names: what `rerun`
    compares with the recorded key, so a plan.json edited by hand can never save new work under an old key."""
    stage = plan.stages[name]
    # A record written before upstream_keys were recorded was keyed on its upstreams' whole keys.
    recorded_before_cutoff = stage.upstreams and not stage.upstream_keys
    fields = {} if recorded_before_cutoff else spec.upstream_fields
    upstream_keys = {u: dependency_key(plan.stages[u], fields.get(u)) for u in stage.upstreams}
    for upstream, out_dir in stage.external.items():
        upstream_keys[upstream] = resolve_external(name, upstream, Path(out_dir))[1]
    sources = _source_digest(name, spec, spec.config_type.model_validate(stage.config))
    return stage_key(name, stage.config, stage.seed, upstream_keys, sources)


def _source_digest(name: str, spec: Any, stage_config: Any) -> str | None:
    if spec.source_digest is None:
        return None
    try:
        return spec.source_digest(stage_config)
    except (OSError, ValueError) as err:  # a file the config names is missing or unreadable: the user's to fix
        raise UserError(f"stages.{name}: {err}") from None


def resolve_external(stage: str, upstream: str, given: Path) -> tuple[Path, str]:
    """(output directory, key) of an upstream given as a path instead of run in this pipeline.

    Accepts a finished stage directory of another run (with done.json and out/) or its out/;
    any other existing directory is taken as is and keyed by its resolved path.
    """
    path = Path(given).expanduser().resolve()
    if not path.exists():
        raise UserError(
            f"stages.{stage}.inputs.{upstream}: {path} does not exist "
            f"(it should be the output of a finished {upstream!r} stage)"
        )
    finished = finished_stage_output(path)
    if finished is not None:
        return finished
    return path, "path:" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def _topological_order(edges: dict[str, tuple[str, ...]], rank: dict[str, int]) -> list[str]:
    sorter = graphlib.TopologicalSorter(edges)
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise UserError(f"the stages form a cycle: {cycle}") from e
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda n: rank[n])
        order.extend(ready)
        sorter.done(*ready)
    return order


def check_world_size(
    name: str, spec: StageSpec, stage_config: Any, resources: Resources, merge_resources: Resources
) -> None:
    """A task runs as nodes x tasks_per_node processes only in a stage made for it (StageSpec.check_world_size),
    and only if its config allows that many; refused here, before any job is submitted."""
    where = f"the resources of stage {name!r} (slurm profile or slurm.resources.{name})"
    if merge_resources.world_size > 1:
        raise UserError(f"{where}: merge: nodes / tasks_per_node above 1, but a merge job is one process")
    world = resources.world_size
    if world == 1:
        return
    if spec.check_world_size is None:
        raise UserError(
            f"{where}: nodes x tasks_per_node = {world}, but each {name!r} task is one process; only stages that "
            "train across processes (decompose) run a task on several"
        )
    try:
        spec.check_world_size(stage_config, world)
    except ValueError as e:
        raise UserError(
            f"stages.{name}: cannot run as {world} processes ({where}: nodes x tasks_per_node): {e}"
        ) from None


def build_plan(
    config: BaseModel, registry: dict[str, StageSpec], modules: dict[str, str], profile: SlurmProfile
) -> Plan:
    """Resolve the pipeline's stages into a Plan. Raises UserError on any inconsistency."""
    chosen = configured_stages(config)
    rank = {name: i for i, name in enumerate(registry)}
    edges: dict[str, tuple[str, ...]] = {}
    external: dict[str, dict[str, Path]] = {}
    for name, stage_config in chosen.items():
        spec = registry[name]
        ups: list[str] = []
        ext: dict[str, Path] = {}
        for upstream in spec.upstreams + spec.optional_upstreams:
            if upstream not in registry:
                raise UserError(f"stage {name!r} declares an unknown upstream stage {upstream!r}")
            required = upstream in spec.upstreams
            if upstream in chosen:
                ups.append(upstream)
            elif upstream in stage_config.inputs:
                ext[upstream] = Path(stage_config.inputs[upstream])
            elif required:
                raise UserError(
                    f"stage {name!r} needs upstream {upstream!r}: add a `stages.{upstream}` section "
                    f"or set `stages.{name}.inputs.{upstream}` to the output of a finished {upstream!r} stage"
                )
        unknown_inputs = set(stage_config.inputs) - set(spec.upstreams + spec.optional_upstreams)
        if unknown_inputs:
            raise UserError(
                f"stages.{name}.inputs: {sorted(unknown_inputs)} are not upstreams of {name!r} "
                f"(its upstreams: {list(spec.upstreams + spec.optional_upstreams)})"
            )
        edges[name] = tuple(ups)
        external[name] = ext

    plan = Plan()
    for name in _topological_order(edges, rank):
        spec = registry[name]
        stage_config = chosen[name]
        ext_dirs: dict[str, str] = {}
        upstream_keys: dict[str, str] = {}
        for upstream in edges[name]:
            fields = spec.upstream_fields.get(upstream)
            unknown = set(fields or ()) - set(registry[upstream].config_type.model_fields)
            if unknown:  # a stage definition's mistake, caught before it could silently key on nothing
                raise UserError(f"stage {name!r} keys on fields {sorted(unknown)} that {upstream!r} configs lack")
            upstream_keys[upstream] = dependency_key(plan.stages[upstream], fields)
        for upstream, given in external[name].items():
            out_dir, upstream_keys[upstream] = resolve_external(name, upstream, given)
            ext_dirs[upstream] = str(out_dir)
        seed = stage_seed(config.run.seed, name)
        num_tasks = int(spec.num_tasks(stage_config))
        if num_tasks < 1:
            raise UserError(f"stages.{name}: the config gives {num_tasks} tasks; at least 1 is needed")
        resources, merge_resources = resolve_resources(profile, name, resource_override(config, name))
        check_world_size(name, spec, stage_config, resources, merge_resources)
        config_json = stage_config.model_dump(mode="json")
        sources = _source_digest(name, spec, stage_config)
        plan.stages[name] = PlannedStage(
            name=name,
            module=modules[name],
            config=config_json,
            upstreams=edges[name],
            external=ext_dirs,
            key=stage_key(name, config_json, seed, upstream_keys, sources),
            seed=seed,
            num_tasks=num_tasks,
            resources=resources,
            merge_resources=merge_resources,
            kept_on_redo=tuple(spec.kept_on_redo),
            upstream_keys=upstream_keys,
            sources=sources,
        )
    return plan
