"""Unit tests of SPD building blocks: hard sigmoids, components, masks, wrapper, schedules, assignment."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from spd.models import ComponentModel, LinearComponents, MaskInfo, insert_identity_operations
from spd.models.component_model import expand_module_patterns
from spd.models.sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
from spd.schedules import ScheduleConfig, coeff_warmup_factor, scheduled_value
from spd.train.assignment import min_cost_assignment


def test_lower_leaky_forward_clamps_and_backward_leaks_only_upward() -> None:
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = lower_leaky_hard_sigmoid(z)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    # grad < 0 everywhere: below 0 leaks 0.01*grad; (0,1] passes; >1 blocks
    (y * torch.full_like(y, -1.0)).sum().backward()
    assert z.grad.tolist() == pytest.approx([-0.01, -0.01, -0.01, -1.0, -1.0, 0.0])
    z.grad = None
    y = lower_leaky_hard_sigmoid(z)
    y.sum().backward()  # grad > 0: nothing leaks below 0
    assert z.grad.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0, 0.0])


def test_upper_leaky_values_and_grads() -> None:
    z = torch.tensor([-1.0, 0.3, 2.0], requires_grad=True)
    y = upper_leaky_hard_sigmoid(z)
    assert y.tolist() == pytest.approx([0.0, 0.3, 1.01])
    y.sum().backward()
    assert z.grad.tolist() == pytest.approx([0.0, 1.0, 0.01])


def test_linear_components_forward_with_mask_delta_bias() -> None:
    torch.manual_seed(0)
    comp = LinearComponents(3, 4, 5, bias=torch.arange(4.0))
    x, m, delta, dm = torch.randn(2, 3), torch.rand(2, 5), torch.randn(4, 3), torch.rand(2)
    expected = ((x @ comp.V) * m) @ comp.U + dm[:, None] * (x @ delta.T) + torch.arange(4.0)
    assert torch.allclose(comp(x, m, delta, dm), expected, atol=1e-6)
    assert comp.weight.shape == (4, 3)
    assert comp.V.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.8)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_wrapper_replaces_only_masked_modules_and_routes() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    model = ComponentModel(target, {"a": 6, "b": 5})
    x = torch.randn(7, 3)
    assert torch.equal(model(x), target(x))
    comp = model.components("a")
    mask = torch.rand(7, 6)
    out = model(x, {"a": MaskInfo(mask=mask)})
    assert torch.allclose(out, target.b(torch.relu(comp(x, mask))), atol=1e-6)
    routing = torch.tensor([True, False] * 3 + [True])
    routed = model(x, {"a": MaskInfo(mask=mask, routing=routing)})
    assert torch.allclose(routed[routing], out[routing]) and torch.allclose(routed[~routing], target(x)[~routing])
    # with all-ones masks and the delta term the target is reproduced exactly
    deltas = model.deltas()
    ones = {p: MaskInfo(mask=torch.ones(7, c), delta=deltas[p]) for p, c in model.module_to_c.items()}
    assert torch.allclose(model(x, ones), target(x), atol=1e-5)
    _, acts = model.forward_with_inputs(x)
    assert torch.equal(acts["a"], x) and acts["b"].shape == (7, 4)
    assert not model._components["a"]._forward_hooks and not target.a._forward_hooks


def test_module_patterns_errors() -> None:
    target = TwoLayer()
    assert expand_module_patterns(target, [("*", 2)]) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="matches no module"):
        expand_module_patterns(target, [("zzz", 2)])
    with pytest.raises(ValueError, match="more than one"):
        expand_module_patterns(target, [("a", 2), ("[ab]", 3)])


def test_identity_insertion_keeps_outputs_and_is_decomposable() -> None:
    torch.manual_seed(0)
    target = TwoLayer()
    x = torch.randn(4, 3)
    before = target(x)
    paths = insert_identity_operations(target, ["b"])
    assert paths == ["b.pre_identity"]
    assert torch.allclose(target(x), before)
    model = ComponentModel(target, {"b.pre_identity": 4})
    assert torch.equal(model.target_weight("b.pre_identity"), torch.eye(4))


def test_schedules() -> None:
    cos = ScheduleConfig(start_val=1.0, final_val_frac=0.0, fn_type="cosine")
    assert scheduled_value(0, 11, cos) == pytest.approx(1.0)
    assert scheduled_value(5, 11, cos) == pytest.approx(0.5)
    assert scheduled_value(10, 11, cos) == pytest.approx(0.0, abs=1e-12)
    lin = ScheduleConfig(start_val=2.0, warmup_pct=0.2, final_val_frac=0.5, fn_type="linear")
    assert scheduled_value(1, 10, lin) == pytest.approx(1.0)  # warm-up: 2 * 1/2
    assert scheduled_value(2, 10, lin) == pytest.approx(2.0)
    assert scheduled_value(9, 10, lin) == pytest.approx(1.0)
    assert coeff_warmup_factor(5, 100, 0.1) == 0.5 and coeff_warmup_factor(50, 100, 0.1) == 1.0
    with pytest.raises(ValueError):
        ScheduleConfig(fn_type="constant", final_val_frac=0.0)


def test_hungarian_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    for n, m in [(3, 3), (3, 5), (4, 6)]:
        cost = torch.rand(n, m, generator=g).tolist()
        got = min_cost_assignment(cost)
        best = min(itertools.permutations(range(m), n), key=lambda p: sum(cost[i][p[i]] for i in range(n)))
        assert sum(cost[i][got[i]] for i in range(n)) == pytest.approx(sum(cost[i][best[i]] for i in range(n)))


def test_spd_imports_neither_pipeline_nor_stages() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "spd"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for bad in ("import pipeline", "from pipeline", "import stages", "from stages"):
            assert bad not in text, f"{path} contains {bad!r}"


@pytest.mark.parametrize("kind", ["mlp", "vector_mlp"])
def test_ci_fns_compute_all_zero_rows_once_with_identical_values_and_gradients(kind: str) -> None:
    """Sparse toy inputs: all-zero rows go through the per-subcomponent MLPs once; nothing else changes."""
    from spd.models.ci_fns import make_ci_fn

    torch.manual_seed(0)
    C, d = 6, 4
    fn = make_ci_fn(kind, C, d, [5]).double()
    x = torch.randn(2, 100, C if kind == "mlp" else d, dtype=torch.float64)
    x[:, torch.randperm(100)[:70]] = 0.0
    x.requires_grad_(True)
    seen: list[int] = []
    plain = fn._mlp
    fn._mlp = lambda rows: (seen.append(rows.reshape(-1, rows.shape[-1]).shape[0]), plain(rows))[1]
    out = fn(x)
    assert seen == [2 * 30 + 1]  # the non-zero rows plus one zero row
    expected = plain(x)
    assert torch.equal(out, expected)
    params = [x, *fn.parameters()]
    got = torch.autograd.grad((out * expected.detach()).sum(), params)
    want = torch.autograd.grad((expected * expected.detach()).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
