"""The exception hierarchy: every error saekit raises to a user is a ``SaekitError``.

Each class carries the ``error_type`` a job records when it fails with it, and messages name the bad
value, what was expected and the fix.
"""

from __future__ import annotations


class SaekitError(Exception):
    """Base of every saekit error. ``suggestion`` is the fix, when there is one."""

    error_type = "unknown"

    def __init__(self, message: str, *, suggestion: str | None = None):
        super().__init__(message)
        self.suggestion = suggestion

    def __str__(self) -> str:
        text = Exception.__str__(self)  # not KeyError's, which would quote the message
        if self.suggestion and self.suggestion not in text:
            text = f"{text} ({self.suggestion})"
        return text


class ConfigError(SaekitError, ValueError):
    """A spec, config or argument is invalid; raised before anything is written."""

    error_type = "validation"


class WorkspaceError(SaekitError, OSError):
    """The workspace folder cannot be created, read or written."""

    error_type = "validation"


class RegistryError(SaekitError):
    """The job registry (registry.duckdb) cannot be used."""


class RegistryVersionError(RegistryError):
    """The registry was written by a newer saekit; it is refused, never rewritten."""


class RegistryCorruptError(RegistryError):
    """The registry file is not a readable DuckDB database; it is left untouched."""


class RegistryBusyError(RegistryError):
    """The registry's lock could not be taken in time."""


class JobError(SaekitError):
    """Base of errors about one job."""


class JobNotFoundError(JobError, LookupError):
    """No job has that id."""


class JobStateError(JobError):
    """The job is in a state that does not allow the operation (e.g. deleting a running job)."""


class JobFailedError(JobError):
    """``job.result()`` of a job that failed; carries the job's ``error_type`` and suggestion."""

    def __init__(self, message: str, *, error_type: str = "unknown", suggestion: str | None = None,
                 job_id: str | None = None, traceback: str | None = None):
        super().__init__(message, suggestion=suggestion)
        self.error_type = error_type
        self.job_id = job_id
        self.traceback = traceback  # the worker's, when the job failed with an exception


class JobTimeoutError(JobError, TimeoutError):
    """``job.wait(timeout)`` returned before the job ended."""

    error_type = "timeout"


class JobCancelled(SaekitError):
    """Raised inside a job's function when its cancel flag is set; the job ends ``cancelled``."""

    error_type = "cancelled"


class DataError(SaekitError):
    """Input data is missing, empty or malformed."""

    error_type = "data"


class StorageError(SaekitError):
    """A store cannot be written: not enough space, a read-only location, or someone else's store."""

    error_type = "data"


class NumericsError(SaekitError):
    """A computation produced NaN or infinity."""

    error_type = "numerics"


class CredentialsError(SaekitError):
    """An endpoint refused the credentials it was given (the key itself is never in the message)."""

    error_type = "credentials"


class ModelLoadError(SaekitError):
    """A model could not be found or loaded."""

    error_type = "validation"


class HookPointError(SaekitError, KeyError):
    """A hook point name does not exist in the model."""

    error_type = "validation"

    __str__ = SaekitError.__str__  # KeyError's would quote the message
