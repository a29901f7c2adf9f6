"""Speed of dataset attributions: time per token against a bare forward + backward of the same model.

    OMP_NUM_THREADS=1 python benchmarks/attributions_speed.py                  # builds a quickstart-shaped decomposition
    OMP_NUM_THREADS=1 python benchmarks/attributions_speed.py --decomposition runs/quickstart/stages/decompose/out

Per batch the attribution pass is one forward plus one backward per alive target (components + d_model
output dimensions), batched `targets_per_backward` at a time; the baseline is one forward + one backward of
the same all-ones component model, uncut (to the token embeddings), on the same batch. The ratio is
what attributions cost over a training-style step; the expected order is (targets / chunk) backwards.
Also times one shard + merge end to end (store size, merge seconds). All figures are printed from one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from spd.attributions import (  # noqa: E402
    AttributionAccumulator,
    AttributionSettings,
    all_alive,
    build_layout,
    compute_shard,
    merge_shards,
)
from spd.attributions.data import attribution_batches  # noqa: E402
from spd.models import MaskInfo, load_decomposition  # noqa: E402
from stages.decompose import DecomposeConfig  # noqa: E402
from testkit.lm_fixtures import build_tiny_lm_decomposition, tiny_lm_decompose_config  # noqa: E402


def quickstart_shaped_config(spd_steps: int, default_c: int) -> DecomposeConfig:
    """The quickstart's architecture (2 layers, d_model 64, d_mlp 256, C = 64 on 4 MLP projections), few steps:
    timings depend on shapes, not on how well the decomposition is trained."""
    return tiny_lm_decompose_config(
        n_docs=600,
        vocab_size=1024,
        spd_steps=spd_steps,
        default_c=default_c,
        seq_len=64,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_mlp=256,
        lm_steps=30,
        ci_hidden=64,
        faithfulness_warmup_steps=10,
        train_log_freq=spd_steps,
    )


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (vmap and allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decomposition", type=Path, default=None, help="An LM decomposition dir (default: build one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--components", type=int, default=64, help="C per module of the built decomposition")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 16, 64], help="targets_per_backward values")
    parser.add_argument("--shard-batches", type=int, default=4, help="batches for the shard + merge timing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        decomposition = args.decomposition
        if decomposition is None:
            start = time.perf_counter()
            decomposition = build_tiny_lm_decomposition(
                Path(tmp) / "decomp", quickstart_shaped_config(20, args.components)
            )
            print(f"built a quickstart-shaped decomposition in {time.perf_counter() - start:.1f}s")
        model = load_decomposition(decomposition)
        settings = AttributionSettings(batch_size=args.batch_size)
        layout = build_layout(model, settings, all_alive(model.module_to_c))
        tokens = attribution_batches(decomposition, model.run_config, settings).batch(0).tokens
        n_tokens = tokens.numel()
        n_targets = sum(layout.n_components) + layout.d_model
        print(
            f"model: modules {list(layout.modules)}, C {list(layout.n_components)}, d_model {layout.d_model}, "
            f"vocab {layout.vocab_size}; batch {tuple(tokens.shape)} = {n_tokens} tokens; "
            f"{n_targets} targets per batch ({sum(layout.n_components)} components + {layout.d_model} output dims); "
            f"{args.threads} thread(s)"
        )

        masks = {p: MaskInfo(mask=torch.ones(*tokens.shape, c)) for p, c in model.module_to_c.items()}
        leaves: list[torch.Tensor] = []

        def leaf_hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            leaves.append(output.detach().requires_grad_(True))
            return leaves[-1]

        embedding = model.target_model.get_submodule(layout.embedding_module)

        def bare() -> None:
            """The uncut all-ones component model: forward, then one backward to the token embeddings."""
            handle = embedding.register_forward_hook(leaf_hook)
            try:
                with torch.enable_grad():
                    logits = model(tokens, masks)
                torch.autograd.grad(logits.sum(), leaves.pop())
            finally:
                handle.remove()

        base = median_time(bare, args.repeats)
        print(f"\n{'pass':<34} {'ms/batch':>10} {'us/token':>10} {'ratio':>8} {'ratio/bwd':>13}")
        print(f"{'bare forward + backward':<34} {base * 1e3:>10.2f} {base / n_tokens * 1e6:>10.2f} {1.0:>8.1f}")
        runs = [(chunk, "targets") for chunk in args.chunks] + [(max(args.chunks), "auto")]
        for chunk, basis in runs:
            acc = AttributionAccumulator(model, layout, targets_per_backward=chunk, basis=basis)
            t = median_time(lambda acc=acc: acc.add_batch(tokens), args.repeats)
            ratio = t / base
            n_back = acc.backwards_per_batch()
            label = f"{basis} basis, {chunk}/call, {n_back} bwd"
            print(f"{label:<34} {t * 1e3:>10.2f} {t / n_tokens * 1e6:>10.2f} {ratio:>8.1f} {ratio / n_back:>13.3f}")

        shard_settings = AttributionSettings(batch_size=args.batch_size, n_batches=args.shard_batches, top_k=50)
        out = Path(tmp) / "attr"
        start = time.perf_counter()
        compute_shard(shard_settings, decomposition, out / "shards", 0, 1, log=lambda _: None)
        shard_s = time.perf_counter() - start
        start = time.perf_counter()
        summary = merge_shards(out / "shards", 1, decomposition, out / "attributions.duckdb", log=lambda _: None)
        merge_s = time.perf_counter() - start
        shard_mb = (out / "shards/shard-00000.pt").stat().st_size / 1e6
        store_mb = summary.path.stat().st_size / 1e6
        print(
            f"\nshard of {args.shard_batches} batches ({summary.n_tokens} tokens, incl. model load): {shard_s:.2f}s, "
            f"{shard_mb:.2f} MB;  merge (top_k 50): {merge_s:.2f}s, {summary.n_edges} edges, store {store_mb:.2f} MB"
        )


if __name__ == "__main__":
    main()
