"""What a decomposition computes on a given input, written in the reference's probe format.

    python -m spd.interop.probe DECOMP --inputs PROBE.npz --out OUT.npz

DECOMP is a decomposition directory (ours, or one imported from a reference run). PROBE.npz holds `input`
and, optionally, `mask/<m>` and `delta_mask/<m>` for every decomposed module m; masks that are absent are
drawn as the reference's probe draws them (one torch.Generator seeded with --mask-seed: for each module in
module order `rand(*batch, C)`, then for each module `rand(*batch)`). OUT.npz gets, float32:

    input, mask/<m>, delta_mask/<m>     as used
    target_out                          the target's output (clean forward)
    pre_weight_acts/<m>                 module m's input in that forward
    ci_pre_sigmoid/<m>, ci_lower/<m>, ci_upper/<m>     CI logits and both sigmoids (continuous sampling)
    comp_acts/<m>                       pre_weight_acts @ V
    out_mask_ones                       every module replaced by its components, masks 1, no delta term
    out_mask_random                     masks mask/<m>, no delta term
    out_mask_random_with_delta          masks mask/<m> plus delta_mask/<m> x (W - V U^T) x

Comparing OUT.npz with the probe.npz the reference computed on the same input checks a conversion:
`compare_probes` gives the max |difference| per array relative to max(1, max |value|).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from spd.models.checkpoint import load_decomposition
from spd.models.component_model import ComponentModel
from spd.models.masks import MaskInfo

REFERENCE_MASK_SEED = 20240601 + 1  # the seed the reference's probe files were drawn with


def draw_masks(model: ComponentModel, batch: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """`mask/<m>` then `delta_mask/<m>` for every module in module order, from one generator."""
    g = torch.Generator().manual_seed(seed)
    out = {f"mask/{m}": torch.rand(*batch, c, generator=g) for m, c in model.module_to_c.items()}
    out.update({f"delta_mask/{m}": torch.rand(*batch, generator=g) for m in model.module_to_c})
    return out


@torch.no_grad()
def probe(model: ComponentModel, inputs: dict[str, np.ndarray], mask_seed: int = REFERENCE_MASK_SEED) -> dict:
    """Every probe array (see the module docstring) for `inputs["input"]`."""
    x = torch.from_numpy(np.asarray(inputs["input"]))
    target_out, acts = model.forward_with_inputs(x)
    ci = model.causal_importances(acts, sampling="continuous")
    batch = tuple(ci.lower_leaky[model.target_module_paths[0]].shape[:-1])  # an embedding's input has no d_in
    masks = draw_masks(model, batch, mask_seed)
    masks.update(
        {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items() if k.startswith(("mask/", "delta_mask/"))}
    )
    deltas = model.deltas()
    out: dict[str, torch.Tensor] = {"input": x, "target_out": target_out, **masks}
    for m in model.target_module_paths:
        out[f"pre_weight_acts/{m}"] = acts[m]
        out[f"ci_pre_sigmoid/{m}"] = ci.pre_sigmoid[m]
        out[f"ci_lower/{m}"] = ci.lower_leaky[m]
        out[f"ci_upper/{m}"] = ci.upper_leaky[m]
        out[f"comp_acts/{m}"] = model.components(m).component_acts(acts[m])
    paths = model.target_module_paths
    out["out_mask_ones"] = model(x, {m: MaskInfo(torch.ones_like(ci.lower_leaky[m])) for m in paths})
    out["out_mask_random"] = model(x, {m: MaskInfo(masks[f"mask/{m}"]) for m in paths})
    out["out_mask_random_with_delta"] = model(
        x,
        {m: MaskInfo(masks[f"mask/{m}"], delta=deltas[m], delta_mask=masks[f"delta_mask/{m}"]) for m in paths},
    )
    return {k: v.numpy() if k == "input" else v.float().numpy() for k, v in out.items()}


def compare_probes(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """max |ours - reference| / max(1, max |reference|) for every reference array (inf when ours lacks it or
    the shapes differ)."""
    errors = {}
    for key, ref in reference.items():
        mine = ours.get(key)
        if mine is None or mine.shape != ref.shape:
            errors[key] = float("inf")
            continue
        ref64, mine64 = ref.astype(np.float64), mine.astype(np.float64)
        scale = max(1.0, float(np.abs(ref64).max(initial=0.0)))
        errors[key] = float(np.abs(mine64 - ref64).max(initial=0.0)) / scale
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spd.interop.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("decomposition", type=Path, help="decomposition directory (or one of its model_<step>.pth)")
    parser.add_argument("--inputs", type=Path, required=True, help="npz with `input` (and optional masks)")
    parser.add_argument("--out", type=Path, required=True, help="npz to write")
    parser.add_argument("--mask-seed", type=int, default=REFERENCE_MASK_SEED, help="seed of masks not in --inputs")
    parser.add_argument("--compare", action="store_true", help="also print the relative max difference per array")
    args = parser.parse_args(argv)
    try:
        model = load_decomposition(args.decomposition)
        with np.load(args.inputs) as f:
            inputs = {k: f[k] for k in f.files}
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "input" not in inputs:
        print(f"error: {args.inputs} has no `input` array", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    result = probe(model, inputs, args.mask_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(args.out)
    if args.compare:
        for key, err in sorted(compare_probes(result, inputs).items()):
            print(f"{err:.3e}  {key}")
    print(f"wrote {len(result)} arrays to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
