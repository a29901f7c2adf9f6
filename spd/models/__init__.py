"""SPD models: rank-one components, CI functions, hard sigmoids, masks and the component wrapper.

The names below load on first use (spd.lazy): spd.models.config, which a pipeline file's validation reads on a
login node, must be importable without importing torch.
"""

from spd.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spd.models.checkpoint": (
            "decomposition_tokenizer_path",
            "load_decomposition",
            "load_decomposition_corpus",
            "load_decomposition_data",
        ),
        "spd.models.component_model": (
            "CIOutputs",
            "ComponentModel",
            "build_component_model",
            "expand_module_patterns",
        ),
        "spd.models.components": ("EmbeddingComponents", "LinearComponents"),
        "spd.models.identity": ("insert_identity_operations",),
        "spd.models.masks": ("MaskInfo",),
        "spd.models.sigmoids": ("lower_leaky_hard_sigmoid", "upper_leaky_hard_sigmoid"),
    },
)
