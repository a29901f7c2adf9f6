"""The two ends of the graph: which module embeds tokens, which one unembeds, and the unembedding matrix.

Found from the model itself (Hugging Face `get_input_embeddings` / `get_output_embeddings`, else the only
candidate), never from a hard-coded name, so a renamed module cannot silently drop a whole layer of nodes.
"""

from __future__ import annotations

from torch import Tensor, nn

from spd.models.component_model import ComponentModel, is_conv1d


def _name_of(target: nn.Module, module: nn.Module) -> str | None:
    return next((name for name, m in target.named_modules() if m is module and name), None)


def _check_exists(target: nn.Module, path: str, what: str) -> str:
    try:
        target.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{what} module {path!r} does not exist in {type(target).__name__}") from None
    return path


def find_embedding_module(target: nn.Module, path: str | None = None) -> str:
    """Path of the token embedding: `path` if given, else get_input_embeddings(), else the only nn.Embedding."""
    if path is not None:
        return _check_exists(target, path, "embedding")
    getter = getattr(target, "get_input_embeddings", None)
    if callable(getter) and (name := _name_of(target, getter())):
        return name
    found = [name for name, m in target.named_modules() if isinstance(m, nn.Embedding)]
    if len(found) != 1:
        raise ValueError(f"cannot tell the token embedding among {found or 'no nn.Embedding'}: set embedding_module")
    return found[0]


def vocab_size_of(target: nn.Module, embedding_module: str) -> int:
    module = target.get_submodule(embedding_module)
    if not isinstance(module, nn.Embedding):
        raise ValueError(f"embedding module {embedding_module!r} is a {type(module).__name__}, not an nn.Embedding")
    return module.num_embeddings


def find_unembedding_module(target: nn.Module, vocab_size: int, path: str | None = None) -> str:
    """Path of the unembedding: `path`, else get_output_embeddings(), else the only linear map onto the vocab."""
    if path is not None:
        return _check_exists(target, path, "unembedding")
    getter = getattr(target, "get_output_embeddings", None)
    if callable(getter) and (module := getter()) is not None and (name := _name_of(target, module)):
        return name
    found = [
        name
        for name, m in target.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == vocab_size) or (is_conv1d(m) and m.nf == vocab_size)
    ]
    if len(found) != 1:
        raise ValueError(f"cannot tell the unembedding among {found or 'no linear map to the vocab'}: set it")
    return found[0]


def unembedding_matrix(model: ComponentModel, unembedding_module: str) -> Tensor:
    """W_U as (vocab x d_in): logit_v = W_U[v] . x for the unembedding input x (a bias adds a constant only).

    A decomposed unembedding uses its frozen target weight, the map its components reproduce.
    """
    if unembedding_module in model.module_to_c:
        return model.target_weight(unembedding_module).detach()
    module = model.target_model.get_submodule(unembedding_module)
    weight = module.weight.detach()
    return weight.T if is_conv1d(module) else weight
