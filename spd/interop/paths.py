"""Where the files a reference run names are, on this machine.

A reference config names its target and tokenizer by strings that were true on the machine that made the
run: absolute paths there, paths relative to the process's working directory (the reference resolves
`pretrained_model_name`, `tokenizer_name` and `task_config.dataset_name` against its CWD, which users set
to the run directory), or `wandb:entity/project/runs/id`. A run that was copied elsewhere meets them as:

1. relative: resolved against the run directory;
2. absolute (or relative) and not there: looked for by file name in the run directory, then below it
   (the shallowest match wins), so a target copied next to the run is found;
3. `wandb:...`: the run's files are downloaded with the wandb API into a cache directory
   (`$SPD_PIPELINE_CACHE` or `~/.cache/spd-pipeline`, then `wandb/<entity>/<project>/<id>/`) when wandb is
   installed and online; files already in that directory are used as they are, so a user without network
   can place them there by hand. Otherwise `ReferencePathError` says what to download and where.
An explicit override (`import-reference --target PATH`) wins over all of this.
"""

from __future__ import annotations

import os
from pathlib import Path

WANDB_PREFIX = "wandb:"


class ReferencePathError(FileNotFoundError):
    """A file a reference run names is not on this machine; the message says where it was looked for."""


def cache_root() -> Path:
    return Path(os.environ.get("SPD_PIPELINE_CACHE", Path.home() / ".cache" / "spd-pipeline")).expanduser()


def wandb_cache_dir(name: str) -> Path:
    """`wandb:entity/project/runs/id` (or `entity/project/id`) -> its cache directory."""
    parts = [p for p in name.removeprefix(WANDB_PREFIX).split("/") if p and p != "runs"]
    if len(parts) != 3:
        raise ReferencePathError(f"{name!r}: a wandb run is named wandb:<entity>/<project>/runs/<id>")
    return cache_root() / "wandb" / Path(*parts)


def fetch_wandb_run(name: str, field: str) -> Path:
    """The directory holding a wandb run's files: the cache if filled, else downloaded there with the wandb API."""
    cache = wandb_cache_dir(name)
    if cache.is_dir() and any(cache.iterdir()):
        return cache
    entity, project, run_id = cache.relative_to(cache_root() / "wandb").parts
    howto = (
        f"{field} = {name!r} names a wandb run. Download its files (for a target: the checkpoint and its "
        f"config yaml) into {cache} and run again, or pass the target's path with --target."
    )
    try:
        import wandb  # optional: not a dependency of this project
    except ImportError:
        raise ReferencePathError(f"wandb is not installed. {howto}") from None
    try:
        run = wandb.Api().run(f"{entity}/{project}/{run_id}")
        tmp = cache.with_name(f".{cache.name}.partial")
        for remote in run.files():
            remote.download(root=str(tmp), exist_ok=True)
        tmp.replace(cache)
    except Exception as err:  # any network / auth / API failure is the same answer for the user
        raise ReferencePathError(f"downloading from wandb failed ({type(err).__name__}: {err}). {howto}") from None
    return cache


def find_in_run_dir(run_dir: Path, name: str) -> Path | None:
    """The shallowest file or directory called `name` in or below run_dir."""
    direct = run_dir / name
    if direct.exists():
        return direct
    found = sorted(run_dir.rglob(name), key=lambda p: (len(p.relative_to(run_dir).parts), str(p)))
    return found[0] if found else None


def resolve_reference_path(value: str, run_dir: Path, field: str) -> Path:
    """A path field of a reference config as a path on this machine (see the module docstring)."""
    if value.startswith(WANDB_PREFIX):
        return fetch_wandb_run(value, field)
    given = Path(value).expanduser()
    candidate = given if given.is_absolute() else run_dir / given
    if candidate.exists():
        return candidate
    by_name = find_in_run_dir(run_dir, given.name) if given.name else None
    if by_name is not None:
        return by_name
    raise ReferencePathError(
        f"{field} = {value!r}: neither {candidate} nor anything named {given.name!r} in {run_dir} exists. "
        f"Copy the file into the run directory, or pass its path with --target."
    )
