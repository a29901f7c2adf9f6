"""A task's shard: one uncompressed .npz file, written under a temp name and renamed into place.

Layout (docs/storage.md has the full table): `meta` (JSON as uint8), dense per-component vectors [C],
per-token totals [V], sparse COO triples for input/output token counts and co-firing (int32 component and
token / partner ids, int64 counts), the filled slots of the two example sets (component id + key + window
payload + provenance), and the window ids the task processed (its exact data slice).

Atomicity: the arrays are written member by member into `.shard-NNNNN.npz.<pid>.tmp` in the same
directory, fsync'd, then os.replace'd to `shard-NNNNN.npz`. A killed task leaves at most a temp file, which
no reader looks at and the task's next attempt deletes. Between two members the writer calls the fault
injection point of spd.harvest.faults (a no-op unless a test sets its environment variable).

Checksum: once the shard is in place, its size and sha256 go to `checksums/shard-NNNNN.npz.json` (atomic, written
after the shard; spd.shard_checksums). The merge verifies them before it reads a shard.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from spd.harvest.faults import shard_write_fault_point
from spd.harvest.reservoir import ExampleRows
from spd.shard_checksums import write_checksum

SHARD_FORMAT = "spd-harvest-shard"
SHARD_FORMAT_VERSION = 2  # 2: sampling keys mix a per-position hash with a per-component salt
SUM_NAMES = ("ci_sum", "ci_sum_firing", "act_sum", "act_sum_firing", "act_abs_sum")


def shard_name(task: int) -> str:
    return f"shard-{task:05d}.npz"


def shard_path(out_dir: Path, task: int) -> Path:
    return Path(out_dir) / "shards" / shard_name(task)


@dataclass
class ShardData:
    """Everything one task contributes (CPU tensors)."""

    meta: dict
    firing_count: Tensor  # [C] int64
    sums: dict[str, Tensor]  # SUM_NAMES -> [C] float64
    input_total: Tensor  # [V] int64
    output_total: Tensor  # [V] int64
    input_component: Tensor  # [n_in] int32
    input_token: Tensor  # [n_in] int32
    input_count: Tensor  # [n_in] int64
    output_component: Tensor  # [n_out] int32
    output_token: Tensor  # [n_out] int32
    output_count: Tensor  # [n_out] int64
    cofire_a: Tensor  # [n_pairs] int32, a < b
    cofire_b: Tensor  # [n_pairs] int32
    cofire_count: Tensor  # [n_pairs] int64
    uniform_component: Tensor  # [n_u] int32
    uniform_rows: ExampleRows  # n_u rows
    top_component: Tensor  # [n_t] int32
    top_rows: ExampleRows  # n_t rows
    sequences: Tensor  # [n_seq] int64: window ids processed, in order

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), np.uint8)}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "meta":
                continue
            if f.name == "sums":
                out.update({name: value[name].numpy() for name in SUM_NAMES})
            elif isinstance(value, ExampleRows):
                prefix = f.name.removesuffix("_rows")
                out.update({f"{prefix}_{r.name}": getattr(value, r.name).numpy() for r in fields(value)})
            else:
                out[f.name] = value.numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ShardData:
        def t(name: str) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(arrays[name]))

        def rows(prefix: str) -> ExampleRows:
            return ExampleRows(**{r.name: t(f"{prefix}_{r.name}") for r in fields(ExampleRows)})

        kwargs: dict = {"meta": json.loads(bytes(arrays["meta"]).decode())}
        for f in fields(cls):
            if f.name == "meta":
                continue
            if f.name == "sums":
                kwargs["sums"] = {name: t(name) for name in SUM_NAMES}
            elif f.name.endswith("_rows"):
                kwargs[f.name] = rows(f.name.removesuffix("_rows"))
            else:
                kwargs[f.name] = t(f.name)
        return cls(**kwargs)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files a killed earlier attempt of this shard's writer left (only this shard's own)."""
    stale = sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_shard(path: Path, shard: ShardData, task: int) -> None:
    """Write the shard atomically (temp file in the same directory, fsync, os.replace, fsync dir), then its checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for i, (name, array) in enumerate(shard.arrays().items()):
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                    f.flush()
                    shard_write_fault_point(task, members_written=i + 1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    write_checksum(path)


def read_shard(path: Path) -> ShardData:
    """Load a shard; raises ValueError for a file that is not a harvest shard of this format version."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    shard = ShardData.from_arrays(arrays)
    meta = shard.meta
    if meta.get("format") != SHARD_FORMAT or meta.get("format_version") != SHARD_FORMAT_VERSION:
        raise ValueError(f"{path} is not a {SHARD_FORMAT} v{SHARD_FORMAT_VERSION} file")
    return shard
