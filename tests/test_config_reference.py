"""docs/config-reference.md is generated from the pydantic schema and must match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import pipeline_schema
from pipeline.config_reference import render_config_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"


def test_config_reference_is_up_to_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPD_PIPELINE_PLUGINS", raising=False)  # the reference documents the built-in stages
    expected = render_config_reference(pipeline_schema())
    assert DOC.read_text() == expected, "regenerate: python -m pipeline.config_reference > docs/config-reference.md"
    for stage in ("DecomposeConfig", "HarvestConfig", "AttributionsConfig", "AutointerpConfig", "DetectionConfig"):
        assert f"## {stage}" in expected
    assert "t_source" not in expected  # test-only stages stay out
