"""Every example pipeline file is valid: a researcher copying one never starts from a broken file.

A file that configures a stage not implemented yet must fail with exactly that message (and nothing else).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import configured_stages, load_pipeline
from pipeline.errors import UserError
from pipeline.registry import stage_registry

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    unavailable = {name for name, spec in stage_registry().items() if not spec.available}
    text = path.read_text()
    used_unavailable = sorted(name for name in unavailable if f"\n  {name}:" in text)
    if used_unavailable:
        with pytest.raises(UserError) as err:
            load_pipeline(path)
        assert "not implemented yet" in str(err.value) and all(n in str(err.value) for n in used_unavailable)
        return
    config, _ = load_pipeline(path)
    assert configured_stages(config)
