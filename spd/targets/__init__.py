"""Target models, their trainers and one on-disk format (target_config.json + target.pt [+ tokenizer.json]).

Kinds: `tms` and `resid_mlp` (toys, spd/targets/tms.py and resid_mlp.py), `hf_causal_lm` (a Hugging Face causal LM, spd/targets/hf.py) and `tiny_lm` (the story-corpus LM, spd/lm; its checkpoint directory
written by spd.lm.save_lm has the same layout plus tokenizer.json), and the reference pretrain architectures
`llama_simple_mlp`, `llama_simple`, `llama`, `gpt2_simple`, `gpt2` (spd/targets/<kind>.py; reference runs load
with spd.targets.pretrain_run). `load_target` dispatches on `kind`.

The code is in spd/targets/kinds.py; the names below load on first use (spd.lazy), so the torch-free target
configs (spd.targets.config), which a pipeline file's validation reads on a login node, do not import torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DegenerateTargetError": "spd.targets.seed_search",
        "HFCausalLMTargetConfig": "spd.targets.hf",
        "RESID_MLP_PRESETS": "spd.targets.resid_mlp",
        "ResidMLPModel": "spd.targets.resid_mlp",
        "ResidMLPTargetConfig": "spd.targets.config",
        "TARGET_CONFIG_FILE": "spd.targets.kinds",
        "TARGET_STATE_FILE": "spd.targets.kinds",
        "TMSModel": "spd.targets.tms",
        "TMSTargetConfig": "spd.targets.config",
        "TOKENIZER_CONFIG_FILE": "spd.targets.kinds",
        "TOKENIZER_FILE": "spd.targets.kinds",
        "TargetModelConfig": "spd.targets.kinds",
        "TinyLM": "spd.lm.model",
        "TinyLMConfig": "spd.lm.config",
        "ToyTargetConfig": "spd.targets.kinds",
        "build_target": "spd.targets.kinds",
        "feature_check": "spd.targets.tms",
        "load_target": "spd.targets.kinds",
        "load_target_record": "spd.targets.kinds",
        "parse_target_config": "spd.targets.kinds",
        "save_target": "spd.targets.kinds",
        "train_target": "spd.targets.kinds",
    },
)

__all__ = [
    "RESID_MLP_PRESETS",
    "DegenerateTargetError",
    "HFCausalLMTargetConfig",
    "ResidMLPModel",
    "ResidMLPTargetConfig",
    "TMSModel",
    "TMSTargetConfig",
    "TargetModelConfig",
    "TinyLM",
    "TinyLMConfig",
    "ToyTargetConfig",
    "build_target",
    "feature_check",
    "load_target",
    "load_target_record",
    "parse_target_config",
    "save_target",
    "train_target",
]
