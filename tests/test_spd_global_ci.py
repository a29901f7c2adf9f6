"""Global CI function `global_reverse_residual`: shapes, block order, transitions, config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from spd.models import ComponentModel
from spd.models.global_ci import GlobalCiFnConfig, GlobalReverseResidualCiFn
from spd.train import SPDConfig
from spd.train.config import CiFnConfig

C = {"l0.up": 3, "l0.down": 2, "l1.up": 4, "l1.down": 5}
D_IN = {"l0.up": 6, "l0.down": 7, "l1.up": 6, "l1.down": 8}


def _cfg(**kw) -> GlobalCiFnConfig:
    blocks = [{"name": "layer_1", "patterns": ["l1.*"]}, {"name": "layer_0", "patterns": ["l0.*"]}]
    return GlobalCiFnConfig(**{"d_resid_ci_fn": 16, "reader_hidden_dims": [12], "block_groups": blocks, **kw})


def _inputs(lead: tuple[int, ...] = (2, 5)) -> dict[str, torch.Tensor]:
    return {p: torch.randn(*lead, d) for p, d in D_IN.items()}


@pytest.mark.parametrize("lead", [(2, 5), (4,)])
def test_output_shapes_per_module(lead: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    fn = GlobalReverseResidualCiFn(_cfg(transition_hidden_dim=24), C, D_IN)
    out = fn(_inputs(lead))
    assert set(out) == set(C)
    for p, c in C.items():
        assert out[p].shape == (*lead, c)
    assert fn.blocks == [["l1.up", "l1.down"], ["l0.up", "l0.down"]]  # list order; module order inside


def test_block_members_follow_patterns_then_module_order() -> None:
    """The reference's order: each listed pattern's matches in module order; `name` keeps older checkpoints'."""
    blocks = [{"name": "b", "patterns": ["l1.down", "l0.*", "l1.*"]}]
    cfg = GlobalCiFnConfig(d_resid_ci_fn=8, block_groups=blocks)
    assert GlobalReverseResidualCiFn(cfg, C, D_IN).blocks == [["l1.down", "l0.up", "l0.down", "l1.up"]]
    by_name = cfg.model_copy(update={"member_order": "name"})
    assert GlobalReverseResidualCiFn(by_name, C, D_IN).blocks == [["l0.down", "l0.up", "l1.down", "l1.up"]]


def test_transition_hidden_dim_shapes_and_last_block_has_none() -> None:
    with_hidden = GlobalReverseResidualCiFn(_cfg(transition_hidden_dim=24), C, D_IN)
    assert len(with_hidden.transitions) == 1  # two blocks: only the first has a transition
    assert [tuple(layer.W.shape) for layer in with_hidden.transitions[0]] == [(16, 24), (24, 16)]
    plain = GlobalReverseResidualCiFn(_cfg(), C, D_IN)
    assert [tuple(layer.W.shape) for layer in plain.transitions[0]] == [(16, 16)]
    assert tuple(plain.proj_in[0].W.shape) == (6 + 8, 16)  # l1.up (6) + l1.down (8)
    assert tuple(plain.readers[1][-1].W.shape) == (12, 2 + 3)
    assert isinstance(plain.reader_norms[0], nn.RMSNorm) and plain.reader_norms[0].weight.requires_grad


def test_reverse_residual_dependencies() -> None:
    """Block 0 (output end) sees only its own inputs; block 1 also sees block 0's through the residual."""
    torch.manual_seed(1)
    fn = GlobalReverseResidualCiFn(_cfg(transition_hidden_dim=24), C, D_IN)
    x = _inputs()
    base = fn(x)
    changed = fn({**x, "l0.up": x["l0.up"] + 1.0})
    assert torch.equal(base["l1.up"], changed["l1.up"]) and torch.equal(base["l1.down"], changed["l1.down"])
    assert not torch.allclose(base["l0.down"], changed["l0.down"])
    changed = fn({**x, "l1.down": x["l1.down"] + 1.0})
    assert not torch.allclose(base["l0.up"], changed["l0.up"]) and not torch.allclose(base["l1.up"], changed["l1.up"])
    # per-position: no mixing along the sequence (no attention transition)
    x2 = {p: v.clone() for p, v in x.items()}
    x2["l1.up"][:, 0] += 1.0
    out2 = fn(x2)
    assert torch.equal(out2["l0.up"][:, 1:], base["l0.up"][:, 1:])


def test_block_assignment_errors() -> None:
    with pytest.raises(ValueError, match="no block"):
        GlobalReverseResidualCiFn(_cfg(block_groups=[{"name": "a", "patterns": ["l1.*"]}]), C, D_IN)
    with pytest.raises(ValueError, match="matched by blocks"):
        blocks = [{"name": "a", "patterns": ["l1.*"]}, {"name": "b", "patterns": ["l*"]}]
        GlobalReverseResidualCiFn(_cfg(block_groups=blocks), C, D_IN)
    with pytest.raises(ValueError, match="matches no"):
        blocks = [{"name": "a", "patterns": ["l*"]}, {"name": "b", "patterns": ["zz"]}]
        GlobalReverseResidualCiFn(_cfg(block_groups=blocks), C, D_IN)
    with pytest.raises(ValidationError):
        GlobalCiFnConfig(d_resid_ci_fn=8, block_groups=[])


def test_spd_config_selects_ci_fn_by_mode() -> None:
    assert isinstance(SPDConfig(ci_fn={"fn_type": "shared_mlp", "hidden_dims": [4]}).ci_fn, CiFnConfig)
    cfg = SPDConfig(
        ci_fn={
            "mode": "global",
            "fn_type": "global_reverse_residual",
            "d_resid_ci_fn": 8,
            "reader_hidden_dims": [8],
            "transition_hidden_dim": 16,
            "block_groups": [{"name": "all", "patterns": ["*"]}],
        }
    )
    assert isinstance(cfg.ci_fn, GlobalCiFnConfig) and cfg.ci_fn.transition_hidden_dim == 16
    assert SPDConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValidationError):
        SPDConfig(ci_fn={"mode": "global", "fn_type": "global_reverse_residual", "block_groups": []})


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.a = nn.Linear(6, 7)
        self.b = nn.Linear(7, 6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(self.emb(tokens))))


def test_component_model_with_global_ci_trains_end_to_end() -> None:
    torch.manual_seed(0)
    cfg = GlobalCiFnConfig(
        d_resid_ci_fn=8,
        reader_hidden_dims=[8],
        transition_hidden_dim=16,
        block_groups=[{"name": "late", "patterns": ["b"]}, {"name": "early", "patterns": ["a", "emb"]}],
    )
    model = ComponentModel(TwoLayer(), {"emb": 4, "a": 3, "b": 5}, global_ci=cfg)
    assert not hasattr(model.ci_fn, "_ci_fns") and model.extra_config()["global_ci"]["transition_hidden_dim"] == 16
    tokens = torch.randint(0, 10, (2, 5))
    _, acts = model.forward_with_inputs(tokens)
    ci = model.causal_importances(acts)
    assert {p: tuple(v.shape) for p, v in ci.lower_leaky.items()} == {"emb": (2, 5, 4), "a": (2, 5, 3), "b": (2, 5, 5)}
    assert all(float(v.detach().min()) >= 0 and float(v.detach().max()) <= 1 for v in ci.lower_leaky.values())
    sum(v.sum() for v in ci.upper_leaky.values()).backward()
    assert all(p.grad is not None for p in model.ci_fn_parameters())
    assert model.components("emb").V.grad is not None  # embedding inputs are component activations V[token]
