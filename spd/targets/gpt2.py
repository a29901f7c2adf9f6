"""GPT2: the reference pretrain package's nanoGPT-style GPT-2 (kind `gpt2`), fused qkv projection.

Mirrors `spd.pretrain.models.gpt2` of goodfire-ai/spd, whose blocks are registered as `h_torch` (the
reference keeps a plain list under `h`), so module paths and state-dict keys are

    wte                        nn.Embedding(vocab_size, n_embd); its weight IS lm_head.weight (tied)
    wpe                        nn.Embedding(block_size, n_embd)
    h_torch.{i}.ln_1 / ln_2    nn.LayerNorm(n_embd) (eps 1e-5)
    h_torch.{i}.attn.c_attn    nn.Linear(n_embd, 3 n_embd): q, k, v
    h_torch.{i}.attn.c_proj    nn.Linear(n_embd, n_embd)
    h_torch.{i}.mlp.c_fc       nn.Linear(n_embd, 4 n_embd)
    h_torch.{i}.mlp.gelu       tanh GELU (no parameters)
    h_torch.{i}.mlp.c_proj     nn.Linear(4 n_embd, n_embd)
    ln_f                       nn.LayerNorm(n_embd)
    lm_head                    nn.Linear(n_embd, vocab_size, bias=False)

All linears have biases, stored in nn.Linear (out, in) convention (unlike transformers' Conv1D GPT-2).
`forward(idx)` returns the logits tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from spd.targets.gpt2_simple import GPT2_LN_EPS
from spd.targets.pretrain_layers import (
    GPT2FamilyConfigBase,
    TanhGELU,
    causal_attention,
    check_sequence_length,
    init_gpt_style,
    merge_heads,
    split_heads,
)


class GPT2Config(GPT2FamilyConfigBase):
    """The reference's GPT2Config (a reference model_config.yaml validates as is) plus `kind`."""

    kind: Literal["gpt2"] = "gpt2"
    model_type: Literal["GPT2"] = "GPT2"


class FusedAttention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.fused = cfg.n_head, cfg.n_embd, cfg.flash_attention
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(y, self.n_head) for y in self.c_attn(x).split(self.n_embd, dim=-1))
        return self.c_proj(merge_heads(causal_attention(q, k, v, self.fused)))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = TanhGELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=GPT2_LN_EPS)
        self.attn = FusedAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=GPT2_LN_EPS)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h_torch = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=GPT2_LN_EPS)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, ("c_proj",))

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        check_sequence_length(t, self.config.block_size)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h_torch:
            x = block(x)
        return self.lm_head(self.ln_f(x))
