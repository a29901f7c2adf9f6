"""Output effects for the report: what each component writing straight into the residual stream does to the logits.

For a component c of a module whose output is the residual stream (an MLP's or attention's output projection:
the names in RESIDUAL_WRITERS, with an output as wide as the unembedding's input), its effect on the logits along
the direct path is u_c (its row of U, the direction it writes) through the final norm's linear part and the
unembedding: logits_c = W_U (g * u_c) after an RMSNorm, W_U (g * (u_c - mean(u_c))) after a LayerNorm (which
centres). This is the direct logit attribution without the final norm's division by the residual's scale and
without any later layer's reaction, so it says which tokens a component pushes up or down, not by how much in a
given context. The harvested output-token statistics beside it
are the measured counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spd.report.numbers import rounded

RESIDUAL_WRITERS = ("down_proj", "c_proj", "o_proj", "out_proj", "fc2", "dense_4h_to_h")
FINAL_NORMS = ("final_norm", "ln_f", "rms_f", "norm", "final_layer_norm", "final_layernorm")
NORM_HOLDERS = ("model", "transformer", "gpt_neox", "decoder")  # where HF-style targets keep their final norm
CHUNK_ROWS = 1024  # components per matrix product (memory: CHUNK_ROWS x vocab floats)


@dataclass
class LogitEffects:
    """key -> {'pos': [[token id, logit effect], ...], 'neg': [...]}, largest first, for residual writers only."""

    available: bool
    reason: str | None = None
    effects: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def token_ids(self) -> set[int]:
        return {int(t) for e in self.effects.values() for rows in e.values() for t, _ in rows}


def read_logit_effects(out_dir: Path | None, keys: list[str], k: int) -> LogitEffects:
    """The top-k positive and negative logit effects of the components `keys` ('<module>:<index>') that write to
    the residual stream; a decomposition that is not there, or a target without an unembedding, is reported."""
    if out_dir is None:
        return LogitEffects(False, "not part of this pipeline")
    if k <= 0:
        return LogitEffects(False, "not asked for")
    import torch

    from spd.models.checkpoint import load_decomposition

    try:
        model = load_decomposition(out_dir)
    except FileNotFoundError as e:
        return LogitEffects(False, f"no decomposition yet ({e})")
    except Exception as e:  # an optional panel: a decomposition that does not load is said, the page still builds
        return LogitEffects(False, f"cannot load the decomposition: {type(e).__name__}: {e}")
    target = model.target_model
    head = getattr(target, "lm_head", None)
    if head is None and hasattr(target, "get_output_embeddings"):
        head = target.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        return LogitEffects(False, "the target has no unembedding (not a language model)")
    w_u = head.weight.detach().float()  # [vocab, d_model]
    norm = final_norm(target, w_u.shape[1])
    wanted: dict[str, list[int]] = {}
    for key in keys:
        module, _, index = key.rpartition(":")
        if index.isdigit():
            wanted.setdefault(module, []).append(int(index))
    definition = "W_U (g * u_c), direct path, the final norm's scale ignored" + (
        "" if norm else "; no final norm found"
    )
    final = type(norm).__name__ if norm is not None else None
    data = LogitEffects(True, info={"modules": [], "definition": definition, "final_norm": final})
    with torch.no_grad():
        for module, indices in wanted.items():
            if module.rsplit(".", 1)[-1] not in RESIDUAL_WRITERS or module not in model.module_to_c:
                continue
            u = model.components(module).U.detach().float()  # [C, d_out]
            if u.shape[1] != w_u.shape[1]:
                continue
            data.info["modules"].append(module)
            for start in range(0, len(indices), CHUNK_ROWS):
                chunk = indices[start : start + CHUNK_ROWS]
                logits = through_final_norm(u[chunk], norm) @ w_u.T  # [chunk, vocab]
                top = logits.topk(min(k, logits.shape[1]), dim=1)
                bottom = (-logits).topk(min(k, logits.shape[1]), dim=1)
                for row, c in enumerate(chunk):
                    data.effects[f"{module}:{c}"] = {
                        "pos": [[int(t), rounded(v)] for t, v in zip(top.indices[row].tolist(), top.values[row].tolist(), strict=True)],
                        "neg": [[int(t), rounded(-v)] for t, v in zip(bottom.indices[row].tolist(), bottom.values[row].tolist(), strict=True)],
                    }  # fmt: skip
    return data


def final_norm(target: Any, width: int) -> Any:
    """The target's final norm (a module with a gain of `width`), looked up by the names our and Hugging Face
    targets use; None when there is none we recognise."""
    holders = [target]
    for name in NORM_HOLDERS:  # model.decoder (OPT), transformer (GPT-2, our Llama), gpt_neox
        for holder in list(holders):
            child = getattr(holder, name, None)
            if child is not None and all(child is not h for h in holders):
                holders.append(child)
    for name in FINAL_NORMS:
        for holder in holders:
            norm = getattr(holder, name, None)
            weight = getattr(norm, "weight", None)
            if weight is not None and tuple(weight.shape) == (width,):
                return norm
    return None


def through_final_norm(u: Any, norm: Any) -> Any:
    """Directions [n, d] through the final norm's linear part: centred first for a LayerNorm, then scaled by the
    gain; unchanged without a norm."""
    if norm is None:
        return u
    if "LayerNorm" in type(norm).__name__:
        u = u - u.mean(dim=-1, keepdim=True)
    return u * norm.weight.detach().float()
