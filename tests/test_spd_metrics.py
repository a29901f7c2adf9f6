"""Eval metric tests: Identity/Dense CI errors, CI-L0, MMCS / ML2R."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spd.models import ComponentModel
from spd.train.metrics import ci_l0, dense_ci_error, identity_ci_error, mmcs_ml2r, n_large_subcomponents


def test_identity_ci_error() -> None:
    eye = torch.eye(3)
    padded = torch.cat([eye[:, [2, 0, 1]], torch.zeros(3, 4)], dim=1)  # permuted identity, extra dead columns
    assert identity_ci_error(padded) == 0
    broken = padded.clone()
    broken[0, 5] = 0.5  # one extra active entry
    broken[1, 0] = 0.7  # one weak diagonal entry
    assert identity_ci_error(broken) == 2


def test_dense_ci_error() -> None:
    ci = torch.zeros(4, 6)
    ci[:, [1, 4]] = 1.0
    assert dense_ci_error(ci, k=2) == 0
    ci[0, 1] = 0.5  # a weak entry in a first-k column that has strong ones: free
    ci[2, 0] = 0.3  # an entry above tol outside the first k columns: 1
    assert dense_ci_error(ci, k=2) == 1
    ci[:, 4] = 0.6  # a first-k column with no entry >= 1 - tol: 1 for the column, not one per entry
    assert dense_ci_error(ci, k=2) == 2


def test_dense_ci_error_counts_as_the_reference_dense_pattern() -> None:
    """The hand-made case of the issue (k = 2, tol 0.1): strong column 0 and 2 carry entries of 0.3-0.7 too."""
    ci = torch.tensor([[0.9, 0.0, 0.3, 0.0], [0.6, 0.0, 0.4, 0.0], [0.7, 0.0, 1.0, 0.0]])
    assert dense_ci_error(ci, k=2, tol=0.1) == 0
    assert dense_ci_error(ci, k=1, tol=0.1) == 3  # column 2 is now "other": its three entries above tol count
    assert dense_ci_error(ci, k=3, tol=0.1) == 1  # the third column (all zero) has no strong entry
    # at 0.95, column 0's best entry (0.9) falls short, column 2's 1.0 does not
    assert dense_ci_error(ci, k=2, tol=0.05) == 1


def test_ci_l0() -> None:
    assert ci_l0({"a": torch.tensor([[0.0, 0.2, 0.9], [0.05, 0.0, 0.0]])}, 0.1) == {"a": 1.0}


def test_mmcs_ml2r_and_large_count_on_perfect_decomposition() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    holder = nn.Sequential()
    holder.add_module("lin", lin)
    model = ComponentModel(holder, {"lin": 5})
    with torch.no_grad():
        comp = model.components("lin")
        comp.V.zero_()
        comp.U.zero_()
        for j in range(3):  # subcomponent j = column j of W exactly
            comp.V[j, j] = 1.0
            comp.U[j] = lin.weight[:, j]
    mmcs, ml2r = mmcs_ml2r(model, "lin")
    assert mmcs == pytest.approx(1.0) and ml2r == pytest.approx(1.0)
    assert n_large_subcomponents(model, "lin") == 3
