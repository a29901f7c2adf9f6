"""The SPD training loop, writing a checkpoint directory as it goes.

Order per step: lr from schedule -> Δ = W - W' (with grad) -> batch -> frozen target forward caching
module inputs -> CIs -> losses -> backward -> log / eval / save -> clip -> optimizer step.

Data-parallel (spd/train/distributed.py, issue 26): `cfg.batch_size` is the global batch; every rank draws the
same global batch and keeps its slice, runs its losses on its own RNG stream (`RankRNG`), and averages gradients
after backward; logged train losses and eval metrics are the global ones, and only rank 0 writes out_dir.

Resume (issue 26): at every save rank 0 also writes out_dir/resume/ (spd.models.checkpoint.save_resume_state):
everything the loop carries from one step to the next. A run that finds a resume state of the same run config
continues after its step (bit-identical to an uninterrupted run with the same world size); resume/ is removed
once the run succeeds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spd.lm.model import TinyLM
from spd.losses import (
    ci_masked_recon_loss,
    faithfulness_loss,
    importance_minimality_loss,
    stochastic_recon_layerwise_loss,
    stochastic_recon_loss,
    unmasked_recon_loss,
)
from spd.losses.ci_masked_recon_layerwise import ci_masked_recon_layerwise_loss
from spd.losses.hidden_acts_recon import (
    ci_hidden_acts_recon_loss,
    hidden_acts_squared_errors,
    pgd_hidden_acts_recon_loss,
    stochastic_hidden_acts_recon_loss,
)
from spd.losses.importance_minimality import annealed_p
from spd.losses.persistent_pgd import PersistentPGDState, ppgd_eval_sums, ppgd_recon_loss, ppgd_warmup
from spd.losses.pgd import PGDSettings
from spd.losses.pgd_recon import pgd_recon_layerwise_loss, pgd_recon_loss
from spd.models import masks as mask_lib
from spd.models.checkpoint import (
    TARGET_DIR,
    clear_resume_state,
    load_ppgd_state,
    load_resume_state,
    save_model_state,
    save_ppgd_state,
    save_resume_state,
    save_run_config,
)
from spd.models.component_model import ComponentModel, build_component_model
from spd.models.identity import insert_identity_operations
from spd.schedules import coeff_warmup_factor, scheduled_value
from spd.targets import TargetModelConfig, save_target
from spd.targets.lm import LMData, ToyData, tiny_lm_module_info
from spd.train import metrics as M
from spd.train.config import (
    PPGD_EVALS,
    PPGD_LOSSES,
    IdentityCIErrorEvalConfig,
    ImportanceMinimalityLossConfig,
    PersistentPGDReconLossConfig,
    PersistentPGDReconSubsetLossConfig,
    SPDConfig,
)
from spd.train.distributed import (
    DataParallel,
    RankRNG,
    global_rng_state,
    local_batch_size,
    set_global_rng_state,
)
from spd.train.lm_metrics import add_ce_unrecovered, ce_and_kl
from spd.utils import atomic_write_bytes, atomic_write_json, set_seed

Log = Callable[[str], None]


def compute_losses(
    model: ComponentModel,
    cfg: SPDConfig,
    batch: Tensor,
    target_out: Tensor,
    ci_lower: dict[str, Tensor],
    ci_upper: dict[str, Tensor],
    deltas: dict[str, Tensor],
    step: int,
    losses: list | None = None,
    ppgd_states: dict[str, PersistentPGDState] | None = None,
    world_size: int = 1,
) -> dict[str, Tensor]:
    """Every configured loss by classname (unweighted). PPGD losses need their persistent states by classname;
    world_size (data-parallel ranks) scales the importance penalty's frequency term to the global batch."""
    frac = step / max(cfg.steps, 1)
    stoch_deltas = deltas if cfg.use_delta_component else None
    out: dict[str, Tensor] = {}
    for lc in losses if losses is not None else cfg.losses:
        name = lc.classname
        if name == "ImportanceMinimalityLoss":
            out[name] = importance_minimality_loss(
                ci_upper,
                lc.pnorm,
                frac,
                lc.eps,
                lc.beta,
                world_size,
                lc.p_anneal_start_frac,
                lc.p_anneal_final_p,
                lc.p_anneal_end_frac,
            )
        elif name == "StochasticReconLoss":
            out[name] = stochastic_recon_loss(
                model, batch, target_out, ci_lower, stoch_deltas, cfg.n_mask_samples, cfg.sampling, cfg.output_loss_type
            )
        elif name == "StochasticReconLayerwiseLoss":
            out[name] = stochastic_recon_layerwise_loss(
                model, batch, target_out, ci_lower, stoch_deltas, cfg.n_mask_samples, cfg.sampling, cfg.output_loss_type
            )
        elif name == "StochasticReconSubsetLoss":
            out[name] = stochastic_recon_loss(
                model, batch, target_out, ci_lower, stoch_deltas, cfg.n_mask_samples, cfg.sampling,
                cfg.output_loss_type, lc.routing,
            )  # fmt: skip
        elif name == "CIMaskedReconLoss":
            out[name] = ci_masked_recon_loss(model, batch, target_out, ci_lower, cfg.output_loss_type)
        elif name == "CIMaskedReconSubsetLoss":
            out[name] = ci_masked_recon_loss(model, batch, target_out, ci_lower, cfg.output_loss_type, lc.routing)
        elif name == "CIMaskedReconLayerwiseLoss":
            out[name] = ci_masked_recon_layerwise_loss(model, batch, target_out, ci_lower, cfg.output_loss_type)
        elif name in ("PGDReconLoss", "PGDReconSubsetLoss"):
            out[name] = pgd_recon_loss(
                model, batch, target_out, ci_lower, stoch_deltas, _pgd_settings(lc), cfg.output_loss_type,
                getattr(lc, "routing", "all"),
            )  # fmt: skip
        elif name == "PGDReconLayerwiseLoss":
            out[name] = pgd_recon_layerwise_loss(
                model, batch, target_out, ci_lower, stoch_deltas, _pgd_settings(lc), cfg.output_loss_type
            )
        elif name == "UnmaskedReconLoss":
            out[name] = unmasked_recon_loss(model, batch, target_out, ci_lower, cfg.output_loss_type)
        elif name == "FaithfulnessLoss":
            out[name] = faithfulness_loss(deltas)
        elif name in PPGD_LOSSES:
            if ppgd_states is None or name not in ppgd_states:
                raise ValueError(f"{name} needs its persistent PGD state (training only)")
            routing = lc.routing if isinstance(lc, PersistentPGDReconSubsetLossConfig) else "all"
            out[name] = ppgd_recon_loss(
                model, batch, target_out, ci_lower, stoch_deltas, ppgd_states[name], routing, cfg.output_loss_type
            )
        elif name == "StochasticHiddenActsReconLoss":
            out[name] = stochastic_hidden_acts_recon_loss(
                model, batch, ci_lower, stoch_deltas, cfg.n_mask_samples, cfg.sampling
            )
        elif name == "CIHiddenActsReconLoss":
            out[name] = ci_hidden_acts_recon_loss(model, batch, ci_lower)
        elif name == "PGDHiddenActsReconLoss":
            out[name] = pgd_hidden_acts_recon_loss(model, batch, ci_lower, stoch_deltas, _pgd_settings(lc))
        else:  # pragma: no cover - the config union makes this unreachable
            raise ValueError(f"unknown loss {name!r}")
    return out


def _pgd_settings(loss_config: Any) -> PGDSettings:
    """The fresh-each-call PGD knobs of a PGD loss's config (its init, step size, steps and mask scope)."""
    return PGDSettings(loss_config.init, loss_config.step_size, loss_config.n_steps, loss_config.mask_scope)


def _grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.norm() ** 2 for p in params if p.grad is not None]
    return float(torch.stack(norms).sum().sqrt()) if norms else 0.0


def _imp_config(cfg: SPDConfig) -> ImportanceMinimalityLossConfig | None:
    return next((lc for lc in cfg.losses if isinstance(lc, ImportanceMinimalityLossConfig)), None)


class Decomposer:
    """Owns one SPD run: the wrapper, optimizer, data source and output directory."""

    def __init__(
        self,
        target: nn.Module,
        cfg: SPDConfig,
        out_dir: Path,
        seed: int,
        device: torch.device,
        target_config: TargetModelConfig,
        target_info: dict[str, Any] | None = None,
        log: Log = print,
        data: LMData | ToyData | None = None,
        tokenizer: Path | None = None,
        extra_run_config: dict[str, Any] | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        self.parallel = parallel if parallel is not None else DataParallel()
        world, rank = self.parallel.world_size, self.parallel.rank
        local_batch_size(cfg.batch_size, world, "batch_size")  # before anything is built or written
        local_batch_size(cfg.eval_batch_size or cfg.batch_size, world, "eval_batch_size")
        self.is_main = self.parallel.is_main
        self.cfg, self.out_dir, self.seed, self.device = cfg, Path(out_dir), seed, device
        self.log: Log = log if world == 1 else _rank_prefixed(log, rank)
        self.data = data if data is not None else ToyData(target, device)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        set_seed(seed)
        if self.is_main:
            save_target(target, target_config, self.out_dir / TARGET_DIR, target_info, tokenizer=tokenizer)
        target.eval().requires_grad_(False)
        identity_paths = insert_identity_operations(target, [s.module_pattern for s in cfg.identity_module_info])
        if cfg.module_info is not None:
            module_info = [(s.module_pattern, s.C) for s in cfg.module_info]
        elif hasattr(target, "default_module_info"):
            module_info = target.default_module_info(cfg.default_C)
        elif isinstance(target, TinyLM):
            module_info = tiny_lm_module_info(target, cfg.default_C)
        else:
            raise ValueError("module_info is required for targets without default_module_info()")
        id_cs = {f"{s.module_pattern}.pre_identity": s.C for s in cfg.identity_module_info}
        module_info += [(p, next(c for pat, c in id_cs.items() if _fn(p, pat))) for p in identity_paths]
        tied = target.tied_weights() if cfg.tie_weights and hasattr(target, "tied_weights") else []
        names = {n for n, _ in module_info}
        tied = [t for t in tied if t[0] in names and t[1] in names]
        if cfg.ci_fn.mode == "global":
            self.model = build_component_model(target, module_info, "mlp", [], cfg.sigmoid_type, tied, cfg.ci_fn)
        else:
            self.model = build_component_model(
                target, module_info, cfg.ci_fn.fn_type, cfg.ci_fn.hidden_dims, cfg.sigmoid_type, tied
            )
        self.model.to(device)
        # every rank starts from rank 0's components, CI functions and target (in case a rank built it differently)
        self.parallel.broadcast_(list(self.model.state_dict().values()))
        set_seed(seed)  # masks and data: a fresh stream from the seed, as the reference's seed_per_rank
        # data-parallel: the global stream above stays the shared data stream; each rank's masks come from its own
        self.rank_rng = RankRNG(seed, rank, world, device)
        # persistent PGD sources, one state per PPGD loss, shaped by the training batch's leading dims
        batch_dims = (cfg.batch_size, self.data.seq_len) if self.data.is_lm else (cfg.batch_size,)
        self.ppgd_states: dict[str, PersistentPGDState] = {
            lc.classname: PersistentPGDState(
                self.model.module_to_c, batch_dims, lc.ppgd(), cfg.use_delta_component, device, rank, world
            )
            for lc in cfg.losses
            if isinstance(lc, PersistentPGDReconLossConfig)
        }
        for state in self.ppgd_states.values():
            if world > 1:
                state.grad_reducer = self.parallel.average_
            if not state.per_rank:  # one shared adversary: rank 0's
                self.parallel.broadcast_(state.tensors())
        self.target = target
        self.comp_params = self.model.component_parameters()
        self.ci_params = self.model.ci_fn_parameters()
        # foreach: one multi-tensor update over all parameters (PyTorch's default on CUDA only); on CPU the
        # per-parameter loop showed up in profiles of the small toy steps
        self.optimizer = torch.optim.AdamW(
            self.comp_params + self.ci_params, lr=cfg.lr_schedule.start_val, weight_decay=0, foreach=True
        )
        self.run_config = {
            "spd": cfg.model_dump(mode="json"),
            "seed": seed,
            "device": str(device),
            "module_to_c": self.model.module_to_c,
            "module_order": list(self.model.module_to_c),  # JSON objects are written with sorted keys
            "tied_weights": [list(t) for t in tied],
            "target": target_config.model_dump(mode="json"),
            "target_info": target_info or {},
            "data": self.data.describe(),
            "world_size": world,
            **(extra_run_config or {}),
        }
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.drawn: dict[str, int] = {}  # batches drawn per "train:<size>" / "eval:<size>" stream, for resume
        self.resume = self._find_resume()
        if self.is_main:
            save_run_config(self.run_config, self.out_dir)
            if self.resume is None:
                self.metrics_path.unlink(missing_ok=True)
            else:  # the records up to the resumed step (a killed run may have logged further)
                atomic_write_bytes(self.metrics_path, self.resume[1])

    def load_ppgd_checkpoint(self, path: Path) -> int:
        """Continue the persistent PGD sources (and their Adam moments) of an earlier run: a ppgd_<step>.pth or
        a run dir (its latest); returns the saved step."""
        return load_ppgd_state(path, self.ppgd_states)

    # --- helpers -----------------------------------------------------------------------------------

    def sample(self, batch_size: int) -> Tensor:
        """This rank's rows of the next global training batch (the whole batch with one process)."""
        self._count(f"train:{batch_size}")
        return self.parallel.shard(self.data.train_batch(batch_size))

    def eval_sample(self, batch_size: int) -> Tensor:
        """This rank's rows of the next global eval batch."""
        self._count(f"eval:{batch_size}")
        return self.parallel.shard(self.data.eval_batch(batch_size))

    def _count(self, stream: str) -> None:
        self.drawn[stream] = self.drawn.get(stream, 0) + 1

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on the model's device when cfg.autocast_bf16 (a no-op context otherwise)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16)

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def faithfulness_warmup(self) -> float:
        """Minimise only L_faith with a separate AdamW so ΣUV ≈ W before SPD proper; returns the final value."""
        cfg = self.cfg
        if cfg.faithfulness_warmup_steps == 0:
            return float(faithfulness_loss(self.model.deltas()).detach())
        opt = torch.optim.AdamW(
            self.comp_params,
            lr=cfg.faithfulness_warmup_lr,
            weight_decay=cfg.faithfulness_warmup_weight_decay,
            foreach=True,
        )
        loss = torch.tensor(0.0)
        for _ in range(cfg.faithfulness_warmup_steps):
            opt.zero_grad(set_to_none=True)
            loss = faithfulness_loss(self.model.deltas())
            loss.backward()
            opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, step: int, slow: bool) -> dict[str, Any]:
        """Eval losses and the configured eval metrics (cfg.resolved_eval_metrics) on n_eval_steps fresh batches;
        slow steps add the slow ones (hidden-activation and PPGD evals, IdentityCIError) and MMCS/ML2R/#large.

        Values are means over the eval batches (all of one size); CIMeanPerComponent and ComponentActivationDensity
        give one list of C values per module. Data-parallel: each rank evaluates its slice of every eval batch and
        the sums are reduced across ranks (weighted by example counts; squared errors as plain sums) before
        dividing, so the values are those of the global batches."""
        cfg = self.cfg
        bs = cfg.eval_batch_size or cfg.batch_size
        plan = self._eval_plan(slow)
        acc = _EvalSums()
        deltas = self.model.deltas()
        n_local = 0
        for _ in range(cfg.n_eval_steps):
            batch = self.eval_sample(bs)
            n_local = batch.shape[0]
            with self.rank_rng.active():
                self._eval_batch(batch, step, deltas, plan, acc)
        if self.parallel.distributed:
            acc.reduce(self.parallel, n_local)
        return self._eval_results(acc, plan, slow)

    def _eval_plan(self, slow: bool) -> _EvalPlan:
        """Which losses and metrics this eval computes."""
        cfg = self.cfg
        eval_losses = [lc for lc in cfg.losses if lc.classname not in PPGD_LOSSES]  # tied to the train batch shape
        present = {lc.classname for lc in eval_losses}
        from spd.train.config import CIMaskedReconLossConfig, FaithfulnessLossConfig, UnmaskedReconLossConfig

        for extra in (CIMaskedReconLossConfig, UnmaskedReconLossConfig, FaithfulnessLossConfig):
            if extra.model_fields["classname"].default not in present:
                eval_losses.append(extra(coeff=0.0))
        metrics = {m.classname: m for m in cfg.resolved_eval_metrics(self.data.is_lm)}
        return _EvalPlan(
            losses=eval_losses,
            metrics=metrics,
            l0=metrics.get("CI_L0"),
            lm=metrics.get("CEandKLLosses") if self.data.is_lm else None,
            hidden=[n for n in ("StochasticHiddenActsReconLoss", "CIHiddenActsReconLoss") if slow and n in metrics],
            ppgd=[n for n in PPGD_EVALS if slow and n in metrics],
        )

    def _eval_batch(self, batch: Tensor, step: int, deltas: dict[str, Tensor], plan: _EvalPlan, acc: _EvalSums) -> None:
        """Accumulate one eval batch's metrics (means over the batch, and squared-error sums with counts)."""
        cfg, model, add = self.cfg, self.model, acc.add
        stoch_deltas = deltas if cfg.use_delta_component else None
        target_out, acts = model.forward_with_inputs(batch)
        ci = model.causal_importances(acts, cfg.sampling)
        losses = compute_losses(
            model, cfg, batch, target_out, ci.lower_leaky, ci.upper_leaky, deltas, step, plan.losses,
            world_size=self.parallel.world_size,
        )  # fmt: skip
        for k, v in losses.items():
            add(f"eval/loss/{k}", float(v))
        if plan.l0 is not None:
            l0 = M.ci_l0(ci.lower_leaky, cfg.ci_alive_threshold)
            groups = M.group_sums(l0, plan.l0.groups or {})
            l0["mean"] = sum(l0.values()) / len(l0)
            for k, v in {**l0, **groups}.items():
                add(f"eval/l0/{cfg.ci_alive_threshold}_{k}", v)
        if "CIMeanPerComponent" in plan.metrics:
            for k, v in M.ci_mean_per_component(ci.lower_leaky).items():
                add(f"eval/ci_mean/{k}", v)
        if "ComponentActivationDensity" in plan.metrics:
            for k, v in M.activation_density(ci.lower_leaky, cfg.ci_alive_threshold).items():
                add(f"eval/activation_density/{k}", v)
        if plan.lm is not None:
            lm = ce_and_kl(
                model, batch, target_out, ci.lower_leaky, stoch_deltas, cfg.sampling, plan.lm.rounding_threshold
            )
            for k, v in lm.items():
                add(f"eval/lm/{k}", v)
        for name in plan.hidden:
            if name == "CIHiddenActsReconLoss":
                per = hidden_acts_squared_errors(model, batch, mask_lib.ci_mask_infos(ci.lower_leaky))
                _accumulate(acc.sq.setdefault(name, {}), per)
            for _ in range(cfg.n_mask_samples if name == "StochasticHiddenActsReconLoss" else 0):
                infos = mask_lib.stochastic_mask_infos(ci.lower_leaky, cfg.sampling, stoch_deltas)
                _accumulate(acc.sq.setdefault(name, {}), hidden_acts_squared_errors(model, batch, infos))
        for name in plan.ppgd:
            per, (out_sum, out_n) = ppgd_eval_sums(
                model, batch, target_out, ci.lower_leaky, stoch_deltas, self.ppgd_states[PPGD_EVALS[name]],
                cfg.output_loss_type,
            )  # fmt: skip
            _accumulate(acc.sq.setdefault(name, {}), per)
            _accumulate(acc.sq.setdefault(f"{name}/output", {}), {"output": (out_sum, out_n)})

    def _eval_results(self, acc: _EvalSums, plan: _EvalPlan, slow: bool) -> dict[str, Any]:
        """The eval record from the accumulated sums: means over the eval batches, pooled squared errors."""
        cfg, sq_sums = self.cfg, acc.sq
        out: dict[str, Any] = {}
        for k, v in acc.sums.items():  # means over the eval batches; per-component vectors as lists
            out[k] = (v / cfg.n_eval_steps).tolist() if isinstance(v, Tensor) else v / cfg.n_eval_steps
        for name in plan.hidden:
            out.update({k: v for k, v in _mse_metrics(f"eval/loss/{name}", sq_sums[name]).items() if k not in out})
        for name in plan.ppgd:
            out.update(_mse_metrics(f"eval/loss/{name}/hidden_acts", sq_sums[name]))
            total, n = sq_sums[f"{name}/output"]["output"]
            out[f"eval/loss/{name}/output_recon"] = total / n
        if plan.lm is not None:
            add_ce_unrecovered(out, prefix="eval/lm/")
        if slow:
            out.update(self.slow_metrics(plan.metrics.get("IdentityCIError")))
        return out

    @torch.no_grad()
    def slow_metrics(self, identity: IdentityCIErrorEvalConfig | None = None) -> dict[str, float]:
        """IdentityCIError on the target's probe batch (when configured), MMCS/ML2R and #large subcomponents."""
        model, out = self.model, {}
        patterns = _ci_patterns(identity, self.target, model.target_module_paths) if identity is not None else {}
        if patterns and hasattr(self.target, "probe_batch"):  # no pattern defined: no error to report (not 0)
            _, acts = model.forward_with_inputs(self.target.probe_batch(self.device))
            ci = model.lower_leaky_ci(acts)
            for tol, suffix in ((0.1, ""), (0.2, "_0p2")):
                for k, v in M.ci_pattern_errors(ci, patterns, tol).items():
                    out[f"eval/identity_ci_error/{k}{suffix}"] = v
        if hasattr(self.target, "feature_weight_module"):
            path = self.target.feature_weight_module()
            if path in model.module_to_c:
                mmcs, ml2r = M.mmcs_ml2r(model, path)
                out[f"eval/mmcs/{path}"], out[f"eval/ml2r/{path}"] = mmcs, ml2r
        for path in model.target_module_paths:
            out[f"eval/n_large_subcomponents/{path}"] = M.n_large_subcomponents(model, path)
        return out

    # --- main loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.resume is not None:  # the warm-up is in the restored weights
            first, before, last_eval = self._restore(self.resume[0])
            self.log(f"resuming from step {first - 1} (out_dir/resume)")
            start, train_start = time.perf_counter() - before[0], time.perf_counter() - before[1]
        else:
            first, last_eval, start = 0, {}, time.perf_counter()
            warm = self.faithfulness_warmup()
            # every rank ran the same warm-up; rank 0's result makes them identical even where a device's
            # arithmetic is not bit-reproducible (the training steps then apply identical averaged updates)
            self.parallel.broadcast_(self.comp_params)
            self.log(f"faithfulness warm-up ({cfg.faithfulness_warmup_steps} steps): {warm:.3e}")
            train_start = time.perf_counter()
        self.resume = None  # restored: free the copy
        slow_freq = cfg.slow_eval_freq or cfg.eval_freq
        for step in range(first, cfg.steps + 1):
            record: dict[str, Any] = {"step": step}
            if step < cfg.steps:
                record.update(self._train_step(step))
            if step % cfg.eval_freq == 0 or step == cfg.steps:
                with self.autocast():
                    last_eval = self.evaluate(step, slow=step % slow_freq == 0 or step == cfg.steps)
                record.update(last_eval)
                self.log(_summary_line(step, last_eval))
            if len(record) > 1:
                record["elapsed_s"] = round(time.perf_counter() - start, 3)
                self._write_metrics(record)
            saves = (cfg.save_freq and step > 0 and step % cfg.save_freq == 0) or step == cfg.steps
            if saves:
                self._save_checkpoint(step)
            if step < cfg.steps:
                self._optimizer_step()
            if saves:  # after the optimizer step: the state the next step starts from
                elapsed = (time.perf_counter() - start, time.perf_counter() - train_start)
                self._save_resume(step, elapsed, last_eval)
        self.parallel.barrier()  # every rank finished: rank 0 returns (and reports success) only then
        train_s = time.perf_counter() - train_start
        summary = {
            "steps": cfg.steps,
            "seed": self.seed,
            "device": str(self.device),
            "world_size": self.parallel.world_size,
            "wall_s": round(time.perf_counter() - start, 3),
            "train_s": round(train_s, 3),
            "steps_per_s": round(cfg.steps / train_s, 3) if cfg.steps else None,
            "metrics": last_eval,
        }
        if self.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
            clear_resume_state(self.out_dir)  # finished: the checkpoint files are the run's whole output
        return summary

    # --- resume ------------------------------------------------------------------------------------

    def _find_resume(self) -> tuple[dict[str, Any], bytes] | None:
        """Rank 0 reads out_dir/resume/ and every rank gets the same answer: (state, metrics copy) when it was
        written by this very run (`_resume_mismatch`), else None (another run's or an unreadable state is ignored,
        and said so). The state travels through the process group, so ranks need not see rank 0's files."""
        found = None
        if self.is_main:
            try:
                found = load_resume_state(self.out_dir)
                reason = self._resume_mismatch(found[0]) if found is not None else None
            except Exception as e:  # a state we cannot read is no state: start afresh, but say why
                found, reason = None, f"unreadable ({type(e).__name__}: {e})"
            if reason is not None:
                self.log(f"ignoring the resume state in {self.out_dir}: {reason}; starting from step 0")
                found = None
        return self.parallel.broadcast_object(found)

    def _resume_mismatch(self, state: dict[str, Any]) -> str | None:
        """Why a resume state is not this run's, None when it is: the same run config (spd config, seed, device,
        target config, data, modules, world size) and the same target weights. `target_info` is left out of the
        comparison (a target retrained by the same stage differs in wall time, not in weights): the weights say
        whether it is the same target."""
        saved = json.loads(state.get("run_config") or "{}")
        current = json.loads(_canonical(self.run_config))
        differ = sorted(
            k for k in saved.keys() | current.keys() if k != "target_info" and saved.get(k) != current.get(k)
        )
        if differ:
            return f"another run config (differs in {differ})"
        mine = {k: v for k, v in self.model.state_dict().items() if k.startswith("target_model.")}
        theirs = state.get("model", {})
        if any(k not in theirs or not torch.equal(v.detach().cpu(), theirs[k]) for k, v in mine.items()):
            return "another target (its weights differ)"
        return None

    def _restore(self, state: dict[str, Any]) -> tuple[int, tuple[float, float], dict[str, Any]]:
        """Put the run back where the resume state left it; returns (first step to run, (elapsed, train) seconds
        before, last eval)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, ppgd in self.ppgd_states.items():
            ppgd.load_state_dict(state["ppgd"][name])  # per-rank sources: this rank's rows of the saved batch
        if self.data.is_lm:  # the window streams are iterators: draw the batches the earlier run drew
            for stream, n in sorted(state["data"].items()):
                kind, size = stream.split(":")
                draw = self.data.train_batch if kind == "train" else self.data.eval_batch
                for _ in range(n):
                    draw(int(size))
        self.drawn = dict(state["data"])
        rng = state["rng"][self.parallel.rank]
        set_global_rng_state(rng["shared"], self.device)  # after the fast-forward (toy streams are this RNG)
        self.rank_rng.load_state(rng["rank"])
        return state["step"] + 1, (state["elapsed_s"], state["train_s"]), state["last_eval"]

    def _save_resume(self, step: int, elapsed: tuple[float, float], last_eval: dict[str, Any]) -> None:
        """Everything the loop carries into step + 1 (a collective: every rank's RNG states and PPGD rows)."""
        ppgd = self._ppgd_state_dicts()
        rng = self.parallel.all_gather_object({"shared": global_rng_state(self.device), "rank": self.rank_rng.state()})
        if not self.is_main:
            return
        state = {
            "run_config": _canonical(self.run_config),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ppgd": ppgd,
            "rng": rng,
            "data": dict(self.drawn),
            "elapsed_s": elapsed[0],
            "train_s": elapsed[1],
            "last_eval": last_eval,
        }
        metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        save_resume_state(self.out_dir, step, state, metrics)

    def _train_step(self, step: int) -> dict[str, Any]:
        """Forward, losses and backward of one step, gradients averaged over ranks (the optimizer step comes after
        logging, eval and saving); returns the train record on log steps (global values), else {}."""
        cfg, model = self.cfg, self.model
        lr = scheduled_value(step, cfg.steps, cfg.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        deltas = model.deltas()
        batch = self.sample(cfg.batch_size)
        # this rank's masks: its own stream (the shared one, untouched, stays the data stream)
        with self.rank_rng.active(), self.autocast():  # autocast: forward passes and losses only (as the reference)
            with torch.no_grad():
                target_out, acts = model.forward_with_inputs(batch)
            ci = model.causal_importances(acts, cfg.sampling)
            ppgd_deltas = deltas if cfg.use_delta_component else None
            for lc in cfg.losses:  # optional inner ascent steps on this batch before the loss that trains
                if lc.classname in self.ppgd_states and lc.n_warmup_steps:
                    routing = lc.routing if isinstance(lc, PersistentPGDReconSubsetLossConfig) else "all"
                    state = self.ppgd_states[lc.classname]
                    ppgd_warmup(
                        model, batch, target_out, ci.lower_leaky, ppgd_deltas, state, step, cfg.steps,
                        routing, cfg.output_loss_type,
                    )  # fmt: skip
            losses = compute_losses(
                model, cfg, batch, target_out, ci.lower_leaky, ci.upper_leaky, deltas, step,
                ppgd_states=self.ppgd_states, world_size=self.parallel.world_size,
            )  # fmt: skip
        weights = {lc.classname: lc.coeff * coeff_warmup_factor(step, cfg.steps, lc.warmup_frac) for lc in cfg.losses}
        total = sum(weights[k] * v.float() for k, v in losses.items())  # float32 sum (bf16 under autocast)
        # PPGD, as in the reference implementation: source gradients of each PPGD loss BEFORE the total backward
        # (retaining the graph), the ascent step on the sources AFTER it.
        ppgd_grads = {
            name: torch.autograd.grad(losses[name], state.sources(), retain_graph=True)
            for name, state in self.ppgd_states.items()
        }
        total.backward()
        self.parallel.average_grads_(self.comp_params + self.ci_params)  # before clipping and the optimizer step
        for name, grads in ppgd_grads.items():
            self.ppgd_states[name].update(grads, step, cfg.steps)  # shared sources: grads averaged inside
        values = self.parallel.mean_floats(
            {**{k: float(v.detach()) for k, v in losses.items()}, "": float(total.detach())}
        )
        if not math.isfinite(values[""]):  # the global total: every rank stops at the same step
            raise FloatingPointError(f"non-finite SPD loss at step {step}: { {k: v for k, v in values.items() if k} }")
        if step % cfg.train_log_freq:
            return {}
        record: dict[str, Any] = {f"train/loss/{k}": values[k] for k in losses}
        record["train/loss/total"] = values[""]
        record["train/lr"] = lr
        for name, state in self.ppgd_states.items():
            record[f"train/ppgd_lr/{name}"] = state.lr(step, cfg.steps)
        imp = _imp_config(cfg)
        if imp is not None:
            record["train/p"] = annealed_p(
                imp.pnorm, step / cfg.steps, imp.p_anneal_start_frac, imp.p_anneal_final_p, imp.p_anneal_end_frac
            )
        l0 = self.parallel.mean_floats(M.ci_l0(ci.lower_leaky, cfg.ci_alive_threshold))
        record.update({f"train/l0/{k}": v for k, v in l0.items()})
        record["train/grad_norm/components"] = _grad_norm(self.comp_params)  # averaged gradients: the same everywhere
        record["train/grad_norm/ci_fns"] = _grad_norm(self.ci_params)
        return record

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if cfg.grad_clip_norm_components is not None:
            torch.nn.utils.clip_grad_norm_(self.comp_params, cfg.grad_clip_norm_components)
        if cfg.grad_clip_norm_ci_fns is not None:
            torch.nn.utils.clip_grad_norm_(self.ci_params, cfg.grad_clip_norm_ci_fns)
        self.optimizer.step()

    def _ppgd_state_dicts(self) -> dict[str, dict[str, Any]]:
        """Every PPGD state in its 1-process form: per-rank sources and moments gathered from every rank and
        concatenated along the batch dim (a collective: every rank calls it). Shared ones are rank 0's."""
        out = {}
        for name, state in self.ppgd_states.items():
            sd = state.state_dict()
            if state.per_rank:
                for part in ("sources", "m", "v"):
                    sd[part] = {
                        p: torch.cat([t.cpu() for t in self.parallel.all_gather(mine.to(self.device))])
                        for p, mine in sd[part].items()
                    }
            out[name] = sd
        return out

    def _save_checkpoint(self, step: int) -> None:
        """model_<step>.pth and ppgd_<step>.pth, written by rank 0."""
        ppgd = self._ppgd_state_dicts()
        if self.is_main:
            save_model_state(self.model, self.out_dir, step)
            save_ppgd_state(ppgd, self.out_dir, step)


@dataclass(frozen=True)
class _EvalPlan:
    """Which eval losses and metrics one evaluation computes (fixed for the whole evaluation)."""

    losses: list[Any]
    metrics: dict[str, Any]
    l0: Any
    lm: Any
    hidden: list[str]
    ppgd: list[str]


@dataclass
class _EvalSums:
    """What an evaluation accumulates: per-batch means summed over the eval batches (floats, or C-vectors), and
    per metric and module [Σ squared error, numel]."""

    sums: dict[str, Any] = field(default_factory=dict)
    sq: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def reduce(self, parallel: DataParallel, n_local: int) -> None:
        """Make the sums the global batches' (one collective): per-batch means weighted by each rank's example
        count, squared-error sums and counts added. Every rank holds the same keys (same config, same model)."""
        keys = sorted(self.sums)
        flat: list[float] = [n_local]
        for k in keys:
            v = self.sums[k]
            flat += [x * n_local for x in v.tolist()] if isinstance(v, Tensor) else [v * n_local]
        pairs = [(m, k) for m in sorted(self.sq) for k in sorted(self.sq[m])]
        flat += [x for m, k in pairs for x in self.sq[m][k]]
        total = parallel.sum_floats(flat)
        n_total, pos = total[0], 1
        for k in keys:
            v = self.sums[k]
            width = v.numel() if isinstance(v, Tensor) else 1
            chunk = [x / n_total for x in total[pos : pos + width]]
            self.sums[k] = torch.tensor(chunk, dtype=torch.float64) if isinstance(v, Tensor) else chunk[0]
            pos += width
        for m, k in pairs:
            self.sq[m][k] = [total[pos], round(total[pos + 1])]
            pos += 2


def _accumulate(into: dict[str, list[float]], per: dict[str, tuple[float, int]]) -> None:
    for key, (total, n) in per.items():
        acc = into.setdefault(key, [0.0, 0])
        acc[0] += total
        acc[1] += n


def _mse_metrics(prefix: str, sq: dict[str, list[float]]) -> dict[str, float]:
    """`prefix/<module>` = Σ squared error / numel per module, and `prefix` pooled over all modules."""
    out = {f"{prefix}/{k}": total / n for k, (total, n) in sq.items()}
    out[prefix] = sum(t for t, _ in sq.values()) / sum(n for _, n in sq.values())
    return out


def _ci_patterns(
    identity: IdentityCIErrorEvalConfig, target: nn.Module, paths: list[str]
) -> dict[str, tuple[str, int]]:
    """Expected CI pattern per module: the config's lists (fnmatch on module paths; the first match wins) or,
    when both are None, the toy target's own `expected_ci_patterns()`."""
    if identity.identity_ci is None and identity.dense_ci is None:
        return target.expected_ci_patterns() if hasattr(target, "expected_ci_patterns") else {}
    out: dict[str, tuple[str, int]] = {}
    for p in identity.identity_ci or []:
        out.update(
            {path: ("identity", p.n_features) for path in paths if _fn(path, p.layer_pattern) and path not in out}
        )
    for p in identity.dense_ci or []:
        out.update({path: ("dense", p.k) for path in paths if _fn(path, p.layer_pattern) and path not in out})
    return out


def _fn(path: str, pattern: str) -> bool:
    from fnmatch import fnmatch

    return fnmatch(path, pattern)


def _summary_line(step: int, ev: dict[str, Any]) -> str:
    keys = [k for k in ev if "loss/Stochastic" in k or k.split("eval/")[-1] == "identity_ci_error/total" or "/l0/" in k]
    keys += [k for k in ev if k.startswith(("eval/mmcs", "eval/ml2r"))]
    keys += [f"eval/lm/{k}" for k in ("ce_target", "ce_stoch_masked", "kl_stoch_masked", "kl_ci_masked")]
    keys += ["eval/loss/FaithfulnessLoss"]
    keys = [k for k in dict.fromkeys(keys) if k in ev]
    return f"step {step}: " + ", ".join(f"{k.removeprefix('eval/')}={ev[k]:.4g}" for k in keys)


def _canonical(run_config: dict[str, Any]) -> str:
    """The run config as config.json holds it (JSON, sorted keys): what a resume state must match."""
    return json.dumps(run_config, sort_keys=True)


def _rank_prefixed(log: Log, rank: int) -> Log:
    """Each rank's lines say which rank wrote them (every rank logs, each to its own file)."""
    return lambda line: log(f"[rank {rank}] {line}")


def decompose(
    target: nn.Module,
    target_config: TargetModelConfig,
    cfg: SPDConfig,
    out_dir: Path,
    seed: int,
    device: torch.device | str = "cpu",
    target_info: dict[str, Any] | None = None,
    log: Log = print,
    data: LMData | ToyData | None = None,
    tokenizer: Path | None = None,
    extra_run_config: dict[str, Any] | None = None,
    parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train an SPD decomposition of `target` into out_dir; returns the summary (also in summary.json).

    Toy targets generate their own batches; LMs need `data` (LMData) and should pass their `tokenizer` so
    the checkpoint's target/ directory is self-contained. `parallel` (spd.train.distributed.data_parallel): this
    process's rank in a data-parallel job; None = one process. Every rank calls decompose with the same
    arguments; cuda devices become cuda:local_rank; only rank 0 writes out_dir.
    """
    device = torch.device(device) if parallel is None else parallel.device_for(device)
    target = target.to(device)
    if isinstance(data, LMData):
        data.device = device
    return Decomposer(
        target, cfg, out_dir, seed, device, target_config, target_info, log, data, tokenizer, extra_run_config,
        parallel,
    ).run()  # fmt: skip
