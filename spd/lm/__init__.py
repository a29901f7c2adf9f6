"""The LM target: a tiny decoder-only transformer trained on the story corpus, and Hugging Face loading.

    ckpt = train_and_save_lm(corpus, TinyLMTrainConfig(), "out/lm")   # ~1 min on 2 CPU cores
    model = load_lm("out/lm")                                           # eval mode, frozen
    # real models (extra `hf`): spd.lm.hf.load_hf_causal_lm / load_hf_token_stream

Module names SPD decomposes: layers.{i}.mlp.up_proj / down_proj (and layers.{i}.attn.{q,k,v,o}_proj).
The names below load on first use (spd.lazy): spd.lm.config, which a pipeline file's validation reads on a
login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.lm.config": ("TinyLMConfig", "TinyLMTrainConfig"),
        "spd.lm.model": ("TinyLM", "output_logits"),
        "spd.lm.train": (
            "LMCheckpoint",
            "evaluate_loss",
            "lm_loss",
            "load_lm",
            "load_lm_checkpoint",
            "save_lm",
            "train_and_save_lm",
            "train_tiny_lm",
        ),
    },
)
