"""Building blocks shared by the reference pretrain architectures (spd/targets/llama*.py, gpt2*.py).

These reproduce the math of the reference implementation's `spd.pretrain.models` (goodfire-ai/spd) so that
its trained weights give the same logits here. Only parameters are part of a state dict; every table
(rotary cos/sin) is a non-persistent buffer, as in the reference, so checkpoints hold weights only.

Numerics follow the reference's order of operations (RMSNorm in float32, the tanh GELU written out, the
rotary tables computed in float32 from an integer base), because a decomposition imported from the
reference is checked against logits the reference computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F


class LlamaFamilyConfigBase(BaseModel):
    """Fields shared by the reference's Llama, LlamaSimple and LlamaSimpleMLP configs (names and defaults kept).

    `rotary_dim` is accepted but, as in the reference, not used: rotary embeddings always cover the whole
    head (head_dim = n_embd / n_head). `n_key_value_heads` only matters with `use_grouped_query_attention`.
    `flash_attention` picks fused vs explicit causal softmax attention (same math).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_size: int = Field(1024, ge=1, description="Longest sequence the model accepts.")
    vocab_size: int = Field(50257, ge=1)
    n_layer: int = Field(12, ge=1)
    n_head: int = Field(12, ge=1)
    n_embd: int = Field(768, ge=1)
    mlp_bias: bool = False
    attn_bias: bool = False
    rotary_adjacent_pairs: bool = Field(
        False, description="Rotate interleaved pairs (0,1),(2,3),... instead of the two halves of each head."
    )
    rotary_dim: int = Field(64, description="Ignored (as in the reference): rotary covers the full head_dim.")
    rotary_base: int = 10000
    n_ctx: int = Field(1024, ge=1, description="Rotary table length; later positions reuse the last angle.")
    n_key_value_heads: int = Field(3, ge=1)
    use_grouped_query_attention: bool = True
    flash_attention: bool = True
    rms_norm_eps: float = Field(1e-6, gt=0)

    @model_validator(mode="after")
    def _check_heads(self) -> LlamaFamilyConfigBase:
        # The reference asserts the first and silently produces wrong shapes for the others; refuse them here.
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim={self.n_embd // self.n_head} (n_embd / n_head) must be even for rotary")
        if self.use_grouped_query_attention and self.n_head % self.n_key_value_heads:
            raise ValueError(
                f"n_key_value_heads={self.n_key_value_heads} must divide n_head={self.n_head} "
                "when use_grouped_query_attention is true"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class GPT2FamilyConfigBase(BaseModel):
    """Fields shared by the reference's GPT2 and GPT2Simple configs (names and defaults kept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_size: int = Field(1024, ge=1, description="Longest sequence; also the number of learned positions.")
    vocab_size: int = Field(50257, ge=1)
    n_layer: int = Field(12, ge=1)
    n_head: int = Field(12, ge=1)
    n_embd: int = Field(768, ge=1)
    flash_attention: bool = Field(True, description="Fused vs explicit causal softmax attention (same math).")

    @model_validator(mode="after")
    def _check_heads(self) -> GPT2FamilyConfigBase:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        return self


GPT2_LN_EPS = 1e-5


class GPT2Block(nn.Module):
    """Pre-LayerNorm block: x += attn(ln_1(x)); x += mlp(ln_2(x)). Both GPT-2s use it; their LayerNorm,
    attention and MLP (and so their state-dict names below the block) are passed in."""

    def __init__(self, ln_1: nn.Module, attn: nn.Module, ln_2: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Trunk(nn.Module):
    """What both GPT-2s share: token and learned position embeddings (wte, wpe), `n_layer` GPT2Blocks of the
    given LayerNorm, attention and MLP (each built from the config) registered under `blocks_name` (the
    reference's state-dict prefix: `h` or `h_torch`), ln_f, and an lm_head tied to wte. `forward(idx)` returns
    the logits."""

    def __init__(
        self,
        config: GPT2FamilyConfigBase,
        blocks_name: str,
        layer_norm: Callable[[int, float], nn.Module],
        attention: Callable[[Any], nn.Module],
        mlp: Callable[[Any], nn.Module],
        residual_suffixes: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks_name = blocks_name
        n, eps = config.n_embd, GPT2_LN_EPS
        blocks = (
            GPT2Block(layer_norm(n, eps), attention(config), layer_norm(n, eps), mlp(config))
            for _ in range(config.n_layer)
        )
        self.add_module(blocks_name, nn.ModuleList(blocks))
        self.ln_f = layer_norm(config.n_embd, GPT2_LN_EPS)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, residual_suffixes)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        check_sequence_length(t, self.config.block_size)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.get_submodule(self.blocks_name):
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's tanh-approximated GELU, spelled out as the reference evaluates it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class TanhGELU(nn.Module):
    """gelu_tanh as a module: the reference MLPs hold their activation as the submodule `gelu`."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu_tanh(x)


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, cast back, then scale (so bf16 inputs match the reference)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class StdLayerNorm(nn.Module):
    """GPT2Simple's LayerNorm: biased variance, and an optional fixed `std` (not saved) that replaces the
    per-token standard deviation, which is how the reference freezes ("removes") a LayerNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.std: float | None = None

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = (x.var(dim=-1, keepdim=True, unbiased=False) + self.eps).sqrt() if self.std is None else self.std
        return (x - mean) / std * self.weight + self.bias


def rotary_tables(head_dim: int, n_ctx: int, base: int, adjacent_pairs: bool) -> tuple[Tensor, Tensor]:
    """cos and sin [n_ctx, head_dim] of rotary embeddings over the whole head, with the reference's two pairings.

    Halves (default): dimension j pairs with j + hd/2, both at frequency base**(-j / (hd/2)).
    Adjacent pairs: dimension 2j pairs with 2j+1 at that frequency.
    """
    pos = torch.arange(n_ctx, dtype=torch.float32)
    half = head_dim // 2
    freq = base ** (torch.arange(half, dtype=torch.float32) / half)
    freq = freq.repeat_interleave(2) if adjacent_pairs else freq.repeat(2)
    angles = pos[:, None] / freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, adjacent_pairs: bool) -> Tensor:
    """Rotate x [B, H, T, hd] by positions 0..T-1; positions past the table are clamped to its last row,
    as in the reference (which accepts sequences up to block_size with a table of n_ctx rows)."""
    t = x.shape[-2]
    pos = torch.arange(t, device=x.device).clamp(max=cos.shape[0] - 1)
    if adjacent_pairs:
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[pos].to(x.dtype) + rotated * sin[pos].to(x.dtype)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, fused: bool) -> Tensor:
    """Causal softmax attention with scale 1/sqrt(head_dim); q, k, v: [B, H, T, hd]. `fused` picks
    scaled_dot_product_attention, else the explicit masked softmax (the reference's flash_attention flag)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~causal, float("-inf"))
    return F.softmax(att, dim=-1) @ v


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, T, n_heads * hd] -> [B, n_heads, T, hd]."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(y: Tensor) -> Tensor:
    """[B, H, T, hd] -> [B, T, H * hd]."""
    b, h, t, hd = y.shape
    return y.transpose(1, 2).reshape(b, t, h * hd)


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, fused: bool) -> Tensor:
    """GPT-2's causal multi-head attention on projected q, k, v ([B, T, n_embd]); returns [B, T, n_embd]
    before the output projection."""
    heads = (split_heads(y, n_head) for y in (q, k, v))
    return merge_heads(causal_attention(*heads, fused))


def rotary_gqa_attention(
    q: Tensor, k: Tensor, v: Tensor, cfg: LlamaFamilyConfigBase, cos: Tensor, sin: Tensor, grouped: bool
) -> Tensor:
    """Multi-head attention of the Llama family on projected q, k, v ([B, T, *]); returns [B, T, n_embd]
    before the output projection. With `grouped`, k and v carry n_key_value_heads heads, each shared by
    n_head / n_key_value_heads consecutive query heads (repeat_interleave)."""
    n_kv = cfg.n_key_value_heads if grouped else cfg.n_head
    qh = apply_rotary(split_heads(q, cfg.n_head), cos, sin, cfg.rotary_adjacent_pairs)
    kh = apply_rotary(split_heads(k, n_kv), cos, sin, cfg.rotary_adjacent_pairs)
    vh = split_heads(v, n_kv)
    if cfg.n_head != n_kv:
        kh = kh.repeat_interleave(cfg.n_head // n_kv, dim=1)
        vh = vh.repeat_interleave(cfg.n_head // n_kv, dim=1)
    return merge_heads(causal_attention(qh, kh, vh, cfg.flash_attention))


def check_sequence_length(t: int, block_size: int) -> None:
    if t > block_size:
        raise ValueError(f"sequence of {t} tokens is longer than block_size={block_size}")


def init_gpt_style(model: nn.Module, n_layer: int, residual_suffixes: tuple[str, ...]) -> None:
    """The reference's init scheme (weights N(0, 0.02), residual-stream output projections N(0, 0.02/sqrt(2L)),
    biases 0, norm scales 1). Only used for fresh models; imported weights replace it."""
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied embedding is visited once
            if p.dim() < 2:
                (nn.init.zeros_ if name.endswith("bias") else nn.init.ones_)(p)
            elif name.endswith(tuple(f"{s}.weight" for s in residual_suffixes)):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, 0.02)
