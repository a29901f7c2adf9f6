"""The JSON API's requests and answers: what each view computes from a ServedRun (docs/serve.md documents them).
Views run on the run's model thread (ServedRun.call), one at a time.

Every view takes a prompt as `text` (tokenized with the run's tokenizer) or as `token_ids`, answers with the
prompt's tokens, and names components by the stores' keys ('<module>:<index>'), so a notebook can join the
answers with the harvest, labels and scores.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.serve.graph import OUTPUT_LAYER, TOKEN_LAYER, prompt_graph, strongest_edges
from spd.serve.interventions import Change, apply_changes, base_masks
from spd.serve.prompt import PromptRun, active_components, kl_list, masked_logits, run_prompt, top_predictions
from spd.serve.session import ServedRun

HISTORY_LENGTH = 20  # interventions kept to compare (newest last)
OUTPUT_EDGES_KEPT = 10  # the logit's strongest incoming edges are kept whatever the pruning (the answer's anchor)


class PromptRequest(BaseModel):
    """A prompt as text or token ids (exactly one), the CI threshold (default: the harvest's) and top-k."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    token_ids: list[int] | None = None
    ci_threshold: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int = Field(5, ge=1, le=100)

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptRequest:
        if (self.text is None) == (self.token_ids is None):
            raise ValueError("give the prompt as exactly one of 'text' or 'token_ids'")
        return self


class GraphRequest(PromptRequest):
    """The graph's output logit (position, default the last; token, default the target's prediction there) and
    its pruning: the strongest edges carrying keep_fraction of the total |attribution|, at most max_edges."""

    position: int | None = None
    token_id: int | None = Field(None, ge=0)
    keep_fraction: float = Field(0.8, gt=0.0, le=1.0)
    max_edges: int = Field(1000, ge=1, le=200_000)


class ChangeRequest(BaseModel):
    """Switch component `key` ('<module>:<index>') off or on at `position` (None: every position)."""

    model_config = ConfigDict(extra="forbid")
    key: str
    position: int | None = None
    action: Literal["off", "on"] = "off"

    def change(self) -> Change:
        module, sep, index = self.key.rpartition(":")
        if not sep or not index.isdigit():
            raise ValueError(f"component key {self.key!r} is not '<module>:<index>'")
        return Change(module, int(index), self.position, self.action == "on")


class InterventionRequest(PromptRequest):
    """Changes applied to the base masks ('ci': the CI-masked model; 'all': every component on)."""

    changes: list[ChangeRequest] = Field(default_factory=list, max_length=10_000)
    base: Literal["ci", "all"] = "ci"


def prompt_ids(run: ServedRun, request: PromptRequest) -> list[int]:
    """The request's token ids, checked against the vocabulary and the decomposition's window length."""
    ids = run.encode(request.text) if request.text is not None else list(request.token_ids or [])
    if not ids:
        raise ValueError("the prompt is empty")
    bad = [t for t in ids if not 0 <= t < run.vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of {run.vocab_size}")
    if run.max_tokens is not None and len(ids) > run.max_tokens:
        raise ValueError(
            f"the prompt has {len(ids)} tokens; the decomposition was trained on windows of {run.max_tokens}"
        )
    return ids


def _threshold(run: ServedRun, request: PromptRequest) -> float:
    return run.ci_threshold if request.ci_threshold is None else request.ci_threshold


def _tokens(run: ServedRun, ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": t, "text": run.token_text(t)} for t in ids]


def _predictions(run: ServedRun, preds: list[tuple[int, float]], texts: dict[str, str]) -> list[list[Any]]:
    for token_id, _ in preds:
        texts.setdefault(str(token_id), run.token_text(token_id))
    return [[t, round(p, 6)] for t, p in preds]


def _facts(run: ServedRun, keys: set[str]) -> dict[str, Any]:
    return {key: run.panels.facts(key) for key in sorted(keys)}


def prompt_view(run: ServedRun, request: PromptRequest) -> dict[str, Any]:
    """Tokens; per position the components above the CI threshold (largest CI first) and the target's and the
    CI-masked model's top predictions with the KL between them; the facts of every component listed."""
    ids = prompt_ids(run, request)
    threshold = _threshold(run, request)
    result = run_prompt(run.model, ids)
    active = active_components(result.ci, threshold)
    texts: dict[str, str] = {}
    kl = kl_list(result.target_logits, result.masked_logits)
    target, masked = (
        top_predictions(result.target_logits, request.top_k),
        top_predictions(result.masked_logits, request.top_k),
    )
    positions, keys = [], set()
    for p in range(len(ids)):
        listed = [
            (f"{module}:{c}", float(result.ci[module][p, c]))
            for module, mask in active.items()
            for c in mask[p].nonzero().flatten().tolist()
        ]
        listed.sort(key=lambda kv: -kv[1])
        keys.update(k for k, _ in listed)
        positions.append(
            {
                "active": [[k, round(v, 4)] for k, v in listed],
                "target": _predictions(run, target[p], texts),
                "masked": _predictions(run, masked[p], texts),
                "kl_masked": kl[p],
            }
        )
    return {
        "tokens": _tokens(run, ids),
        "ci_threshold": threshold,
        "positions": positions,
        "components": _facts(run, keys),
        "token_texts": texts,
    }


def graph_view(run: ServedRun, request: GraphRequest) -> dict[str, Any]:
    """The prompt's attribution graph (spd/serve/graph.py), pruned; nodes without a kept edge are left out
    (the output node always stays)."""
    ids = prompt_ids(run, request)
    threshold = _threshold(run, request)
    position = len(ids) - 1 if request.position is None else request.position
    if not 0 <= position < len(ids):
        raise ValueError(f"position {position} is outside the prompt's {len(ids)} tokens")
    result = run_prompt(run.model, ids)
    token_id = int(result.target_logits[position].argmax()) if request.token_id is None else request.token_id
    graph = prompt_graph(
        run.model, ids, result.ci, threshold, run.embedding_module, run.unembedding_module, position, token_id
    )
    output = len(graph.nodes) - 1
    kept = strongest_edges(graph.values, request.keep_fraction, request.max_edges)
    incoming = (graph.targets == output).nonzero().flatten()  # the logit's own strongest inputs always stay
    incoming = incoming[strongest_edges(graph.values[incoming], 1.0, OUTPUT_EDGES_KEPT)]
    kept = torch.cat([kept, incoming[~torch.isin(incoming, kept)]])
    edges = graph.edges(kept)
    used = sorted({s for s, _, _ in edges} | {t for _, t, _ in edges} | {output})
    nodes = []
    for n in used:
        node = graph.nodes[n]
        is_component = node.layer not in (TOKEN_LAYER, OUTPUT_LAYER)
        nodes.append(
            {
                "id": node.id,
                "layer": node.layer,
                "position": node.position,
                "index": node.index,
                "ci": round(node.value, 4) if is_component else None,
                "key": f"{node.layer}:{node.index}" if is_component else None,
            }
        )
    total = float(graph.values.abs().sum())
    kept_abs = float(graph.values[kept].abs().sum()) if len(kept) else 0.0
    probs = torch.softmax(result.target_logits[position].double(), -1)
    texts = {str(t): run.token_text(t) for t in {token_id, *ids}}
    return {
        "tokens": _tokens(run, ids),
        "ci_threshold": threshold,
        "output": {
            "position": position,
            "token_id": token_id,
            "text": texts[str(token_id)],
            "logit": float(result.target_logits[position, token_id]),
            "prob": float(probs[token_id]),
        },
        "layers": graph.layers,
        "nodes": nodes,
        "edges": [[graph.nodes[s].id, graph.nodes[t].id, v] for s, t, v in edges],
        "n_nodes": len(graph.nodes),
        "n_edges": len(graph.values),
        "total_abs": total,
        "kept_abs": kept_abs,
        "causal_prefixes": graph.causal,
        "components": _facts(run, {n["key"] for n in nodes if n["key"]}),
        "token_texts": texts,
    }


class InterventionHistory:
    """The newest HISTORY_LENGTH interventions' summaries, numbered 1, 2, ... (thread-safe: requests run in a
    thread pool)."""

    def __init__(self) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=HISTORY_LENGTH)
        self._next = 1
        self._lock = threading.Lock()

    def add(self, summary: dict[str, Any]) -> int:
        with self._lock:
            entry_id, self._next = self._next, self._next + 1
            self._entries.append({"id": entry_id, **summary})
        return entry_id

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)


def intervention_view(run: ServedRun, request: InterventionRequest, history: InterventionHistory) -> dict[str, Any]:
    """The predictions with the changes applied, beside the target's and the base's, with KLs per position;
    a summary goes into `history`."""
    ids = prompt_ids(run, request)
    changes = [c.change() for c in request.changes]
    result: PromptRun = run_prompt(run.model, ids)
    base = base_masks(result.ci, request.base)
    masks = apply_changes(base, changes)
    base_logits = result.masked_logits if request.base == "ci" else masked_logits(run.model, ids, base)
    logits = masked_logits(run.model, ids, masks)
    texts: dict[str, str] = {}
    k = request.top_k
    target, base_top, new = (top_predictions(x, k) for x in (result.target_logits, base_logits, logits))
    kl_target = kl_list(result.target_logits, logits)
    kl_base = kl_list(base_logits, logits)
    positions = [
        {
            "target": _predictions(run, target[p], texts),
            "base": _predictions(run, base_top[p], texts),
            "intervened": _predictions(run, new[p], texts),
            "kl_target": kl_target[p],
            "kl_base": kl_base[p],
        }
        for p in range(len(ids))
    ]
    summary = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt": run.tokenizer.decode(ids, skip_special_tokens=False),
        "n_tokens": len(ids),
        "token_ids": ids,
        "base": request.base,
        "changes": [c.model_dump() for c in request.changes],
        "last_prediction": {"base": base_top[-1][0][0], "intervened": new[-1][0][0]},
        "token_texts": {str(t): texts[str(t)] for t in (base_top[-1][0][0], new[-1][0][0])},
        "kl_target_last": kl_target[-1],
        "kl_target_mean": sum(kl_target) / len(kl_target),
    }
    entry_id = history.add(summary)
    return {
        "id": entry_id,
        "tokens": _tokens(run, ids),
        "base": request.base,
        "changes": summary["changes"],
        "positions": positions,
        "components": _facts(run, {c.key for c in request.changes}),
        "token_texts": texts,
    }
