"""Error types that map to the CLI's exit codes.

A `UserError` is something the user can fix in their input (exit 2, no traceback);
a `StageFailed` means the pipeline ran and a stage failed (exit 1).
"""


class UserError(Exception):
    """Bad input: a missing file, an invalid config, an unknown run. Exit code 2."""


class StageFailed(Exception):
    """A stage of the run failed or was cancelled. Exit code 1."""


class UpstreamMissing(RuntimeError):
    """A task started although an upstream stage has no done.json.

    SLURM treats a dependency on a purged or unknown job as satisfied, so workers check
    for themselves and refuse to run on missing inputs.
    """
