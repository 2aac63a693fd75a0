"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CaplabError(Exception):
    """A problem with the user's input or saved state (not a bug in caplab)."""

    exit_code = 1


class ConfigError(CaplabError):
    """A bad recipe, key, value or override."""

    exit_code = 2


class RunNotFound(CaplabError):
    """No run directory matches the given name."""


class CorruptCheckpoint(CaplabError):
    """A checkpoint file is missing, unreadable or fails its sha256 check."""


class TrainingDiverged(CaplabError):
    """The loss became NaN or infinite; the last good checkpoint was kept.

    `runs`: the ids of the runs that diverged, when some runs of an ensemble did and the others completed.
    """

    def __init__(self, message: str, runs: tuple = ()) -> None:
        super().__init__(message)
        self.runs = list(runs)


class RunInUse(CaplabError):
    """Another live process owns the run, sweep or study (see caplab.runs.owner)."""

    exit_code = 2


class DamagedRun(CaplabError):
    """A run's own file (run.json, config.json, metrics.jsonl, ...) is missing or not what caplab wrote."""


class UnsafePath(CaplabError):
    """A write would leave the runs root (a symlinked run, sweep or study folder)."""

    exit_code = 2
