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

from torch import Tensor, nn

from spd.targets.pretrain_layers import GPT2FamilyConfigBase, GPT2Trunk, TanhGELU, multi_head_attention


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
        q, k, v = self.c_attn(x).split(self.n_embd, dim=-1)
        return self.c_proj(multi_head_attention(q, k, v, self.n_head, self.fused))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = TanhGELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


def _layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


class GPT2(GPT2Trunk):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config, "h_torch", _layer_norm, FusedAttention, GPT2MLP, ("c_proj",))
