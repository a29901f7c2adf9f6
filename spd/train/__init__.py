"""SPD training: config, metrics and the loop (schedules live in spd.schedules, below the losses too).

`SPDConfig` (spd.train.config) imports no torch, so a pipeline file validates on a login node without it; the
loop loads on first use of `decompose` / `Decomposer` (spd.lazy).
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__, {"Decomposer": "spd.train.loop", "SPDConfig": "spd.train.config", "decompose": "spd.train.loop"}
)

__all__ = ["Decomposer", "SPDConfig", "decompose"]
