"""The SPD training loop (reference spec section 9), writing a checkpoint directory as it goes.

Order per step: lr from schedule -> Δ = W - W' (with grad) -> batch -> frozen target forward caching
module inputs -> CIs -> losses -> backward -> log / eval / save -> clip -> optimizer step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
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
from spd.losses.pgd_recon import pgd_recon_layerwise_loss, pgd_recon_loss
from spd.models import masks as mask_lib
from spd.models.checkpoint import TARGET_DIR, load_ppgd_state, save_model_state, save_ppgd_state, save_run_config
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
from spd.train.lm_metrics import add_ce_unrecovered, ce_and_kl
from spd.utils import atomic_write_json, set_seed

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
) -> dict[str, Tensor]:
    """Every configured loss by classname (unweighted). PPGD losses need their persistent states by classname."""
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
                1,
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
                model, batch, target_out, ci_lower, stoch_deltas, lc.init, lc.step_size, lc.n_steps, lc.mask_scope,
                cfg.output_loss_type, getattr(lc, "routing", "all"),
            )  # fmt: skip
        elif name == "PGDReconLayerwiseLoss":
            out[name] = pgd_recon_layerwise_loss(
                model, batch, target_out, ci_lower, stoch_deltas, lc.init, lc.step_size, lc.n_steps, lc.mask_scope,
                cfg.output_loss_type,
            )  # fmt: skip
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
            out[name] = pgd_hidden_acts_recon_loss(
                model, batch, ci_lower, stoch_deltas, lc.init, lc.step_size, lc.n_steps, lc.mask_scope
            )
        else:  # pragma: no cover - the config union makes this unreachable
            raise ValueError(f"unknown loss {name!r}")
    return out


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
    ) -> None:
        self.cfg, self.out_dir, self.seed, self.device, self.log = cfg, Path(out_dir), seed, device, log
        self.data = data if data is not None else ToyData(target, device)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        set_seed(seed)
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
        set_seed(seed)  # masks and data: a fresh stream from the seed, as the reference's seed_per_rank
        # persistent PGD sources, one state per PPGD loss, shaped by the training batch's leading dims
        batch_dims = (cfg.batch_size, self.data.seq_len) if self.data.is_lm else (cfg.batch_size,)
        self.ppgd_states: dict[str, PersistentPGDState] = {
            lc.classname: PersistentPGDState(
                self.model.module_to_c, batch_dims, lc.ppgd(), cfg.use_delta_component, device
            )
            for lc in cfg.losses
            if isinstance(lc, PersistentPGDReconLossConfig)
        }
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
            **(extra_run_config or {}),
        }
        save_run_config(self.run_config, self.out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.metrics_path.unlink(missing_ok=True)

    def load_ppgd_checkpoint(self, path: Path) -> int:
        """Continue the persistent PGD sources (and their Adam moments) of an earlier run: a ppgd_<step>.pth or
        a run dir (its latest); returns the saved step."""
        return load_ppgd_state(path, self.ppgd_states)

    # --- helpers -----------------------------------------------------------------------------------

    def sample(self, batch_size: int) -> Tensor:
        return self.data.train_batch(batch_size)

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on the model's device when cfg.autocast_bf16 (a no-op context otherwise)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16)

    def _write_metrics(self, record: dict[str, Any]) -> None:
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
        give one list of C values per module."""
        cfg, model = self.cfg, self.model
        bs = cfg.eval_batch_size or cfg.batch_size
        eval_losses = [lc for lc in cfg.losses if lc.classname not in PPGD_LOSSES]  # tied to the train batch shape
        present = {lc.classname for lc in eval_losses}
        from spd.train.config import CIMaskedReconLossConfig, FaithfulnessLossConfig, UnmaskedReconLossConfig

        for extra in (CIMaskedReconLossConfig, UnmaskedReconLossConfig, FaithfulnessLossConfig):
            if extra.model_fields["classname"].default not in present:
                eval_losses.append(extra(coeff=0.0))
        metrics = {m.classname: m for m in cfg.resolved_eval_metrics(self.data.is_lm)}
        l0_cfg, lm_cfg = metrics.get("CI_L0"), metrics.get("CEandKLLosses") if self.data.is_lm else None
        sums: dict[str, Any] = {}

        def add(key: str, value: Any) -> None:
            sums[key] = sums[key] + value if key in sums else value

        hidden = [n for n in ("StochasticHiddenActsReconLoss", "CIHiddenActsReconLoss") if slow and n in metrics]
        ppgd = [n for n in PPGD_EVALS if slow and n in metrics]
        sq_sums: dict[str, dict[str, list[float]]] = {}  # metric -> module -> [Σ squared error, numel]
        deltas = model.deltas()
        stoch_deltas = deltas if cfg.use_delta_component else None
        for _ in range(cfg.n_eval_steps):
            batch = self.data.eval_batch(bs)
            target_out, acts = model.forward_with_inputs(batch)
            ci = model.causal_importances(acts, cfg.sampling)
            losses = compute_losses(
                model, cfg, batch, target_out, ci.lower_leaky, ci.upper_leaky, deltas, step, eval_losses
            )
            for k, v in losses.items():
                add(f"eval/loss/{k}", float(v))
            if l0_cfg is not None:
                l0 = M.ci_l0(ci.lower_leaky, cfg.ci_alive_threshold)
                groups = M.group_sums(l0, l0_cfg.groups or {})
                l0["mean"] = sum(l0.values()) / len(l0)
                for k, v in {**l0, **groups}.items():
                    add(f"eval/l0/{cfg.ci_alive_threshold}_{k}", v)
            if "CIMeanPerComponent" in metrics:
                for k, v in M.ci_mean_per_component(ci.lower_leaky).items():
                    add(f"eval/ci_mean/{k}", v)
            if "ComponentActivationDensity" in metrics:
                for k, v in M.activation_density(ci.lower_leaky, cfg.ci_alive_threshold).items():
                    add(f"eval/activation_density/{k}", v)
            if lm_cfg is not None:
                lm = ce_and_kl(
                    model, batch, target_out, ci.lower_leaky, stoch_deltas, cfg.sampling, lm_cfg.rounding_threshold
                )
                for k, v in lm.items():
                    add(f"eval/lm/{k}", v)
            for name in hidden:
                if name == "CIHiddenActsReconLoss":
                    per = hidden_acts_squared_errors(model, batch, mask_lib.ci_mask_infos(ci.lower_leaky))
                    _accumulate(sq_sums.setdefault(name, {}), per)
                for _ in range(cfg.n_mask_samples if name == "StochasticHiddenActsReconLoss" else 0):
                    infos = mask_lib.stochastic_mask_infos(ci.lower_leaky, cfg.sampling, stoch_deltas)
                    _accumulate(sq_sums.setdefault(name, {}), hidden_acts_squared_errors(model, batch, infos))
            for name in ppgd:
                per, (out_sum, out_n) = ppgd_eval_sums(
                    model, batch, target_out, ci.lower_leaky, stoch_deltas, self.ppgd_states[PPGD_EVALS[name]],
                    cfg.output_loss_type,
                )  # fmt: skip
                _accumulate(sq_sums.setdefault(name, {}), per)
                _accumulate(sq_sums.setdefault(f"{name}/output", {}), {"output": (out_sum, out_n)})
        out: dict[str, Any] = {}
        for k, v in sums.items():  # means over the eval batches; per-component vectors as lists
            out[k] = (v / cfg.n_eval_steps).tolist() if isinstance(v, Tensor) else v / cfg.n_eval_steps
        for name in hidden:
            out.update({k: v for k, v in _mse_metrics(f"eval/loss/{name}", sq_sums[name]).items() if k not in out})
        for name in ppgd:
            out.update(_mse_metrics(f"eval/loss/{name}/hidden_acts", sq_sums[name]))
            total, n = sq_sums[f"{name}/output"]["output"]
            out[f"eval/loss/{name}/output_recon"] = total / n
        if lm_cfg is not None:
            add_ce_unrecovered(out, prefix="eval/lm/")
        if slow:
            out.update(self.slow_metrics(metrics.get("IdentityCIError")))
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
        cfg, model = self.cfg, self.model
        start = time.perf_counter()
        warm = self.faithfulness_warmup()
        self.log(f"faithfulness warm-up ({cfg.faithfulness_warmup_steps} steps): {warm:.3e}")
        slow_freq = cfg.slow_eval_freq or cfg.eval_freq
        imp = _imp_config(cfg)
        train_start = time.perf_counter()
        last_eval: dict[str, Any] = {}
        for step in range(cfg.steps + 1):
            record: dict[str, Any] = {"step": step}
            if step < cfg.steps:
                lr = scheduled_value(step, cfg.steps, cfg.lr_schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                deltas = model.deltas()
                batch = self.sample(cfg.batch_size)
                with self.autocast():  # forward passes and losses only (the reference's autocast_bf16)
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
                        ppgd_states=self.ppgd_states,
                    )  # fmt: skip
                weights = {
                    lc.classname: lc.coeff * coeff_warmup_factor(step, cfg.steps, lc.warmup_frac) for lc in cfg.losses
                }
                total = sum(weights[k] * v.float() for k, v in losses.items())  # float32 sum (bf16 under autocast)
                # PPGD (reference 9.3 step 7): source gradients of each PPGD loss BEFORE the total backward
                # (retaining the graph), the ascent step on the sources AFTER it.
                ppgd_grads = {
                    name: torch.autograd.grad(losses[name], state.sources(), retain_graph=True)
                    for name, state in self.ppgd_states.items()
                }
                total.backward()
                for name, grads in ppgd_grads.items():
                    self.ppgd_states[name].update(grads, step, cfg.steps)
                if not math.isfinite(float(total.detach())):
                    raise FloatingPointError(
                        f"non-finite SPD loss at step {step}: { {k: float(v) for k, v in losses.items()} }"
                    )
                if step % cfg.train_log_freq == 0:
                    record.update({f"train/loss/{k}": float(v.detach()) for k, v in losses.items()})
                    record["train/loss/total"] = float(total.detach())
                    record["train/lr"] = lr
                    for name, state in self.ppgd_states.items():
                        record[f"train/ppgd_lr/{name}"] = state.lr(step, cfg.steps)
                    if imp is not None:
                        record["train/p"] = annealed_p(
                            imp.pnorm,
                            step / cfg.steps,
                            imp.p_anneal_start_frac,
                            imp.p_anneal_final_p,
                            imp.p_anneal_end_frac,
                        )
                    record.update(
                        {f"train/l0/{k}": v for k, v in M.ci_l0(ci.lower_leaky, cfg.ci_alive_threshold).items()}
                    )
                    record["train/grad_norm/components"] = _grad_norm(self.comp_params)
                    record["train/grad_norm/ci_fns"] = _grad_norm(self.ci_params)
            if step % cfg.eval_freq == 0 or step == cfg.steps:
                with self.autocast():
                    last_eval = self.evaluate(step, slow=step % slow_freq == 0 or step == cfg.steps)
                record.update(last_eval)
                self.log(_summary_line(step, last_eval))
            if len(record) > 1:
                record["elapsed_s"] = round(time.perf_counter() - start, 3)
                self._write_metrics(record)
            if (cfg.save_freq and step > 0 and step % cfg.save_freq == 0) or step == cfg.steps:
                save_model_state(model, self.out_dir, step)
                save_ppgd_state(self.ppgd_states, self.out_dir, step)
            if step < cfg.steps:
                if cfg.grad_clip_norm_components is not None:
                    torch.nn.utils.clip_grad_norm_(self.comp_params, cfg.grad_clip_norm_components)
                if cfg.grad_clip_norm_ci_fns is not None:
                    torch.nn.utils.clip_grad_norm_(self.ci_params, cfg.grad_clip_norm_ci_fns)
                self.optimizer.step()
        train_s = time.perf_counter() - train_start
        summary = {
            "steps": cfg.steps,
            "seed": self.seed,
            "device": str(self.device),
            "wall_s": round(time.perf_counter() - start, 3),
            "train_s": round(train_s, 3),
            "steps_per_s": round(cfg.steps / train_s, 3) if cfg.steps else None,
            "metrics": last_eval,
        }
        atomic_write_json(self.out_dir / "summary.json", summary)
        return summary


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
) -> dict[str, Any]:
    """Train an SPD decomposition of `target` into out_dir; returns the summary (also in summary.json).

    Toy targets generate their own batches; LMs need `data` (LMData) and should pass their `tokenizer` so
    the checkpoint's target/ directory is self-contained.
    """
    device = torch.device(device)
    target = target.to(device)
    if isinstance(data, LMData):
        data.device = device
    return Decomposer(
        target, cfg, out_dir, seed, device, target_config, target_info, log, data, tokenizer, extra_run_config
    ).run()
