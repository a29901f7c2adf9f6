"""LlamaSimple: the reference pretrain package's Llama with a SwiGLU MLP (kind `llama_simple`).

Mirrors `spd.pretrain.models.llama_simple` of goodfire-ai/spd: LlamaSimpleMLP's attention, norms and tied
embedding (spd/targets/llama_simple_mlp.py) with a SwiGLU MLP, so module paths and state-dict keys are

    wte, h.{i}.rms_1, h.{i}.attn.{q_proj,k_proj,v_proj | c_attn, o_proj}, h.{i}.rms_2,
    h.{i}.mlp.gate_proj, h.{i}.mlp.up_proj, h.{i}.mlp.down_proj, ln_f, lm_head (tied to wte)

with `mlp(x) = down_proj(silu(gate_proj(x)) * up_proj(x))`. `forward(idx)` returns the logits tensor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from spd.targets.llama_simple_mlp import LlamaBlock, SplitQKVAttention
from spd.targets.pretrain_layers import LlamaFamilyConfigBase, RMSNorm, check_sequence_length, init_gpt_style


class LlamaSimpleConfig(LlamaFamilyConfigBase):
    """The reference's LlamaSimpleConfig (a reference model_config.yaml validates as is) plus `kind`."""

    kind: Literal["llama_simple"] = "llama_simple"
    model_type: Literal["LlamaSimple"] = "LlamaSimple"
    n_intermediate: int = Field(768 * 4 * 2 // 3, ge=1, description="SwiGLU hidden width (gate/up output).")


class SwiGLUMLP(nn.Module):
    """Llama's gated MLP; the activation is a function, not a submodule, as in the reference."""

    def __init__(self, cfg: LlamaFamilyConfigBase, n_intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, n_intermediate, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.n_embd, n_intermediate, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(n_intermediate, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaSimple(nn.Module):
    def __init__(self, config: LlamaSimpleConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(
            LlamaBlock(config, SplitQKVAttention(config), SwiGLUMLP(config, config.n_intermediate))
            for _ in range(config.n_layer)
        )
        self.ln_f = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        init_gpt_style(self, config.n_layer, ("o_proj",))

    def forward(self, idx: Tensor) -> Tensor:
        check_sequence_length(idx.shape[1], self.config.block_size)
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
