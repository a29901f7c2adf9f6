"""SPD training: config, schedules, metrics and the loop."""

from typing import Any

from spd.train.config import SPDConfig

__all__ = ["Decomposer", "SPDConfig", "decompose"]


def __getattr__(name: str) -> Any:
    # The loop is imported lazily: the losses (spd.losses.persistent_pgd) import spd.train.config, and the loop
    # imports the losses, so an eager import here would make `import spd.losses.persistent_pgd` circular.
    if name in ("Decomposer", "decompose"):
        from spd.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'spd.train' has no attribute {name!r}")
