"""Llama: the reference pretrain package's "full" Llama (kind `llama`), nanoGPT-style module layout.

Mirrors `spd.pretrain.models.llama` of goodfire-ai/spd. Same math as LlamaSimple (spd/targets/llama_simple.py)
but the layers live under a `transformer` ModuleDict and the attention fuses k and v, so module paths and
state-dict keys are

    transformer.wte                    nn.Embedding; its weight IS lm_head.weight (tied)
    transformer.h.{i}.rms_1 / rms_2    RMSNorm
    transformer.h.{i}.attn.q_attn      nn.Linear(n_embd, n_embd)                          \\ use_grouped_query_attention
    transformer.h.{i}.attn.kv_attn     nn.Linear(n_embd, 2 n_key_value_heads hd): k then v /
    transformer.h.{i}.attn.c_attn      nn.Linear(n_embd, 3 n_embd): q, k, v               otherwise
    transformer.h.{i}.attn.c_proj      nn.Linear(n_embd, n_embd)
    transformer.h.{i}.mlp.{gate_proj, up_proj, down_proj}   SwiGLU
    transformer.rms_f                  RMSNorm
    lm_head                            nn.Linear(n_embd, vocab_size, bias=False)

Old reference checkpoints of this class may carry the rotary tables (`...attn.rotary_sin/cos`); they are
derived from the config and the loader drops them, as the reference's own loader does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from spd.targets.llama_simple import SwiGLUMLP
from spd.targets.llama_simple_mlp import LlamaBlock
from spd.targets.pretrain_layers import (
    LlamaFamilyConfigBase,
    RMSNorm,
    check_sequence_length,
    init_gpt_style,
    rotary_gqa_attention,
    rotary_tables,
)


class LlamaConfig(LlamaFamilyConfigBase):
    """The reference's LlamaConfig (a reference model_config.yaml validates as is) plus `kind`."""

    kind: Literal["llama"] = "llama"
    model_type: Literal["Llama"] = "Llama"
    n_intermediate: int = Field(768 * 4 * 2 // 3, ge=1, description="SwiGLU hidden width (gate/up output).")


class FusedKVAttention(nn.Module):
    """Rotary causal self-attention with q_attn + fused kv_attn (or one c_attn without GQA) and c_proj."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        if cfg.use_grouped_query_attention:
            self.q_attn = nn.Linear(d, d, bias=cfg.attn_bias)
            self.kv_attn = nn.Linear(d, 2 * cfg.n_key_value_heads * cfg.head_dim, bias=cfg.attn_bias)
        else:
            self.c_attn = nn.Linear(d, 3 * d, bias=cfg.attn_bias)
        self.c_proj = nn.Linear(d, d, bias=cfg.attn_bias)
        cos, sin = rotary_tables(cfg.head_dim, cfg.n_ctx, cfg.rotary_base, cfg.rotary_adjacent_pairs)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        grouped = self.cfg.use_grouped_query_attention
        if grouped:
            q = self.q_attn(x)
            k, v = self.kv_attn(x).split(self.cfg.n_key_value_heads * self.cfg.head_dim, dim=-1)
        else:
            q, k, v = self.c_attn(x).split(self.cfg.n_embd, dim=-1)
        return self.c_proj(rotary_gqa_attention(q, k, v, self.cfg, self.rotary_cos, self.rotary_sin, grouped))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList(
                    LlamaBlock(config, FusedKVAttention(config), SwiGLUMLP(config, config.n_intermediate))
                    for _ in range(config.n_layer)
                ),
                "rms_f": RMSNorm(config.n_embd, config.rms_norm_eps),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer["wte"].weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, ("attn.c_proj",))

    def forward(self, idx: Tensor) -> Tensor:
        check_sequence_length(idx.shape[1], self.config.block_size)
        x = self.transformer["wte"](idx)
        for block in self.transformer["h"]:
            x = block(x)
        return self.lm_head(self.transformer["rms_f"](x))
