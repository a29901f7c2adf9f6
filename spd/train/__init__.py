"""SPD training: config, metrics and the loop (schedules live in spd.schedules, below the losses too)."""

from spd.train.config import SPDConfig
from spd.train.loop import Decomposer, decompose

__all__ = ["Decomposer", "SPDConfig", "decompose"]
