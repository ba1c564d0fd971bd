"""User-facing errors: one line that names the file or record and says what to do."""


class VirnucproError(Exception):
    """An error caused by input, configuration or environment; printed without a traceback."""

    exit_code = 2


class RunInterrupted(VirnucproError):
    """Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP, preemption) with its work kept; the same command
    resumes it. Printed as an `interrupted:` line, not as an error."""

    exit_code = 75  # EX_TEMPFAIL: run again to resume


class InputError(VirnucproError):
    """Bad input data (FASTA, inputs list, model file)."""


class StateError(VirnucproError):
    """The workdir belongs to a different run or is inconsistent."""


class ShardError(VirnucproError):
    """A (stage, shard) failed its integrity checks; the shard is marked failed."""


class StaleInputError(ShardError):
    """A file written by an earlier (stage, shard) is missing or damaged. That pair is marked pending
    and recomputed (with what depends on it) instead of failing the reader for good."""

    def __init__(self, message: str, stage: str, shard: int):
        super().__init__(message)
        self.stage = stage
        self.shard = shard


class OutputError(VirnucproError, OSError):
    """Writing a file failed (disk full, quota, file-size limit, unwritable folder); the message
    names the file, and the previous complete version of it is untouched."""

    def __init__(self, errno: int | None, message: str):
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message
