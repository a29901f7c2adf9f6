"""SPD training: config, metrics and the loop (schedules live in spd.schedules, below the losses too).

`SPDConfig` (spd.train.config) imports no torch, so a pipeline file validates on a login node without it; the
loop loads on first use of `decompose` / `Decomposer` (spd.lazy), the data-parallel helpers
(spd.train.distributed) on first use of `data_parallel` / `ProcessGroupSpec` / `DataParallel`.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DataParallel": "spd.train.distributed",
        "Decomposer": "spd.train.loop",
        "ProcessGroupSpec": "spd.train.distributed",
        "SPDConfig": "spd.train.config",
        "data_parallel": "spd.train.distributed",
        "decompose": "spd.train.loop",
    },
)

__all__ = ["DataParallel", "Decomposer", "ProcessGroupSpec", "SPDConfig", "data_parallel", "decompose"]
