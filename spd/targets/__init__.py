"""Target models, their trainers and one on-disk format (target_config.json + target.pt [+ tokenizer.json]).

Kinds: `tms` and `resid_mlp` (toys, spd/targets/tms.py and resid_mlp.py), `hf_causal_lm` (a Hugging Face causal LM, spd/targets/hf.py) and `tiny_lm` (the story-corpus LM, spd/lm; its checkpoint directory
written by spd.lm.save_lm has the same layout plus tokenizer.json), and the reference pretrain architectures
`llama_simple_mlp`, `llama_simple`, `llama`, `gpt2_simple`, `gpt2` (spd/targets/<kind>.py; reference runs load
with spd.targets.pretrain_run). `load_target` dispatches on `kind`.

The code is in spd/targets/kinds.py; the names below load on first use (spd.lazy), so the torch-free target
configs (spd.targets.config), which a pipeline file's validation reads on a login node, do not import torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.lm.config": ("TinyLMConfig",),
        "spd.lm.model": ("TinyLM",),
        "spd.targets.config": ("ResidMLPTargetConfig", "TMSTargetConfig"),
        "spd.targets.hf": ("HFCausalLMTargetConfig",),
        "spd.targets.kinds": (
            "TARGET_CONFIG_FILE",
            "TARGET_STATE_FILE",
            "TOKENIZER_CONFIG_FILE",
            "TOKENIZER_FILE",
            "TargetModelConfig",
            "ToyTargetConfig",
            "build_target",
            "load_target",
            "load_target_record",
            "parse_target_config",
            "save_target",
            "train_target",
        ),
        "spd.targets.resid_mlp": ("RESID_MLP_PRESETS", "ResidMLPModel"),
        "spd.targets.seed_search": ("DegenerateTargetError",),
        "spd.targets.tms": ("TMSModel", "feature_check"),
    },
)
