"""Data-parallel SPD training over torch.distributed (issue 26): one process per device, the global batch split.

Every rank builds the same model, draws the same GLOBAL batch from the shared data stream (the LM window
stream, or for toys torch's global RNG) and keeps its own rows; gradients are averaged across ranks before
clipping and the optimizer step, so parameters stay identical everywhere. Stochastic pieces (masks, PGD
starts, routing, the binomial CI noise) draw from a per-rank stream (`RankRNG`) so ranks do not sample the
same masks for their different rows. With one process nothing here touches a process group or an RNG:
a 1-process run is bit-identical to one without `DataParallel`.

The orchestrator fills a `ProcessGroupSpec` from torchrun's or SLURM's environment and calls
`with data_parallel(spec, device) as dp: decompose(..., parallel=dp)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

SETUP_TIMEOUT_S = 24 * 3600.0  # main_first's waits: bounded by the job's time limit rather than by this


@dataclass(frozen=True)
class ProcessGroupSpec:
    """Where this process sits in a data-parallel job (filled by the orchestrator from torchrun's or SLURM's env)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    timeout_s: float = 300.0  # collective timeout: a dead or hung peer fails every rank within this bound


class DataParallel:
    """This process's place in the job and the few collectives SPD training needs.

    With world_size 1 there is no process group and every collective returns its input untouched (no copies,
    no arithmetic), which is what keeps single-process runs bit-identical to the code before issue 26.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, setup_group: Any = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self._setup_group = setup_group  # gloo, SETUP_TIMEOUT_S: the waits of main_first (see there)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. writes a corpus or cache the others then read), the others after it,
        and nobody leaves before every rank has run it.

        Preparing a target (training a tiny LM, tokenising a dataset into the cache) may take longer than the
        collective timeout, which is meant for training steps; these waits use a separate gloo group whose timeout
        is SETUP_TIMEOUT_S. If a rank fails inside the block it leaves the group, so the others' wait fails instead
        of hanging."""
        if not self.distributed:
            yield
            return
        if not self.is_main:
            self._setup_barrier()
        yield
        if self.is_main:
            self._setup_barrier()
        self._setup_barrier()

    def _setup_barrier(self) -> None:
        torch.distributed.barrier(group=self._setup_group)

    def device_for(self, device: torch.device | str) -> torch.device:
        """cuda -> cuda:local_rank when there are several ranks (one device per process); cpu unchanged."""
        device = torch.device(device)
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows [r*B/W, (r+1)*B/W) of a global batch."""
        if not self.distributed:
            return batch
        b = local_batch_size(batch.shape[0], self.world_size, "batch")
        return batch[self.rank * b : (self.rank + 1) * b]

    # --- collectives (no-ops for one process) ------------------------------------------------------

    def all_reduce_sum_(self, tensor: Tensor) -> Tensor:
        """In-place sum over ranks."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def sum_floats(self, values: list[float]) -> list[float]:
        """Elementwise sum over ranks of equally long lists of scalars (float64, one collective)."""
        if not self.distributed or not values:
            return values
        return self.all_reduce_sum_(self._float64(values)).tolist()

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of scalars every rank has under the same keys (one collective)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        flat = self.sum_floats([values[k] for k in keys])
        return {k: v / self.world_size for k, v in zip(keys, flat, strict=True)}

    def average_grads_(self, params: Sequence[Tensor]) -> None:
        """Replace every parameter's gradient by its mean over ranks: one all_reduce over one flat buffer.

        Parameters without a gradient are skipped; every rank runs the same losses on the same graph, so which
        parameters have one is the same everywhere."""
        if not self.distributed:
            return
        with_grad = [p for p in params if p.grad is not None]
        self.average_([p.grad for p in with_grad])

    def average_(self, tensors: Sequence[Tensor]) -> None:
        """Mean over ranks, in place, of tensors of the same dtype and device (coalesced into one buffer)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.all_reduce_sum_(flat).div_(self.world_size)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Overwrite `tensors` in place with rank `src`'s values (non-contiguous ones through a copy)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in tensors:
                buf = t if t.is_contiguous() else t.contiguous()
                torch.distributed.broadcast(buf, src=src)
                if buf is not t:
                    t.copy_(buf)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s (picklable) object on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's tensor (same shape on all ranks), in rank order."""
        if not self.distributed:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, tensor.contiguous())
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's (picklable) object, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _float64(self, values: list[float]) -> Tensor:
        device = torch.device("cuda", torch.cuda.current_device()) if self._nccl() else torch.device("cpu")
        return torch.tensor(values, dtype=torch.float64, device=device)

    def _nccl(self) -> bool:
        return self.distributed and torch.distributed.get_backend() == "nccl"

    def comm_device(self, device: torch.device) -> torch.device:
        """Where tensors must live for this group's collectives (nccl: the GPU; gloo: anywhere, CPU is cheapest)."""
        return device if self._nccl() else torch.device("cpu")


def local_batch_size(batch_size: int, world_size: int, field: str = "batch_size") -> int:
    """B / W, or a ValueError naming the field and both numbers (each rank takes an equal slice of the batch)."""
    if batch_size % world_size:
        raise ValueError(
            f"{field}={batch_size} is not divisible by world_size={world_size}: each rank takes an equal slice "
            "of every global batch"
        )
    return batch_size // world_size


@contextlib.contextmanager
def data_parallel(spec: ProcessGroupSpec | None, device: torch.device | str) -> Iterator[DataParallel]:
    """world_size 1 or None: a DataParallel whose collectives are no-ops (no process group). Otherwise
    init_process_group (nccl when device is cuda, gloo otherwise) with init_method tcp://addr:port, rank,
    world_size and timeout=timedelta(seconds=spec.timeout_s); destroy_process_group on exit (also on error)."""
    if spec is None or spec.world_size == 1:
        yield DataParallel(0 if spec is None else spec.rank, 1, 0 if spec is None else spec.local_rank)
        return
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(spec.local_rank)  # collectives and object transfers use the current device
    torch.distributed.init_process_group(
        backend,
        init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
        rank=spec.rank,
        world_size=spec.world_size,
        timeout=timedelta(seconds=spec.timeout_s),
    )
    try:
        setup_group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=SETUP_TIMEOUT_S))
        yield DataParallel(spec.rank, spec.world_size, spec.local_rank, setup_group)
    finally:
        torch.distributed.destroy_process_group()


class RankRNG:
    """A per-rank random stream for mask sampling, swapped in around each rank's loss computations.

    torch's global RNG stays the data stream every rank shares (toy batches are drawn from it, identically on
    every rank); inside `active()` the global state is this rank's own, seeded from (seed, rank), so ranks sample
    different masks for their different rows. Inactive (a no-op) with one process, keeping today's single stream.
    """

    def __init__(self, seed: int, rank: int, world_size: int, device: torch.device) -> None:
        self.enabled = world_size > 1
        self.cuda = device.type == "cuda"
        self.device = device
        self.cpu_state: Tensor | None = None
        self.cuda_state: Tensor | None = None
        if self.enabled:
            saved = self._get()
            torch.manual_seed(_rank_seed(seed, rank))
            self.cpu_state, self.cuda_state = self._get()
            self._set(saved)

    def _get(self) -> tuple[Tensor, Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None

    def _set(self, states: tuple[Tensor | None, Tensor | None]) -> None:
        cpu, cuda = states
        if cpu is not None:
            torch.set_rng_state(cpu)
        if cuda is not None and self.cuda:
            torch.cuda.set_rng_state(cuda, self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this rank's stream; the shared stream is put back afterwards (also on error)."""
        if not self.enabled:
            yield
            return
        shared = self._get()
        self._set((self.cpu_state, self.cuda_state))
        try:
            yield
        finally:
            self.cpu_state, self.cuda_state = self._get()
            self._set(shared)

    def state(self) -> dict[str, Tensor | None]:
        """For a resume state: this rank's stream (None entries with one process)."""
        return {"cpu": self.cpu_state, "cuda": self.cuda_state}

    def load_state(self, state: dict[str, Tensor | None]) -> None:
        if self.enabled:
            self.cpu_state, self.cuda_state = state["cpu"], state["cuda"]


def _rank_seed(seed: int, rank: int) -> int:
    """A seed per (seed, rank), away from `seed` itself (the shared stream) and from other runs' small seeds."""
    return (seed * 1_000_003 + 7_919 * (rank + 1)) % (2**63)


def global_rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """torch's global (shared data) stream, CPU and the device's CUDA generator, for a resume state."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_global_rng_state(state: dict[str, Tensor | None], device: torch.device) -> None:
    if state["cpu"] is not None:
        torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


__all__ = [
    "DataParallel",
    "ProcessGroupSpec",
    "RankRNG",
    "data_parallel",
    "global_rng_state",
    "local_batch_size",
    "set_global_rng_state",
]
