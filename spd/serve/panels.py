"""The component panels `serve` shows: the report's per-component details (examples, token statistics, label,
scores, attributions, co-firing, logit effects), gathered once from the run's stores by spd.report and cached
under RUN/serve/ so that restarting the server does not read every store again.

The cache is keyed by a fingerprint of the stores' files (path, size, modification time under each stage's output
directory) and the report's format: a stage that reran changes its files, hence the key, and the panels are
gathered afresh. Only the newest cache file is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd.report.data import REPORT_FORMAT, gather_report
from spd.report.locate import SPD_STAGES, RunRecord
from spd.report.render import panel_meta
from spd.utils import atomic_write_bytes

CACHE_PREFIX = "panels-"


@dataclass(frozen=True)
class Panels:
    """details: component key -> the report panel's data; tokens: token id (str) -> display text; meta: what the
    panel script reads besides (ci_threshold, sections, scorers, options)."""

    details: dict[str, dict[str, Any]]
    tokens: dict[str, str]
    meta: dict[str, Any]

    def facts(self, key: str) -> dict[str, Any] | None:
        """The short form the prompt view lists beside an active component: label, confidence, scores, density."""
        detail = self.details.get(key)
        if detail is None:
            return None
        label = detail.get("label") or {}
        return {
            "label": label.get("label"),
            "confidence": label.get("confidence"),
            "density": detail.get("density"),
            "scores": {name: (s or {}).get("score") for name, s in (detail.get("scores") or {}).items()},
        }

    def panel(self, key: str) -> dict[str, Any] | None:
        """A component's panel data and the texts of the tokens it mentions."""
        detail = self.details.get(key)
        if detail is None:
            return None
        return {"detail": detail, "tokens": {t: self.tokens[t] for t in _token_ids(detail) if t in self.tokens}}


def _token_ids(detail: dict[str, Any]) -> set[str]:
    """Token ids (as strings) a panel's detail mentions: examples, token statistics, logit effects, attributions."""
    ids: set[int] = set()
    for kind in ("top", "random"):
        for example in (detail.get("examples") or {}).get(kind, []):
            ids.update(example[0])
    for rows in (detail.get("token_stats") or {}).values():
        ids.update(row[0] for row in rows)
    for direction in ("pos", "neg"):
        ids.update(row[0] for row in (detail.get("logit_effects") or {}).get(direction, []))
    for rows in (detail.get("attributions") or {}).values():
        for node, _ in rows:
            kind, _, index = node.rpartition(":")
            if kind in ("token", "output") and index.isdigit():
                ids.add(int(index))
    return {str(i) for i in ids}


def stores_fingerprint(status: dict[str, Any]) -> str:
    """A hash of every file under the stages' output directories (relative path, size, mtime) and the format;
    `status` is the run record (the status JSON) that says where those directories are."""
    record = RunRecord.from_status(status)
    digest = hashlib.sha256(REPORT_FORMAT.encode())
    for stage in SPD_STAGES:
        out = record.out_dir(stage)
        digest.update(f"\0{stage}\0{out}\0".encode())
        if out is None or not out.is_dir():
            continue
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(out)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_panels(run_dir: Path, status: dict[str, Any], cache_dir: Path, log=print) -> Panels:
    """The run's panels from cache_dir when its stores are unchanged, else gathered (and cached)."""
    fingerprint = stores_fingerprint(status)
    cached = cache_dir / f"{CACHE_PREFIX}{fingerprint}.json.gz"
    if cached.is_file():
        try:
            data = json.loads(gzip.decompress(cached.read_bytes()))
            return Panels(data["details"], data["tokens"], data["meta"])
        except (OSError, ValueError, KeyError):
            log(f"serve: ignoring an unreadable panel cache {cached}")
    log("serve: gathering the component panels from the run's stores (cached for the next start)")
    model = gather_report(run_dir, status)
    panels = Panels(model["details"], model["tokens"], panel_meta(model))
    raw = json.dumps({"details": panels.details, "tokens": panels.tokens, "meta": panels.meta}, allow_nan=False)
    atomic_write_bytes(cached, gzip.compress(raw.encode(), compresslevel=3, mtime=0))
    for old in cache_dir.glob(f"{CACHE_PREFIX}*.json.gz"):
        if old != cached:
            old.unlink(missing_ok=True)
    return panels
