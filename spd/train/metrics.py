"""Evaluation metrics (the reference implementation's): CI-L0, MMCS / ML2R, IdentityCIError / DenseCIError."""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import Tensor

from spd.models.component_model import ComponentModel
from spd.train.assignment import greedy_assignment, min_cost_assignment


def ci_l0(ci: dict[str, Tensor], threshold: float) -> dict[str, float]:
    """Per module: mean over positions of the number of subcomponents with CI > threshold."""
    return {p: float((g > threshold).float().sum(-1).mean()) for p, g in ci.items()}


def group_sums(per_module: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    """Per group, the sum of the values of the modules that start with a match of one of its fnmatch patterns
    (the reference's CI_L0 groups match pattern prefixes: `layers.*.mlp` covers `layers.0.mlp_in`)."""
    return {
        name: sum(v for path, v in per_module.items() if any(fnmatch(path, pat + "*") for pat in patterns))
        for name, patterns in groups.items()
    }


def ci_mean_per_component(ci: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per module, the mean CI of each component over all positions (a C-vector on the CPU)."""
    return {p: g.detach().float().reshape(-1, g.shape[-1]).mean(0).cpu() for p, g in ci.items()}


def activation_density(ci: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Per module, the share of positions where each component's CI exceeds `threshold` (a C-vector on the CPU):
    how often a component fires, the quantity whose spread tells dead and dense components apart."""
    return {p: (g.detach() > threshold).float().reshape(-1, g.shape[-1]).mean(0).cpu() for p, g in ci.items()}


def identity_ci_error(ci: Tensor, tol: float = 0.1) -> int:
    """Distance of a (n_inputs x C) CI matrix from a permuted identity.

    Columns are matched to rows (Hungarian, greedy at >= 500); counts off-diagonal entries > tol plus
    diagonal entries < 1 - tol. A correct toy decomposition gives 0.
    """
    rows = ci.detach().cpu().tolist()
    n, m = ci.shape
    if n > m:
        return int((ci > tol).sum()) + n  # cannot even place one column per input
    assign = greedy_assignment(rows) if min(n, m) >= 500 else min_cost_assignment([[-x for x in r] for r in rows])
    diag = torch.tensor([rows[i][assign[i]] for i in range(n)])
    return int((ci > tol).sum()) - int((diag > tol).sum()) + int((diag < 1 - tol).sum())


def dense_ci_error(ci: Tensor, k: int, tol: float = 0.1) -> int:
    """Distance from "k columns carry the inputs, the others stay off", as the reference's dense pattern counts
    it (with its only used setting, one strong entry per column): after sorting columns by total CI mass
    (descending), each of the first k columns costs 1 when none of its entries reaches 1 - tol, and every
    entry above tol in the other columns costs 1. A first-k column with one strong entry and others in
    between costs nothing: on a dense target, inputs may share a component partially."""
    order = ci.sum(0).argsort(descending=True)
    strong, rest = ci[:, order[:k]], ci[:, order[k:]]
    columns_without_strong_entry = int((~(strong >= 1 - tol).any(dim=0)).sum())
    return columns_without_strong_entry + int((rest > tol).sum())


def ci_pattern_errors(ci: dict[str, Tensor], patterns: dict[str, tuple[str, int]], tol: float = 0.1) -> dict[str, int]:
    """Per module error for its expected pattern ('identity', n) or ('dense', k), plus `total`."""
    out = {}
    for path, (kind, k) in patterns.items():
        if path not in ci:
            continue
        out[path] = identity_ci_error(ci[path], tol) if kind == "identity" else dense_ci_error(ci[path], k, tol)
    out["total"] = sum(out.values())
    return out


def subcomponent_norms(model: ComponentModel, path: str) -> Tensor:
    """Frobenius norm of each rank-one subcomponent u_c v_c^T = ||u_c|| · ||v_c||."""
    comp = model.components(path)
    return comp.V.norm(dim=0) * comp.U.norm(dim=1)


def n_large_subcomponents(model: ComponentModel, path: str, frac: float = 0.1) -> int:
    """Subcomponents whose norm exceeds `frac` of the largest one."""
    norms = subcomponent_norms(model, path)
    return int((norms > frac * norms.max()).sum())


def mmcs_ml2r(model: ComponentModel, path: str) -> tuple[float, float]:
    """Mean max cosine similarity and mean L2 ratio between target columns W[:, j] and the best subcomponent.

    Subcomponent c's column j is u_c · V[j, c]; c* maximises the cosine with W[:, j].
    """
    with torch.no_grad():
        W = model.target_weight(path)  # d_out x d_in
        comp = model.components(path)
        cols = comp.V.unsqueeze(-1) * comp.U.unsqueeze(0)  # d_in x C x d_out: column j of each subcomponent
        target_cols = W.T.unsqueeze(1)  # d_in x 1 x d_out
        cos = torch.nn.functional.cosine_similarity(cols, target_cols, dim=-1)  # d_in x C
        best = cos.argmax(dim=1)
        idx = torch.arange(W.shape[1], device=W.device)
        ratio = cols[idx, best].norm(dim=-1) / W.T.norm(dim=-1)
        return float(cos[idx, best].mean()), float(ratio.mean())
