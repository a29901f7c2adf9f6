"""The configuration reference, generated from the pydantic schema of pipeline files.

    python -m pipeline.config_reference > docs/config-reference.md

A test checks that docs/config-reference.md equals this output, so the reference never drifts from the code.
Extra stage plugins (SPD_PIPELINE_PLUGINS) are left out: the reference documents the built-in stages.
"""

from __future__ import annotations

import json
import os
from typing import Any

HEADER = """# Configuration reference

Generated from the pydantic models by `python -m pipeline.config_reference > docs/config-reference.md`; do not
edit by hand (tests/test_config_reference.py fails when it is stale). `python run.py schema` prints the same
schema as JSON. Every section forbids unknown keys. How the pieces fit: docs/configuration.md.
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(prop: dict[str, Any]) -> str:
    """A short, readable type: model names link to their section below."""
    if "$ref" in prop:
        name = _ref_name(prop["$ref"])
        return f"[{name}](#{name.lower()})"
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " \\| ".join(_type(p) for p in prop[key])
    kind = prop.get("type")
    if kind == "array":
        return f"list[{_type(prop.get('items', {}))}]"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"dict[str, {_type(extra)}]" if isinstance(extra, dict) and extra else "dict"
    return str(kind) if kind else "any"


def _default(name: str, prop: dict[str, Any], required: set[str]) -> str:
    if name in required:
        return "required"
    if "default" in prop:
        return f"`{json.dumps(prop['default'])}`"
    return "(its defaults)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(model: dict[str, Any]) -> list[str]:
    props = model.get("properties", {})
    if not props:
        return ["(no fields)", ""]
    required = set(model.get("required", []))
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, prop in props.items():
        lines.append(
            f"| `{name}` | {_type(prop)} | {_default(name, prop, required)} | {_cell(prop.get('description', ''))} |"
        )
    return [*lines, ""]


def render_config_reference(schema: dict[str, Any]) -> str:
    out = [HEADER, "## Pipeline file", ""]
    out += _table(schema)
    for name, model in sorted(schema.get("$defs", {}).items()):
        out += [f"## {name}", ""]
        if model.get("description"):
            out += [_cell(model["description"]), ""]
        if "enum" in model:
            out += [f"One of {_type(model)}.", ""]
            continue
        out += _table(model)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    os.environ.pop("SPD_PIPELINE_PLUGINS", None)
    from pipeline.config import pipeline_schema

    print(render_config_reference(pipeline_schema()), end="")


if __name__ == "__main__":
    main()
