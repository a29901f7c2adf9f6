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

import torch
from torch import Tensor, nn

from spd.targets.pretrain_layers import (
    GPT2FamilyConfigBase,
    StdLayerNorm,
    TanhGELU,
    causal_attention,
    check_sequence_length,
    init_gpt_style,
    merge_heads,
    split_heads,
)

GPT2_LN_EPS = 1e-5


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
        q, k, v = (split_heads(p(x), self.n_head) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.o_proj(merge_heads(causal_attention(q, k, v, self.fused)))


class GeluMLP4x(nn.Module):
    def __init__(self, cfg: GPT2SimpleConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = TanhGELU()
        self.down_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.gelu(self.c_fc(x)))


class GPT2SimpleBlock(nn.Module):
    def __init__(self, cfg: GPT2SimpleConfig) -> None:
        super().__init__()
        self.ln_1 = StdLayerNorm(cfg.n_embd, GPT2_LN_EPS)
        self.attn = SplitAttention(cfg)
        self.ln_2 = StdLayerNorm(cfg.n_embd, GPT2_LN_EPS)
        self.mlp = GeluMLP4x(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Simple(nn.Module):
    def __init__(self, config: GPT2SimpleConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(GPT2SimpleBlock(config) for _ in range(config.n_layer))
        self.ln_f = StdLayerNorm(config.n_embd, GPT2_LN_EPS)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, ("o_proj", "down_proj"))

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        check_sequence_length(t, self.config.block_size)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
