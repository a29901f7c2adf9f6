"""A tiny decoder-only transformer LM: the language-model target that SPD decomposes.

Module names are part of the contract (SPD `module_info` patterns match them; do not rename):

    embed                     nn.Embedding(vocab, d_model)
    layers.{i}.attn_norm      RMSNorm (learnable scale)
    layers.{i}.attn.q_proj    nn.Linear(d_model, d_model, bias=False)     also k_proj, v_proj, o_proj
    layers.{i}.mlp_norm       RMSNorm
    layers.{i}.mlp.up_proj    nn.Linear(d_model, d_mlp, bias=False)       GELU (tanh approximation) after it
    layers.{i}.mlp.down_proj  nn.Linear(d_mlp, d_model, bias=False)
    final_norm                RMSNorm
    lm_head                   nn.Linear(d_model, vocab, bias=False)

Block: x += attn(attn_norm(x)); x += mlp(mlp_norm(x)) (pre-norm). Attention is causal multi-head
softmax attention with rotary position embeddings on q and k (rotate-half); there is no other position
signal. No biases anywhere.

Unembedding: tied by default (`tie_embeddings=True`): `lm_head.weight` IS `embed.weight` (one Parameter;
the state dict lists it under both names). Set it False for an independent unembedding.

Every projection is called with exactly one positional tensor and returns one tensor, as SPD's forward
hooks require. `forward(tokens [B, T] int64) -> logits [B, T, vocab]` (a plain tensor, not a tuple).
Init: N(0, 0.02); o_proj and down_proj N(0, 0.02 / sqrt(2 n_layers)); RMSNorm scales 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spd.lm.config import TinyLMConfig as TinyLMConfig


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention); cos/sin tables are non-persistent buffers."""

    def __init__(self, head_dim: int, n_ctx: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(n_ctx, dtype=torch.float32), inv_freq)  # [T, hd/2]
        emb = torch.cat([angles, angles], dim=-1)  # [T, hd]
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, H, T, hd]
        t = x.shape[-2]
        if t > self.cos.shape[0]:
            raise ValueError(f"sequence of {t} tokens is longer than n_ctx={self.cos.shape[0]}")
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * self.cos[:t] + rotated * self.sin[:t]


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(self.head_dim, cfg.n_ctx, cfg.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q = self.rotary(heads(self.q_proj(x)))
        k = self.rotary(heads(self.k_proj(x)))
        v = heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("TinyLMConfig.vocab_size is unset (it is filled in from the corpus at training)")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.final_norm(x))

    def n_params(self, include_embedding: bool = True) -> int:
        """Distinct parameters (a tied unembedding is counted once)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() already yields a shared tensor once
        return n if include_embedding else n - self.embed.weight.numel()

    @staticmethod
    def mlp_module_paths(n_layers: int) -> list[str]:
        """The projections SPD decomposes by default: every layer's up_proj and down_proj."""
        return [f"layers.{i}.mlp.{p}" for i in range(n_layers) for p in ("up_proj", "down_proj")]


def output_logits(output: object) -> Tensor:
    """Logits from a model's raw output: a tensor as is (TinyLM, the toy targets), Hugging Face outputs' .logits,
    a tuple's first entry. The component model reads every target's output through it."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a {type(output).__name__}")
