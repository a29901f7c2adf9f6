"""GPT2Simple: the reference pretrain package's GPT-2 with separate q/k/v projections (kind `gpt2_simple`).

Mirrors `spd.pretrain.models.gpt2_simple` of goodfire-ai/spd; module paths and state-dict keys are

    wte                  nn.Embedding(vocab_size, n_embd); its weight IS lm_head.weight (tied)
    wpe                  nn.Embedding(block_size, n_embd) (learned positions)
    h.{i}.ln_1 / ln_2    LayerNorm (eps 1e-5; weight, bias)
    h.{i}.attn.{q_proj, k_proj, v_proj, o_proj}   nn.Linear(n_embd, n_embd) with bias
    h.{i}.mlp.c_fc       nn.Linear(n_embd, 4 n_embd) with bias
    h.{i}.mlp.gelu       tanh GELU (no parameters)
    h.{i}.mlp.down_proj  nn.Linear(4 n_embd, n_embd) with bias
    ln_f                 LayerNorm
    lm_head              nn.Linear(n_embd, vocab_size, bias=False)

The LayerNorms keep the reference's `std` attribute (None = normal LayerNorm; a number = divide by that
constant), which is how the reference ablates LayerNorm; it is not in the state dict, so a run made with a
fixed std must set it again after loading. `forward(idx)` returns the logits tensor.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from spd.targets.pretrain_layers import GPT2FamilyConfigBase, GPT2Trunk, StdLayerNorm, TanhGELU, multi_head_attention


class GPT2SimpleConfig(GPT2FamilyConfigBase):
    """The reference's GPT2SimpleConfig (a reference model_config.yaml validates as is) plus `kind`."""

    kind: Literal["gpt2_simple"] = "gpt2_simple"
    model_type: Literal["GPT2Simple"] = "GPT2Simple"


class SplitAttention(nn.Module):
    def __init__(self, cfg: GPT2SimpleConfig) -> None:
        super().__init__()
        self.n_head, self.fused = cfg.n_head, cfg.flash_attention
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.o_proj(multi_head_attention(q, k, v, self.n_head, self.fused))


class GeluMLP4x(nn.Module):
    def __init__(self, cfg: GPT2SimpleConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = TanhGELU()
        self.down_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.gelu(self.c_fc(x)))


class GPT2Simple(GPT2Trunk):
    def __init__(self, config: GPT2SimpleConfig) -> None:
        super().__init__(config, "h", StdLayerNorm, SplitAttention, GeluMLP4x, ("o_proj", "down_proj"))
