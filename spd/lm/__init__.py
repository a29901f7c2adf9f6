"""The LM target: a tiny decoder-only transformer trained on the story corpus, and Hugging Face loading.

    ckpt = train_and_save_lm(corpus, TinyLMTrainConfig(), "out/lm")   # ~1 min on 2 CPU cores
    model = load_lm("out/lm")                                           # eval mode, frozen
    # real models (extra `hf`): spd.lm.hf.load_hf_causal_lm / load_hf_token_stream

Module names SPD decomposes: layers.{i}.mlp.up_proj / down_proj (and layers.{i}.attn.{q,k,v,o}_proj).
"""

from spd.lm.model import TinyLM, TinyLMConfig, output_logits
from spd.lm.train import (
    LMCheckpoint,
    TinyLMTrainConfig,
    evaluate_loss,
    lm_loss,
    load_lm,
    load_lm_checkpoint,
    save_lm,
    train_and_save_lm,
    train_tiny_lm,
)

__all__ = [
    "LMCheckpoint",
    "TinyLM",
    "TinyLMConfig",
    "TinyLMTrainConfig",
    "evaluate_loss",
    "lm_loss",
    "load_lm",
    "load_lm_checkpoint",
    "output_logits",
    "save_lm",
    "train_and_save_lm",
    "train_tiny_lm",
]
