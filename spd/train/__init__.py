"""SPD training: config, schedules, metrics and the loop."""

from spd.train.config import SPDConfig
from spd.train.loop import Decomposer, decompose

__all__ = ["Decomposer", "SPDConfig", "decompose"]
