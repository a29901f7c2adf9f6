"""Persistent PGD reconstruction: adversarial sources that persist across training steps.

Sources s ∈ [0, 1] (last entry = the δ mask when the delta component is on) give masks g + (1 - g) s[..., :C]
and δ mask s[..., C]. Each training step the caller computes the PPGD loss, takes the sources' gradient
(`torch.autograd.grad(loss, state.sources(), retain_graph=True)`) BEFORE the total backward, then
`state.update(grads, step, total_steps)` AFTER it: one ascent step per training step, with its own lr
schedule, sources clamped back into [0, 1]. With `use_sigmoid_parameterization` the stored sources are
unbounded (drawn from randn, never clamped) and the masks read σ(s) instead: the ascent never stalls at a bound.

`state_dict()` / `load_state_dict()` carry the sources and the Adam moments, so a checkpoint (spd/models/checkpoint.py
`save_ppgd_state`) lets continued training pick the adversary up where it was.

Data-parallel training (spd/train/distributed.py): `batch_dims` stay the GLOBAL batch's and each rank holds the
sources of its slice. Shared scopes (all but per_batch_per_position) are one adversary: identical on every rank,
their gradients averaged through `grad_reducer` before each ascent step. per_batch_per_position sources are this
rank's rows [r*B/W, (r+1)*B/W) of what one process would hold (drawn at the global shape, so the start is the
same), never averaged; `load_state_dict` takes the global [B, ...] form a checkpoint stores and keeps its rows.

Scopes (source leading shape for batch dims (B, T)):
    single_mask              (1, 1, C')   one source for every position
    broadcast_across_batch   (1, T, C')   one per sequence position
    repeat_across_batch      (n, T, C')   n_sources, tiled along the batch (row b uses source b mod n)
    per_batch_per_position   (B, T, C')   one per token
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spd.losses.config import PersistentPGDConfig, PPGDScope
from spd.losses.config import PPGDOptimizer as PPGDOptimizer
from spd.losses.config import Routing as Routing
from spd.losses.divergence import OutputLossType, divergence_sum_and_count
from spd.losses.pgd import source_mask_infos
from spd.models.component_model import ComponentModel
from spd.models.masks import MaskInfo
from spd.models.routing import route
from spd.schedules import scheduled_value


def source_shape(scope: PPGDScope, batch_dims: tuple[int, ...], width: int) -> tuple[int, ...]:
    """Leading shape of one module's sources for a scope (see the module docstring)."""
    ones = (1,) * len(batch_dims)
    if scope.type == "single_mask":
        return (*ones, width)
    if scope.type == "broadcast_across_batch":
        return (1, *batch_dims[1:], width)
    if scope.type == "repeat_across_batch":
        if batch_dims[0] % scope.n_sources:
            raise ValueError(f"n_sources={scope.n_sources} must divide the batch size {batch_dims[0]}")
        return (scope.n_sources, *batch_dims[1:], width)
    return (*batch_dims, width)


class PersistentPGDState:
    """The persistent sources of every decomposed module and their optimizer state."""

    def __init__(
        self,
        module_to_c: dict[str, int],
        batch_dims: tuple[int, ...],
        config: PersistentPGDConfig,
        use_delta_component: bool = True,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config, self.use_delta = config, use_delta_component
        self.rank, self.world_size = rank, world_size
        global_dims = tuple(batch_dims)
        if global_dims[0] % world_size:
            raise ValueError(f"batch size {global_dims[0]} is not divisible by world_size={world_size}")
        self.local_rows = global_dims[0] // world_size
        self.batch_dims = (self.local_rows, *global_dims[1:])  # this rank's slice of the training batch
        scope = config.scope
        if world_size > 1 and scope.type == "repeat_across_batch" and self.local_rows % scope.n_sources:
            raise ValueError(
                f"repeat_across_batch: n_sources={scope.n_sources} must divide the per-rank batch "
                f"{self.local_rows} (batch_size {global_dims[0]} / world_size {world_size})"
            )
        # averages shared sources' gradients over ranks (in place) before an ascent step; None: one process
        self.grad_reducer: Callable[[list[Tensor]], None] | None = None
        self.sources_by_module: dict[str, Tensor] = {}
        init = torch.randn if config.use_sigmoid_parameterization else torch.rand
        for path, C in module_to_c.items():
            shape = source_shape(scope, global_dims, C + int(use_delta_component))
            s = init(shape, device=device)  # the global shape: a 1-process run's draw, whatever the world size
            if self.per_rank:
                s = s[rank * self.local_rows : (rank + 1) * self.local_rows].clone()
            self.sources_by_module[path] = s.requires_grad_(True)
        self._m = {p: torch.zeros_like(s) for p, s in self.sources_by_module.items()}
        self._v = {p: torch.zeros_like(s) for p, s in self.sources_by_module.items()}
        self._t = 0

    @property
    def per_rank(self) -> bool:
        """Whether each rank holds its own rows (per_batch_per_position over several ranks), not a shared copy."""
        return self.world_size > 1 and self.config.scope.type == "per_batch_per_position"

    def sources(self) -> list[Tensor]:
        return list(self.sources_by_module.values())

    def tensors(self) -> list[Tensor]:
        """Sources and Adam moments: what ranks must agree on for a shared scope (broadcast from rank 0)."""
        return [*self.sources(), *self._m.values(), *self._v.values()]

    def effective(self, path: str) -> Tensor:
        """The source values the masks read: σ(s) with the sigmoid parameterisation, s itself otherwise."""
        s = self.sources_by_module[path]
        return torch.sigmoid(s) if self.config.use_sigmoid_parameterization else s

    def expanded(self, path: str, batch_dims: tuple[int, ...] | None = None) -> Tensor:
        """Effective sources broadcast to (*batch_dims, C') (default: the training batch's): repeat_across_batch
        tiles along the batch. Evaluation may use another batch size; per_batch_per_position sources then do not
        fit, and repeat_across_batch needs n_sources to divide it."""
        dims = self.batch_dims if batch_dims is None else tuple(batch_dims)
        s = self.effective(path)
        if self.config.scope.type == "repeat_across_batch":
            if dims[0] % s.shape[0]:
                raise ValueError(f"n_sources={s.shape[0]} must divide the batch size {dims[0]}")
            s = s.repeat(dims[0] // s.shape[0], *([1] * (s.dim() - 1)))
        if self.config.scope.type == "per_batch_per_position" and tuple(s.shape[:-1]) != dims:
            raise ValueError(f"per_batch_per_position sources of shape {tuple(s.shape[:-1])} cannot serve batch {dims}")
        return s.expand(*dims, s.shape[-1])

    def mask_infos(
        self,
        ci: dict[str, Tensor],
        deltas: dict[str, Tensor] | None,
        routing: dict[str, Tensor] | None = None,
    ) -> dict[str, MaskInfo]:
        """m = g + (1 - g) s[..., :C]; δ mask s[..., C] (when the delta component is on and deltas are given).
        The sources are broadcast to the CIs' batch dims."""
        dims = tuple(next(iter(ci.values())).shape[:-1])
        sources = {path: self.expanded(path, dims) for path in ci}
        return source_mask_infos(ci, deltas if self.use_delta else None, sources, routing)

    def state_dict(self) -> dict[str, Any]:
        """Sources, Adam moments and step count (copies on the CPU), for a checkpoint."""
        return {
            "sources": {p: s.detach().cpu().clone() for p, s in self.sources_by_module.items()},
            "m": {p: t.cpu().clone() for p, t in self._m.items()},
            "v": {p: t.cpu().clone() for p, t in self._v.items()},
            "t": self._t,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` saved, in place (the source tensors stay the same leaves). Per-rank sources
        are loaded from the global form (every rank's rows concatenated, as a 1-process run saves them)."""
        if set(state["sources"]) != set(self.sources_by_module):
            raise ValueError(
                f"PPGD state holds modules {sorted(state['sources'])}, expected {sorted(self.sources_by_module)}"
            )
        rows = slice(self.rank * self.local_rows, (self.rank + 1) * self.local_rows)
        for path, s in self.sources_by_module.items():
            for mine, saved in (
                (s, state["sources"][path]),
                (self._m[path], state["m"][path]),
                (self._v[path], state["v"][path]),
            ):
                if self.per_rank and saved.shape[0] == self.local_rows * self.world_size:
                    saved = saved[rows]
                if mine.shape != saved.shape:
                    raise ValueError(
                        f"PPGD state of {path!r}: shape {tuple(saved.shape)}, expected {tuple(mine.shape)}"
                    )
                mine.copy_(saved)
        self._t = int(state["t"])

    def lr(self, step: int, total_steps: int) -> float:
        return scheduled_value(step, total_steps, self.config.optimizer.lr_schedule)

    @torch.no_grad()
    def update(self, grads: list[Tensor] | dict[str, Tensor], step: int, total_steps: int) -> None:
        """One ascent step on every module's sources, then clamp to [0, 1] (not with the sigmoid parameterisation,
        whose raw sources are unbounded)."""
        if not isinstance(grads, dict):
            grads = dict(zip(self.sources_by_module, grads, strict=True))
        if self.grad_reducer is not None and not self.per_rank:
            grads = {p: g.clone() for p, g in grads.items()}  # averaged in place: leave the caller's tensors alone
            self.grad_reducer(list(grads.values()))
        opt, lr = self.config.optimizer, self.lr(step, total_steps)
        self._t += 1
        for path, s in self.sources_by_module.items():
            g = grads[path]
            if opt.type == "sign":
                s.add_(lr * g.sign())
            else:
                m, v = self._m[path], self._v[path]
                m.mul_(opt.beta1).add_((1 - opt.beta1) * g)
                v.mul_(opt.beta2).add_((1 - opt.beta2) * g * g)
                m_hat = m / (1 - opt.beta1**self._t)
                v_hat = v / (1 - opt.beta2**self._t)
                s.add_(lr * m_hat / (v_hat.sqrt() + opt.eps))
            if not self.config.use_sigmoid_parameterization:
                s.clamp_(0.0, 1.0)
            s.grad = None  # the total backward may have accumulated into the leaf; sources move only here


def ppgd_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    state: PersistentPGDState,
    routing: Routing = "all",
    output_loss_type: OutputLossType = "mse",
) -> Tensor:
    """Output divergence with the persistent adversarial masks; a router (`uniform_k_subset` or a RoutingConfig)
    replaces a random subset of modules per position (unrouted positions keep the target output: zero loss,
    but counted)."""
    routes = route(routing, ci)
    s, n = divergence_sum_and_count(model(batch, state.mask_infos(ci, deltas, routes)), target_out, output_loss_type)
    return s / n


@torch.no_grad()
def ppgd_eval_sums(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    state: PersistentPGDState,
    output_loss_type: OutputLossType = "mse",
) -> tuple[dict[str, tuple[float, int]], tuple[float, int]]:
    """How well the components hold up against the current persistent sources (the reference's PPGD evals): one
    forward with every module masked by g + (1 - g) s (routing "all", also for the subset loss's sources, so the
    eval measures the sources and not the router). Returns per module (Σ squared error of its output against the
    target's, numel) and (output divergence sum, count) as the training loss normalises it (mse: elements; kl:
    positions). Sums, so the caller pools batches and modules before dividing."""
    _, target_outputs = model.forward_with_outputs(batch)
    out, outputs = model.forward_with_outputs(batch, state.mask_infos(ci, deltas))
    per = {p: (float(((outputs[p] - target_outputs[p]) ** 2).sum()), target_outputs[p].numel()) for p in ci}
    total, n = divergence_sum_and_count(out, target_out, output_loss_type)
    return per, (float(total), n)


def ppgd_warmup(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    ci: dict[str, Tensor],
    deltas: dict[str, Tensor] | None,
    state: PersistentPGDState,
    step: int,
    total_steps: int,
    routing: Routing = "all",
    output_loss_type: OutputLossType = "mse",
) -> None:
    """`n_warmup_steps` inner ascent steps on the current batch (CIs and deltas held fixed)."""
    ci_d = {k: v.detach() for k, v in ci.items()}
    deltas_d = {k: v.detach() for k, v in deltas.items()} if deltas is not None else None
    for _ in range(state.config.n_warmup_steps):
        loss = ppgd_recon_loss(model, batch, target_out, ci_d, deltas_d, state, routing, output_loss_type)
        state.update(torch.autograd.grad(loss, state.sources()), step, total_steps)


__all__ = [
    "PPGDOptimizer",
    "PPGDScope",
    "PersistentPGDConfig",
    "PersistentPGDState",
    "ppgd_eval_sums",
    "ppgd_recon_loss",
    "ppgd_warmup",
    "route",
    "source_shape",
]
