"""A task's shard: one uncompressed .npz file, written under a temp name and renamed into place.

Layout (docs/storage.md has the full table): `meta` (JSON as uint8), dense per-component vectors [C],
per-token totals [V], sparse COO triples for input/output token counts and co-firing (int32 component and
token / partner ids, int64 counts), the filled slots of the two example sets (component id + key + window
payload + provenance), and the window ids the task processed (its exact data slice).

Atomicity (spd.utils.atomic_write): the arrays are written member by member into `.shard-NNNNN.npz.<random>.tmp`
in the same directory, fsync'd, then os.replace'd to `shard-NNNNN.npz`. A killed task leaves at most a temp file,
which no reader looks at and the task's next attempt deletes. Between two members the writer calls the fault
injection point of spd.harvest.faults (a no-op unless a test sets its environment variable).

Co-firing: a task whose pair table reached its cap spilled sorted runs of pairs to `.shard-NNNNN.npz.<pid>.tmp-spill/`
beside the shard (spd.harvest.cofiring); its `cofire_*` members are then the runs' pairs followed by the final
table's, streamed run by run into the members (never all in memory), so a pair may be listed more than once (the
store builder sums them, reading the members in chunks: `cofiring_chunks`). The format version is unchanged: the
only reader of these members already summed duplicates (GROUP BY), and a shard without duplicates, old or new, is
read the same; a version bump would only have made finished shards be recomputed. The task removes the spill
directory once the shard is written; a killed task's is removed by its next attempt with its temp file.

Checksum: once the shard is in place, its size and sha256 go to `checksums/shard-NNNNN.npz.json` (atomic, written
after the shard; spd.shard_checksums). The merge verifies them before it reads a shard.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from spd.harvest.cofiring import SPILL_CHUNK, PairRun
from spd.harvest.faults import shard_write_fault_point
from spd.harvest.reservoir import ExampleRows
from spd.shard_checksums import write_checksum
from spd.utils import atomic_write

SHARD_FORMAT = "spd-harvest-shard"
SHARD_FORMAT_VERSION = 2  # 2: sampling keys mix a per-position hash with a per-component salt
SUM_NAMES = ("ci_sum", "ci_sum_firing", "act_sum", "act_sum_firing", "act_abs_sum")
COFIRE_MEMBERS = {"cofire_a": "a", "cofire_b": "b", "cofire_count": "count"}  # member -> PairRun column


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
    cofire_a: Tensor  # [n_pairs] int32, a < b (the final table's pairs; written after those of cofire_spills)
    cofire_b: Tensor  # [n_pairs] int32
    cofire_count: Tensor  # [n_pairs] int64
    uniform_component: Tensor  # [n_u] int32
    uniform_rows: ExampleRows  # n_u rows
    top_component: Tensor  # [n_t] int32
    top_rows: ExampleRows  # n_t rows
    sequences: Tensor  # [n_seq] int64: window ids processed, in order
    # co-firing runs the task's table spilled (on disk, not loaded): the shard's cofire_* members list their pairs
    # first, then cofire_a/b/count's; a pair may be in several parts (write side only: a read shard has none)
    cofire_spills: list[PairRun] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every member as an array (cofire_*: the final table's pairs only; write_shard adds the spilled runs')."""
        out: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), np.uint8)}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("meta", "cofire_spills"):
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
            if f.name in ("meta", "cofire_spills"):
                continue
            if f.name == "sums":
                kwargs["sums"] = {name: t(name) for name in SUM_NAMES}
            elif f.name.endswith("_rows"):
                kwargs[f.name] = rows(f.name.removesuffix("_rows"))
            else:
                kwargs[f.name] = t(f.name)
        return cls(**kwargs)


def cofiring_spill_dir(path: Path) -> Path:
    """Where this process's task spills co-firing runs: a temp directory beside its shard (named like its temp
    file, so remove_stale_temps clears a killed attempt's; the task removes its own once the shard is written)."""
    return Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp-spill")


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete what a killed earlier attempt of this shard's writer left (only this shard's own): its temp file and
    its co-firing spill directory."""
    stale = sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp*"))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def _write_npy_header(fp: IO[bytes], dtype: np.dtype, n: int) -> None:
    """The .npy header of a 1-D array of n values (the bytes np.lib.format.write_array writes before the data)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    np.lib.format.write_array_header_1_0(fp, header)


def _write_cofire_member(fp: IO[bytes], name: str, shard: ShardData, final: np.ndarray) -> None:
    """One cofire_* member: the spilled runs' column, run by run in chunks, then the final table's pairs, under one
    header for the total length, so a member is written without holding more than a chunk of the runs."""
    column = COFIRE_MEMBERS[name]
    dtype = next(dt for col, dt in PairRun.COLUMNS if col == column)
    final = np.ascontiguousarray(final, dtype=dtype)
    _write_npy_header(fp, dtype, sum(run.n for run in shard.cofire_spills) + len(final))
    for run in shard.cofire_spills:
        for buf in run.column_bytes(column):
            fp.write(buf)
    fp.write(final.tobytes())


def write_shard(path: Path, shard: ShardData, task: int) -> None:
    """Write the shard atomically (spd.utils.atomic_write: temp file in the same directory, fsync, os.replace, fsync
    dir), then its checksum."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for i, (name, array) in enumerate(shard.arrays().items()):
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    if name in COFIRE_MEMBERS:
                        _write_cofire_member(member, name, shard, array)
                    else:
                        np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                f.flush()
                shard_write_fault_point(task, members_written=i + 1)

    atomic_write(path, write)
    write_checksum(path)


def read_shard(path: Path, cofiring: bool = True) -> ShardData:
    """Load a shard; raises ValueError for a file that is not a harvest shard of this format version.

    `cofiring=False` leaves the cofire_* members unread (empty arrays in their place): the merge, which sums them
    in DuckDB from the file in chunks (`cofiring_chunks`), need not hold a task's pairs in memory."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files if cofiring or name not in COFIRE_MEMBERS}
    if not cofiring:
        arrays |= {name: np.zeros(0, dtype) for name, (_, dtype) in zip(COFIRE_MEMBERS, PairRun.COLUMNS, strict=True)}
    shard = ShardData.from_arrays(arrays)
    meta = shard.meta
    if meta.get("format") != SHARD_FORMAT or meta.get("format_version") != SHARD_FORMAT_VERSION:
        raise ValueError(f"{path} is not a {SHARD_FORMAT} v{SHARD_FORMAT_VERSION} file")
    return shard


def _read_exact(fp: IO[bytes], nbytes: int) -> bytes:
    parts, left = [], nbytes
    while left > 0:
        buf = fp.read(left)
        if not buf:
            raise ValueError(f"a co-firing member ends {left} bytes early")
        parts.append(buf)
        left -= len(buf)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _read_npy_header(fp: IO[bytes]) -> tuple[int, np.dtype]:
    """(length, dtype) of the 1-D .npy array that `fp` starts with, leaving `fp` at its first value."""
    version = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fp)
    if len(shape) != 1 or dtype.hasobject:
        raise ValueError(f"a co-firing member holds a {dtype} array of shape {shape}, not a 1-D column")
    return shape[0], dtype


def cofiring_chunks(path: Path, chunk_rows: int = SPILL_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A shard's co-firing pairs as (a, b, count) chunks of at most `chunk_rows`, read straight from its three
    members side by side (each member's .npy is read sequentially: header, then fixed-size slices), so memory is a
    few chunks whatever the number of pairs. Pairs may repeat across chunks (spilled runs): sum them."""
    with zipfile.ZipFile(path) as zf:
        members = [zf.open(f"{name}.npy") for name in COFIRE_MEMBERS]
        try:
            heads = [_read_npy_header(m) for m in members]
            n = heads[0][0]
            if any(length != n for length, _ in heads):
                raise ValueError(f"{path}: co-firing members of different lengths {[h[0] for h in heads]}")
            for start in range(0, n, chunk_rows):
                rows = min(chunk_rows, n - start)
                yield tuple(
                    np.frombuffer(_read_exact(m, rows * dtype.itemsize), dtype)
                    for m, (_, dtype) in zip(members, heads, strict=True)
                )
        finally:
            for m in members:
                m.close()
