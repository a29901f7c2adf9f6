"""Stage modules: thin typed wrappers that call into spd/.

`BUILTIN_STAGE_MODULES` is the list the orchestrator's registry loads; the seven names and
their edges are fixed: decompose -> harvest -> autointerp -> detection / fuzzing, harvest -> intruder,
decompose -> attributions (docs/stages.md).

Every stage module is imported on the login node (plan, run, status, ...): it imports no torch at module level.
Configs come from torch-free modules (spd/<package>/config.py); run_task and merge import the computation in
their bodies (tests/test_login_imports.py).
"""

BUILTIN_STAGE_MODULES: tuple[str, ...] = (
    "stages.decompose",
    "stages.harvest",
    "stages.attributions",
    "stages.autointerp",
    "stages.detection",
    "stages.fuzzing",
    "stages.intruder",
)

# Run-level tools, not stages of the DAG: they read a run's stores (and its run record, the `status --json`
# object) on a login or interactive node. The CLI reaches them through the registry (pipeline.registry.tool),
# which imports one only when its command runs (their computation imports duckdb, matplotlib, torch).
BUILTIN_TOOL_MODULES: dict[str, str] = {
    "report": "stages.report",
    "serve": "stages.serve",
}
