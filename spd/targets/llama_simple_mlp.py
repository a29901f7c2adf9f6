"""LlamaSimpleMLP: the reference pretrain package's main decomposition target (kind `llama_simple_mlp`).

A Llama-style decoder (RMSNorm, rotary attention with optional grouped-query heads) whose MLP is GPT-2's
(c_fc -> tanh GELU -> down_proj) instead of SwiGLU. It mirrors `spd.pretrain.models.llama_simple_mlp` of
goodfire-ai/spd so the reference's runs load here: module paths and state-dict keys are the reference's,
because SPD decompositions name modules by path and checkpoints store `target_model.<key>`:

    wte                        nn.Embedding(vocab_size, n_embd); its weight IS lm_head.weight (tied)
    h.{i}.rms_1                RMSNorm
    h.{i}.attn.q_proj          nn.Linear(n_embd, n_embd)                    \\
    h.{i}.attn.k_proj          nn.Linear(n_embd, n_key_value_heads * hd)     } use_grouped_query_attention
    h.{i}.attn.v_proj          nn.Linear(n_embd, n_key_value_heads * hd)    /
    h.{i}.attn.c_attn          nn.Linear(n_embd, 3 n_embd) (q|k|v)          otherwise
    h.{i}.attn.o_proj          nn.Linear(n_embd, n_embd)
    h.{i}.rms_2                RMSNorm
    h.{i}.mlp.c_fc             nn.Linear(n_embd, n_intermediate)
    h.{i}.mlp.gelu             tanh GELU (no parameters)
    h.{i}.mlp.down_proj        nn.Linear(n_intermediate, n_embd)
    ln_f                       RMSNorm
    lm_head                    nn.Linear(n_embd, vocab_size, bias=False)

Biases follow attn_bias / mlp_bias. `forward(idx [B, T] int64)` returns the logits [B, T, vocab] as a plain
tensor; the reference returns `(logits, loss)`, which is why reference SPD configs read `idx_0`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from spd.targets.pretrain_layers import (
    LlamaFamilyConfigBase,
    RMSNorm,
    TanhGELU,
    check_sequence_length,
    init_gpt_style,
    rotary_gqa_attention,
    rotary_tables,
)


class LlamaSimpleMLPConfig(LlamaFamilyConfigBase):
    """The reference's LlamaSimpleMLPConfig (a reference model_config.yaml validates as is) plus `kind`."""

    kind: Literal["llama_simple_mlp"] = "llama_simple_mlp"
    model_type: Literal["LlamaSimpleMLP"] = "LlamaSimpleMLP"
    n_intermediate: int = Field(768 * 4, ge=1, description="MLP hidden width (c_fc output).")


class SplitQKVAttention(nn.Module):
    """Rotary causal self-attention with separate q/k/v projections (or one fused c_attn without GQA);
    shared by LlamaSimple and LlamaSimpleMLP, whose attention is identical."""

    def __init__(self, cfg: LlamaFamilyConfigBase) -> None:
        super().__init__()
        self.cfg = cfg
        d, kv = cfg.n_embd, cfg.n_key_value_heads * cfg.head_dim
        if cfg.use_grouped_query_attention:
            self.q_proj = nn.Linear(d, d, bias=cfg.attn_bias)
            self.k_proj = nn.Linear(d, kv, bias=cfg.attn_bias)
            self.v_proj = nn.Linear(d, kv, bias=cfg.attn_bias)
        else:
            self.c_attn = nn.Linear(d, 3 * d, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.attn_bias)
        # Buffers, not a submodule: the attention's named modules must be exactly the reference's projections.
        cos, sin = rotary_tables(cfg.head_dim, cfg.n_ctx, cfg.rotary_base, cfg.rotary_adjacent_pairs)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        grouped = self.cfg.use_grouped_query_attention
        if grouped:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.c_attn(x).split(self.cfg.n_embd, dim=-1)
        return self.o_proj(rotary_gqa_attention(q, k, v, self.cfg, self.rotary_cos, self.rotary_sin, grouped))


class GeluMLP(nn.Module):
    def __init__(self, cfg: LlamaSimpleMLPConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.n_intermediate, bias=cfg.mlp_bias)
        self.gelu = TanhGELU()
        self.down_proj = nn.Linear(cfg.n_intermediate, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.gelu(self.c_fc(x)))


class LlamaBlock(nn.Module):
    """Pre-norm block: x += attn(rms_1(x)); x += mlp(rms_2(x)). The MLP is passed in (GELU or SwiGLU)."""

    def __init__(self, cfg: LlamaFamilyConfigBase, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.rms_1 = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.attn = attn
        self.rms_2 = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.rms_1(x))
        return x + self.mlp(self.rms_2(x))


class LlamaSimpleMLP(nn.Module):
    def __init__(self, config: LlamaSimpleMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(
            LlamaBlock(config, SplitQKVAttention(config), GeluMLP(config)) for _ in range(config.n_layer)
        )
        self.ln_f = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, ("o_proj", "down_proj"))

    def forward(self, idx: Tensor) -> Tensor:
        check_sequence_length(idx.shape[1], self.config.block_size)
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def mlp_module_paths(self) -> list[str]:
        """The projections reference LM decompositions usually target: every layer's c_fc and down_proj."""
        return [f"h.{i}.mlp.{p}" for i in range(self.config.n_layer) for p in ("c_fc", "down_proj")]
