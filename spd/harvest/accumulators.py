"""One task's running statistics over its batches, in explicit integer / fp64 precision.

Per component c (flat index) and token t:
- firing_count[c] (int64): tokens where CI_c > ci_threshold.
- sums over all tokens of CI and component activation, of |activation|, and of CI and activation over
  firing tokens only: per-batch sums in fp32 (never in autocast precision), accumulated in fp64.
- input counts (c, t): firings of c at a token whose id is t; input_total[t]: all tokens with id t.
- output counts (c, t): firings of c where t is among the target's top-m next-token predictions;
  output_total[t]: all positions where t is among them. Exact integers (spd.harvest.counters: the batch's
  firing rows added into a dense [V, C] table while C x V is small, composite keys counted sparse beyond),
  written sparse.
- co-firing counts (a, b), a < b: tokens where both fire (spd.harvest.cofiring: exact; the pairs among each
  token's firings counted in a hash table of the pairs seen, or F^T F per batch into a dense int64 table where
  that is faster and fits, chosen on the first batch). The CPU hash table is capped; past the cap it spills sorted
  runs of pairs to `spill_dir`, which the shard lists before the final table's pairs.
- the uniform example reservoir and the top-|activation| set (spd.harvest.reservoir).

Everything that reads each (token, component) entry of a batch (firings, sums, token counts, the selections'
candidates) is one scan (spd.harvest.batch_scan: numba on the CPU, torch elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from spd.harvest.activations import BatchActivations
from spd.harvest.batch_scan import SCAN_SUMS, BatchEntries, Kernels, ScanRules, default_kernels, scan_batch
from spd.harvest.cofiring import CofiringCounter
from spd.harvest.config import HarvestSettings
from spd.harvest.counters import EXACT_FP32_LIMIT, make_token_firing_counter
from spd.harvest.keys import component_salts, magnitude_floor, magnitude_keys, position_hashes
from spd.harvest.nonzero import split_flat_index
from spd.harvest.reservoir import BatchSource, ExampleSelection
from spd.harvest.shard import SUM_NAMES, ShardData


class TaskAccumulator:
    """Accumulates every per-component statistic of one harvest task (see the module docstring)."""

    def __init__(
        self,
        n_components: int,
        vocab_size: int,
        settings: HarvestSettings,
        seed: int,
        device: torch.device | str,
        kernels: Kernels | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        """`spill_dir`: where the co-firing table spills at its cap (the task's temp directory beside its shard)."""
        self.C, self.V, self.settings, self.seed = n_components, vocab_size, settings, seed
        self.device = dev = torch.device(device)
        self.n_tokens = 0
        self.n_batches = 0
        self.sequences: list[Tensor] = []
        self.firing_count = torch.zeros(n_components, dtype=torch.int64, device=dev)
        self.sums = {name: torch.zeros(n_components, dtype=torch.float64, device=dev) for name in SUM_NAMES}
        self.input_total = torch.zeros(vocab_size, dtype=torch.int64, device=dev)
        self.output_total = torch.zeros(vocab_size, dtype=torch.int64, device=dev)
        self.input_counts = make_token_firing_counter(n_components, vocab_size, dev)
        self.output_counts = make_token_firing_counter(n_components, vocab_size, dev)
        # numba on the CPU, torch elsewhere (spd.harvest.batch_scan); "torch" forces the reference everywhere
        self.kernels: Kernels = kernels or default_kernels(dev, (self.input_counts, self.output_counts))
        # forced torch kernels count sparse co-firing with torch ops too; the default counts it with numba on the CPU
        torch_only = kernels == "torch"
        self.cofire = CofiringCounter(n_components, dev, torch_only, spill_dir) if settings.cofiring else None
        window = settings.window
        self.salts = component_salts(seed, torch.arange(n_components, device=dev))  # sampling-key salt per component
        self.uniform = ExampleSelection(n_components, settings.examples_per_component, window, dev)
        self.top = ExampleSelection(n_components, settings.top_examples_per_component, window, dev)

    def process(self, batch_index: int, starts: Tensor, seq_len: int, acts: BatchActivations) -> None:
        """Fold one batch in. `starts[b]` is the stream position of row b's first token."""
        tokens = acts.tokens
        B, S = tokens.shape
        C, V = self.C, self.V
        if B * S >= EXACT_FP32_LIMIT:
            raise ValueError(f"a batch of {B * S} tokens is too large for exact fp32 co-firing counts")
        # fp32 whatever the model ran in (sums per batch in fp32, across batches in fp64)
        ci, act = acts.ci.reshape(B * S, C).float(), acts.act.reshape(B * S, C).float()
        self.n_tokens += B * S
        self.n_batches += 1
        self.sequences.append((starts // seq_len).to("cpu", torch.int64))
        flat_tokens = tokens.reshape(-1)
        top_next = acts.top_next.reshape(B * S, -1)
        if int(torch.maximum(flat_tokens.max(), top_next.max())) >= V:
            raise ValueError(f"token ids exceed the vocabulary size {V}")
        self.input_total += torch.bincount(flat_tokens, minlength=V)
        self.output_total += torch.bincount(top_next.reshape(-1), minlength=V)

        token_stream_position = (starts.unsqueeze(1) + torch.arange(S, device=starts.device)).reshape(-1)
        position_hash = position_hashes(self.seed, token_stream_position)  # once per token, not per firing
        entries = BatchEntries(ci, act, flat_tokens, top_next, position_hash)
        rules = ScanRules(
            self.settings.ci_threshold, self.salts, self.uniform.threshold, magnitude_floor(self.top.threshold)
        )
        scan = scan_batch(self.kernels, entries, rules, self.input_counts, self.output_counts)
        self.firing_count += scan.sums[0].to(torch.int64)  # exact: a fp32 sum of < 2**24 zeros and ones
        for name, batch_sum in zip(SCAN_SUMS[1:], scan.sums[1:], strict=True):
            self.sums[name] += batch_sum
        if self.cofire is not None:
            self.cofire.add(scan.firing, scan.firing_rows, scan.firing_lists)

        source = BatchSource(tokens, ci, act, starts, seq_len, batch_index, self.settings.context_tokens_per_side)
        compiled = self.kernels == "numba"
        uniform, top = scan.uniform, scan.top
        self.uniform.offer_firings(uniform.comp, uniform.key, uniform.token, source, compiled)
        # the top-|activation| set: keys only for the firings at or above its floor (all while it fills, a few after)
        self.top.offer_firings(top.comp, magnitude_keys(top.act, top.key), top.token, source, compiled)

    def to_shard(self, meta: dict) -> ShardData:
        """Everything on the CPU in the compact shard layout (sparse COO, filled example slots only)."""
        in_comp, in_tok = split_flat_index(self.input_counts.keys(), self.V)
        out_comp, out_tok = split_flat_index(self.output_counts.keys(), self.V)
        co_a, co_b, co_n = self._cofiring_pairs()
        u_comp, _, u_rows = self.uniform.flat()
        t_comp, _, t_rows = self.top.flat()
        cpu = "cpu"
        return ShardData(
            meta=meta,
            firing_count=self.firing_count.to(cpu),
            sums={k: v.to(cpu) for k, v in self.sums.items()},
            input_total=self.input_total.to(cpu),
            output_total=self.output_total.to(cpu),
            input_component=in_comp.to(cpu, torch.int32),
            input_token=in_tok.to(cpu, torch.int32),
            input_count=self.input_counts.counts().to(cpu),
            output_component=out_comp.to(cpu, torch.int32),
            output_token=out_tok.to(cpu, torch.int32),
            output_count=self.output_counts.counts().to(cpu),
            cofire_a=co_a,
            cofire_b=co_b,
            cofire_count=co_n,
            uniform_component=u_comp.to(cpu, torch.int32),
            uniform_rows=u_rows.to(cpu),
            top_component=t_comp.to(cpu, torch.int32),
            top_rows=t_rows.to(cpu),
            sequences=torch.cat(self.sequences) if self.sequences else torch.zeros(0, dtype=torch.int64),
            cofire_spills=list(self.cofire.spills) if self.cofire is not None else [],
        )

    def _cofiring_pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.cofire is None:
            empty_i = torch.zeros(0, dtype=torch.int32)
            return empty_i, empty_i, torch.zeros(0, dtype=torch.int64)
        return self.cofire.pairs()
