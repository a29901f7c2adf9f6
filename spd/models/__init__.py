"""SPD models: rank-one components, CI functions, hard sigmoids, masks and the component wrapper.

The names below load on first use (spd.lazy): spd.models.config, which a pipeline file's validation reads on a
login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CIOutputs": "spd.models.component_model",
        "ComponentModel": "spd.models.component_model",
        "EmbeddingComponents": "spd.models.components",
        "LinearComponents": "spd.models.components",
        "MaskInfo": "spd.models.masks",
        "build_component_model": "spd.models.component_model",
        "decomposition_tokenizer_path": "spd.models.checkpoint",
        "expand_module_patterns": "spd.models.component_model",
        "insert_identity_operations": "spd.models.identity",
        "load_decomposition": "spd.models.checkpoint",
        "load_decomposition_corpus": "spd.models.checkpoint",
        "load_decomposition_data": "spd.models.checkpoint",
        "lower_leaky_hard_sigmoid": "spd.models.sigmoids",
        "upper_leaky_hard_sigmoid": "spd.models.sigmoids",
    },
)

__all__ = [
    "CIOutputs",
    "ComponentModel",
    "EmbeddingComponents",
    "LinearComponents",
    "MaskInfo",
    "build_component_model",
    "decomposition_tokenizer_path",
    "expand_module_patterns",
    "insert_identity_operations",
    "load_decomposition",
    "load_decomposition_corpus",
    "load_decomposition_data",
    "lower_leaky_hard_sigmoid",
    "upper_leaky_hard_sigmoid",
]
