"""SPD models: rank-one components, CI functions, hard sigmoids, masks and the component wrapper."""

from spd.models.checkpoint import (
    decomposition_tokenizer_path,
    load_decomposition,
    load_decomposition_corpus,
    load_decomposition_data,
)
from spd.models.component_model import CIOutputs, ComponentModel, build_component_model, expand_module_patterns
from spd.models.components import EmbeddingComponents, LinearComponents
from spd.models.identity import insert_identity_operations
from spd.models.masks import MaskInfo
from spd.models.sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid

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
