"""The wrapper that runs a frozen target with any subset of modules replaced by masked components.

Replacement is done with temporary forward hooks so any nn.Module target works unchanged: the hook
recomputes the module's output from its input with the component forward (spd/models/components.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn

from spd.lm.model import output_logits
from spd.models.ci_fns import CiFnType, make_ci_fn
from spd.models.components import Components, EmbeddingComponents, LinearComponents, tie_transposed
from spd.models.global_ci import GlobalCiFnConfig, make_global_ci_fn
from spd.models.masks import MaskInfo
from spd.models.sigmoids import CLAMP_FORWARD, SigmoidType, get_sigmoids


@dataclass
class CIOutputs:
    """Causal importances of every module: mask-side, penalty-side and the raw logits."""

    lower_leaky: dict[str, Tensor]
    upper_leaky: dict[str, Tensor]
    pre_sigmoid: dict[str, Tensor]


def _binomial_perturbed(z: Tensor) -> Tensor:
    """sampling="binomial": the lower sigmoid reads 1.05 z - 0.05 U(0,1) (the reference's binomial sampling)."""
    return 1.05 * z - 0.05 * torch.rand_like(z)


def expand_module_patterns(target: nn.Module, module_info: list[tuple[str, int]]) -> dict[str, int]:
    """fnmatch patterns -> {module path: C}; a pattern matching nothing or a module matched twice is an error."""
    module_to_c: dict[str, int] = {}
    names = [name for name, _ in target.named_modules() if name]
    for pattern, C in module_info:
        matched = [n for n in names if fnmatch(n, pattern)]
        if not matched:
            raise ValueError(f"module pattern {pattern!r} matches no module of {type(target).__name__}")
        for name in matched:
            if name in module_to_c:
                raise ValueError(f"module {name!r} is matched by more than one pattern")
            module_to_c[name] = C
    return module_to_c


def _key(path: str) -> str:
    return path.replace(".", "-")


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 style Conv1D (transformers.pytorch_utils): y = x W + b with W stored (d_in, d_out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


class ComponentModel(nn.Module):
    """Frozen target + rank-one components per decomposed module + layerwise CI functions."""

    def __init__(
        self,
        target: nn.Module,
        module_to_c: dict[str, int],
        ci_fn_type: CiFnType = "mlp",
        ci_hidden_dims: list[int] | None = None,
        sigmoid_type: SigmoidType = "leaky_hard",
        tied_weights: list[tuple[str, str]] | None = None,
        global_ci: GlobalCiFnConfig | dict | None = None,
    ) -> None:
        super().__init__()
        self.target_model = target
        target.requires_grad_(False)
        self.module_to_c = dict(module_to_c)
        self.target_module_paths = list(module_to_c)
        self.sigmoid_type = sigmoid_type
        self._lower, self._upper = get_sigmoids(sigmoid_type)
        hidden = list(ci_hidden_dims if ci_hidden_dims is not None else [16])
        if isinstance(global_ci, dict):
            global_ci = GlobalCiFnConfig.model_validate(global_ci)
        self.global_ci_config = global_ci
        comps: dict[str, nn.Module] = {}
        ci_fns: dict[str, nn.Module] = {}
        self._transposed: set[str] = set()  # Conv1D paths: the target weight is stored (d_in, d_out)
        ci_input_dims: dict[str, int] = {}
        for path, C in module_to_c.items():
            module = target.get_submodule(path)
            if isinstance(module, nn.Embedding):
                comps[_key(path)] = EmbeddingComponents(module.num_embeddings, module.embedding_dim, C)
                ci_input_dims[path] = C  # global CI fns read an embedding's component activations
                if global_ci is None:
                    ci_fns[_key(path)] = make_ci_fn(ci_fn_type, C, module.embedding_dim, hidden, is_embedding=True)
                continue
            if is_conv1d(module):
                d_in, d_out = module.weight.shape
                self._transposed.add(path)
            elif isinstance(getattr(module, "weight", None), Tensor) and module.weight.ndim == 2:
                d_out, d_in = module.weight.shape
            else:
                raise ValueError(f"cannot decompose {path!r}: {type(module).__name__} has no 2-D weight")
            bias = getattr(module, "bias", None)
            comps[_key(path)] = LinearComponents(d_in, d_out, C, bias if isinstance(bias, Tensor) else None)
            ci_input_dims[path] = d_in
            if global_ci is None:
                ci_fns[_key(path)] = make_ci_fn(ci_fn_type, C, d_in, hidden)
        self._components = nn.ModuleDict(comps)
        self.ci_fn = nn.Module()
        if global_ci is None:
            self.ci_fn._ci_fns = nn.ModuleDict(ci_fns)
        else:
            self.ci_fn._global = make_global_ci_fn(global_ci, self.module_to_c, ci_input_dims)
        self.tied_weights = list(tied_weights or [])
        for src, dst in self.tied_weights:
            tie_transposed(self.components(src), self.components(dst))

    # --- access -------------------------------------------------------------------------------------

    def components(self, path: str) -> Components:
        return self._components[_key(path)]

    def target_weight(self, path: str) -> Tensor:
        """The frozen target matrix W_l (d_out x d_in for linear-like, vocab x d for embeddings)."""
        weight = self.target_model.get_submodule(path).weight
        return weight.T if path in self._transposed else weight

    def component_parameters(self) -> list[nn.Parameter]:
        return list(self._components.parameters())

    def ci_fn_parameters(self) -> list[nn.Parameter]:
        return list(self.ci_fn.parameters())

    def deltas(self) -> dict[str, Tensor]:
        """Δ_l = W_l - W'_l for every module, with gradient into U, V."""
        return {p: self.target_weight(p) - self.components(p).weight for p in self.target_module_paths}

    # --- causal importances -----------------------------------------------------------------------

    def ci_logits(self, pre_weight_acts: dict[str, Tensor], detach_inputs: bool = False) -> dict[str, Tensor]:
        """Pre-sigmoid CI logits z of every module from the module inputs."""
        acts = {
            p: pre_weight_acts[p].detach() if detach_inputs else pre_weight_acts[p] for p in self.target_module_paths
        }
        if self.global_ci_config is not None:
            inputs = {
                p: self.components(p).component_acts(x) if isinstance(self.components(p), EmbeddingComponents) else x
                for p, x in acts.items()
            }
            return self.ci_fn._global(inputs)
        logits = {}
        for path, x in acts.items():
            fn = self.ci_fn._ci_fns[_key(path)]
            logits[path] = fn(self.components(path).component_acts(x) if fn.takes_component_acts else x)
        return logits

    def causal_importances(
        self, pre_weight_acts: dict[str, Tensor], sampling: str = "continuous", detach_inputs: bool = False
    ) -> CIOutputs:
        """CIs from module inputs: lower-leaky (masks), upper-leaky (penalty), logits."""
        logits = self.ci_logits(pre_weight_acts, detach_inputs)
        lower, upper, pre = {}, {}, {}
        for path in self.target_module_paths:
            z = logits[path]
            lower[path] = self._lower(_binomial_perturbed(z) if sampling == "binomial" else z)
            upper[path] = self._upper(z)
            pre[path] = z
        return CIOutputs(lower, upper, pre)

    def lower_leaky_ci(self, pre_weight_acts: dict[str, Tensor]) -> dict[str, Tensor]:
        """The mask-side CIs alone, without sampling noise: what inference reads (harvest, eval), without the
        penalty-side sigmoid that only training needs."""
        logits = self.ci_logits(pre_weight_acts)
        return {path: self._lower(logits[path]) for path in self.target_module_paths}

    def lower_leaky_ci_into(self, pre_weight_acts: dict[str, Tensor], out: dict[str, Tensor]) -> None:
        """`lower_leaky_ci` written into `out` (a tensor per module, e.g. column blocks of one flat [..., C_total]
        tensor), for inference: a sigmoid whose forward is a clamp writes there directly, which spares a CI-sized
        intermediate and its copy (at 16K components, 26 of a harvest batch's ~350 ms on one CPU thread)."""
        logits = self.ci_logits(pre_weight_acts)
        for path in self.target_module_paths:
            z, block = logits[path], out[path]
            if z.shape != block.shape:  # an out= of another shape would be resized, not refused
                raise ValueError(f"{path}: CI of shape {tuple(z.shape)} for an output block of {tuple(block.shape)}")
            if self.sigmoid_type in CLAMP_FORWARD and z.dtype == block.dtype:
                torch.clamp(z, 0.0, 1.0, out=block)
            else:
                block.copy_(self._lower(z))

    # --- forward ------------------------------------------------------------------------------------

    @contextmanager
    def _hooks(
        self,
        mask_infos: dict[str, MaskInfo] | None,
        cache: dict[str, Tensor] | None,
        out_cache: dict[str, Tensor] | None = None,
    ) -> Iterator[None]:
        handles = []

        def make_hook(path: str, info: MaskInfo | None):
            comp = self.components(path)

            def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
                x = args[0]
                if cache is not None:
                    cache[path] = x
                if info is None:
                    if out_cache is not None:
                        out_cache[path] = output
                    return None
                out = comp(x, info.mask, info.delta, info.delta_mask)
                if isinstance(info.routing, Tensor):
                    out = torch.where(info.routing.unsqueeze(-1), out, output)
                if out_cache is not None:
                    out_cache[path] = out
                return out

            return hook

        try:
            for path in self.target_module_paths:
                info = mask_infos.get(path) if mask_infos else None
                if info is None and cache is None and out_cache is None:
                    continue
                module = self.target_model.get_submodule(path)
                handles.append(module.register_forward_hook(make_hook(path, info)))
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: Tensor, mask_infos: dict[str, MaskInfo] | None = None) -> Tensor:
        """Target output; modules in `mask_infos` are replaced by their masked components."""
        if not mask_infos:
            return output_logits(self.target_model(x))
        with self._hooks(mask_infos, None):
            return output_logits(self.target_model(x))

    def forward_with_outputs(
        self, x: Tensor, mask_infos: dict[str, MaskInfo] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward (masked where `mask_infos` says) that also returns every decomposed module's final output."""
        out_cache: dict[str, Tensor] = {}
        with self._hooks(mask_infos, None, out_cache):
            out = self.target_model(x)
        return output_logits(out), out_cache

    def forward_with_inputs(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Unmasked target forward that also returns each decomposed module's input (pre-weight acts)."""
        cache: dict[str, Tensor] = {}
        with self._hooks(None, cache):
            out = self.target_model(x)
        return output_logits(out), cache

    def extra_config(self) -> dict[str, Any]:
        """What is needed to rebuild this wrapper around the same target (saved in the checkpoint)."""
        return {
            "module_to_c": self.module_to_c,
            "sigmoid_type": self.sigmoid_type,
            "tied_weights": [list(t) for t in self.tied_weights],
            "global_ci": self.global_ci_config.model_dump(mode="json") if self.global_ci_config else None,
        }


def build_component_model(
    target: nn.Module,
    module_info: list[tuple[str, int]],
    ci_fn_type: CiFnType,
    ci_hidden_dims: list[int],
    sigmoid_type: SigmoidType = "leaky_hard",
    tied_weights: list[tuple[str, str]] | None = None,
    global_ci: GlobalCiFnConfig | None = None,
) -> ComponentModel:
    """Expand patterns and build the wrapper (consumes the torch RNG: seed before calling)."""
    module_to_c = expand_module_patterns(target, module_info)
    return ComponentModel(target, module_to_c, ci_fn_type, ci_hidden_dims, sigmoid_type, tied_weights, global_ci)
