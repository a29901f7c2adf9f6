"""What the harvest sees of one batch: per-token CI and component activation of every component, firings,
and the target's top next-token predictions. Computed deterministically in fp32 (no sampling; no autocast unless
the harvest's `autocast_bf16` asks for bfloat16 forwards, whose outputs are cast back to fp32).

- CI is the lower-leaky CI function output with `sampling="continuous"`: for the leaky hard sigmoid that is
  clamp(pre-activation, 0, 1), with none of the binomial noise SPD training may use, so firings do not
  depend on an RNG (reference section 4 risk).
- The component activation of component c at a token is (x . V[:, c]) * ||U[c]||: the size of c's
  contribution to the module output (signed; the reference's definition).
- Components are flattened in `module_to_c` order: flat index = layer offset + index within the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spd.harvest.top_m import top_m_indices
from spd.models.component_model import ComponentModel
from spd.models.components import LinearComponents


@dataclass(frozen=True)
class LayerSpan:
    """One decomposed module's place in the flat component axis."""

    name: str
    offset: int
    C: int


def layer_spans(model: ComponentModel) -> list[LayerSpan]:
    spans, offset = [], 0
    for name, C in model.module_to_c.items():
        spans.append(LayerSpan(name, offset, int(C)))
        offset += int(C)
    return spans


@dataclass
class BatchActivations:
    """Everything the accumulators need from one batch [B, S] (tensors on the model's device)."""

    tokens: Tensor  # [B, S] int64
    ci: Tensor  # [B, S, C] float32, in [0, 1]
    act: Tensor  # [B, S, C] float32, signed
    top_next: Tensor  # [B, S, m] int64: the target's m most likely next tokens at each position


class ActivationReader:
    """Runs the frozen decomposition on token batches (one forward of the target plus the CI functions)."""

    def __init__(self, model: ComponentModel, output_top_m: int, autocast_bf16: bool = False) -> None:
        self.model = model
        self.output_top_m = output_top_m
        self.autocast_bf16 = autocast_bf16
        self.spans = layer_spans(model)
        self.u_norms = {span.name: model.components(span.name).U.detach().float().norm(dim=1) for span in self.spans}

    @property
    def n_components(self) -> int:
        return sum(span.C for span in self.spans)

    def _component_acts_into(self, name: str, x: Tensor, out: Tensor) -> None:
        """x V of module `name` into `out` ([tokens, C], a column block of the flat activations): a linear's
        product goes straight there (BLAS writes a column block of a row-major matrix as it is); autocast and
        embeddings compute, then copy."""
        components = self.model.components(name)
        if isinstance(components, LinearComponents) and not self.autocast_bf16:
            rows = x.reshape(-1, x.shape[-1])
            # only where out= fits as it is: mm would resize a block of another shape instead of refusing it
            if rows.shape[0] == out.shape[0] and rows.dtype == components.V.dtype == out.dtype:
                torch.mm(rows, components.V, out=out)
                return
        out.copy_(components.component_acts(x).reshape(out.shape))

    @torch.inference_mode()
    def bare_forward(self, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Target forward + CI functions only: the baseline the throughput benchmark compares against."""
        logits, inputs = self.model.forward_with_inputs(tokens)
        ci = self.model.lower_leaky_ci(inputs)
        return logits, ci

    def autocast(self, tokens: Tensor) -> torch.autocast:
        """bfloat16 autocast on the batch's device when autocast_bf16 (a no-op context otherwise)."""
        return torch.autocast(device_type=tokens.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor) -> BatchActivations:
        # every module writes its columns of the flat [B, S, C] tensors in place: no per-module CI or activation
        # tensor is built and copied (at 16K components the copies were 52 of a batch's ~350 ms on one CPU thread)
        flat_ci = torch.empty((*tokens.shape, self.n_components), dtype=torch.float32, device=tokens.device)
        flat_act = torch.empty_like(flat_ci)
        blocks = {span.name: slice(span.offset, span.offset + span.C) for span in self.spans}
        with self.autocast(tokens):
            logits, inputs = self.model.forward_with_inputs(tokens)
            self.model.lower_leaky_ci_into(inputs, {name: flat_ci[..., columns] for name, columns in blocks.items()})
            act_rows = flat_act.view(-1, self.n_components)  # [tokens, C]: a module's block is a column slice
            for name, columns in blocks.items():
                self._component_acts_into(name, inputs[name], act_rows[:, columns])
        for name, columns in blocks.items():
            flat_act[..., columns].mul_(self.u_norms[name])
        # unsorted: the statistics count membership in the top m (spd.harvest.top_m: exact, 1.6-8x faster on CPU)
        top_next = top_m_indices(logits.float(), self.output_top_m)
        return BatchActivations(tokens=tokens, ci=flat_ci, act=flat_act, top_next=top_next)
