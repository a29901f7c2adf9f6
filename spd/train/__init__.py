"""SPD training: config, metrics and the loop (schedules live in spd.schedules, below the losses too).

`SPDConfig` (spd.train.config) imports no torch, so a pipeline file validates on a login node without it; the
loop loads on first use of `decompose` / `Decomposer` (spd.lazy), the data-parallel helpers
(spd.train.distributed) on first use of `data_parallel` / `ProcessGroupSpec` / `DataParallel`.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.train.config": ("SPDConfig",),
        "spd.train.distributed": ("DataParallel", "ProcessGroupSpec", "data_parallel"),
        "spd.train.loop": ("Decomposer", "decompose"),
    },
)
