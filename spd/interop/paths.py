"""Where the files a reference run names are, on this machine.

A reference config names its target and tokenizer by strings that were true on the machine that made the
run: absolute paths there, paths relative to the process's working directory (the reference resolves
`pretrained_model_name`, `tokenizer_name` and `task_config.dataset_name` against its working directory, which
users set to the run directory), Hugging Face hub ids, or wandb runs. A run that was copied elsewhere meets them
as:

1. relative: resolved against the run directory;
2. absolute (or relative) and not there: looked for by file name in the run directory, then below it
   (the shallowest match wins), so a target copied next to the run is found;
3. a wandb run (`wandb:entity/project/runs/id`, `entity/project/runs/id`, `wandb:entity/project/id` or a
   wandb.ai URL, as the reference accepts them): the run's files are downloaded with the wandb API into a cache
   directory (`$SPD_PIPELINE_CACHE` or `~/.cache/spd-pipeline`, then `wandb/<entity>/<project>/<id>/`) when
   wandb is installed and online (of its checkpoints only the latest, as the reference); files already in that
   directory are used as they are, so a user without network can place them there by hand. Otherwise
   `ReferencePathError` says what to download and where.
An explicit override (`import-reference --target PATH`) wins over all of this.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from spd.utils import cache_root

WANDB_PREFIX = "wandb:"
_WANDB_URL = re.compile(r"^https?://(?:www\.)?wandb\.ai/([^/]+)/([^/]+)/runs/([^/?#]+)")
_WANDB_PATH = re.compile(r"^([\w.-]+)/([\w.-]+)/(?:runs/)?([\w-]+)$")
_WANDB_RUNS_PATH = re.compile(r"^([\w.-]+)/([\w.-]+)/runs/([\w-]+)$")
_CHECKPOINT = re.compile(r"^(?:model_step_|model_)(\d+)\.pth?$")


class ReferencePathError(FileNotFoundError):
    """A file a reference run names is not on this machine; the message says where it was looked for."""


def parse_wandb_run(name: str) -> tuple[str, str, str] | None:
    """(entity, project, run id) of a wandb run name in any form the reference accepts, else None.

    Without the `wandb:` prefix only `entity/project/runs/id` and URLs count (a bare `a/b/c` is a path)."""
    s = name.strip()
    if m := _WANDB_URL.match(s):
        return m[1], m[2], m[3]
    if s.startswith(WANDB_PREFIX):
        m = _WANDB_PATH.match(s.removeprefix(WANDB_PREFIX))
        return (m[1], m[2], m[3]) if m else None
    m = _WANDB_RUNS_PATH.match(s)
    return (m[1], m[2], m[3]) if m else None


def wandb_cache_dir(entity: str, project: str, run_id: str) -> Path:
    return cache_root() / "wandb" / entity / project / run_id


def _wanted(names: list[str]) -> set[str]:
    """Every file but the checkpoints other than the latest (runs that saved often hold many GB of them)."""
    steps = {n: int(m[1]) for n in names if (m := _CHECKPOINT.match(Path(n).name))}
    latest = max(steps, key=steps.get) if steps else None
    return {n for n in names if n not in steps or n == latest}


def fetch_wandb_run(name: str, field: str) -> Path:
    """The directory holding a wandb run's files: the cache if filled, else downloaded there with the wandb API."""
    parsed = parse_wandb_run(name)
    if parsed is None:
        raise ReferencePathError(f"{field} = {name!r}: a wandb run is named wandb:<entity>/<project>/runs/<id>")
    cache = wandb_cache_dir(*parsed)
    if cache.is_dir() and any(cache.iterdir()):
        return cache
    howto = (
        f"{field} = {name!r} names a wandb run. Download its files (for a target: the latest checkpoint and its "
        f"config yaml) into {cache} and run again, or pass the target's path with --target."
    )
    try:
        import wandb  # optional: not a dependency of this project
    except ImportError:
        raise ReferencePathError(f"wandb is not installed. {howto}") from None
    partial = cache.with_name(f".{cache.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a download killed earlier may have left truncated files
    try:
        files = list(wandb.Api().run("/".join(parsed)).files())
        wanted = _wanted([f.name for f in files])
        for remote in files:
            if remote.name in wanted:
                remote.download(root=str(partial), exist_ok=True)
        partial.replace(cache)
    except Exception as err:  # any network / auth / API failure is the same answer for the user
        shutil.rmtree(partial, ignore_errors=True)
        raise ReferencePathError(f"downloading from wandb failed ({type(err).__name__}: {err}). {howto}") from None
    return cache


def find_in_run_dir(run_dir: Path, name: str) -> Path | None:
    """The shallowest file or directory called `name` in or below run_dir."""
    direct = run_dir / name
    if direct.exists():
        return direct
    found = sorted(run_dir.rglob(name), key=lambda p: (len(p.relative_to(run_dir).parts), str(p)))
    return found[0] if found else None


def looks_like_hub_id(value: str) -> bool:
    """`org/name` or `name`: what Hugging Face would look up on the hub (or in its local cache)."""
    return not value.startswith(("/", ".", "~")) and value.count("/") <= 1 and parse_wandb_run(value) is None


def resolve_reference_path(value: str, run_dir: Path, field: str) -> Path:
    """A path field of a reference config as a path on this machine (see the module docstring)."""
    given = Path(value).expanduser()
    candidate = given if given.is_absolute() else run_dir / given
    if candidate.exists():
        return candidate
    if parse_wandb_run(value) is not None:
        return fetch_wandb_run(value, field)
    by_name = find_in_run_dir(run_dir, given.name) if given.name else None
    if by_name is not None:
        return by_name
    raise ReferencePathError(
        f"{field} = {value!r}: neither {candidate} nor anything named {given.name!r} in {run_dir} exists. "
        f"Copy the file into the run directory, or pass its path with --target."
    )


def resolve_local_or_hub(value: str, run_dir: Path, field: str) -> str:
    """A path (resolved as above) or, for a hub id that is not a local path, the id itself (the local Hugging
    Face cache is asked later); no search by name for hub ids, which would match unrelated directories."""
    if looks_like_hub_id(value) and not (run_dir / value).exists():
        return value
    return str(resolve_reference_path(value, run_dir, field))
