"""Stage modules: thin typed wrappers that call into spd/.

`BUILTIN_STAGE_MODULES` is the list the orchestrator's registry loads; the seven names and
their edges are fixed: decompose -> harvest -> autointerp -> detection / fuzzing, harvest -> intruder,
decompose -> attributions (docs/stages.md).
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
