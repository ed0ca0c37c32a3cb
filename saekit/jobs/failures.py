"""Classify an exception raised inside a job into ``(error_type, message, suggestion)``."""

from __future__ import annotations

import errno
import re

from saekit._secrets import mask
from saekit.errors import SaekitError

ERROR_TYPES = ("oom", "validation", "data", "numerics", "credentials", "worker_lost", "cancelled", "timeout",
               "unknown")

SUGGESTIONS = {
    "oom": "lower batch_size (or max_tokens per batch), use a smaller dtype, or free memory on the device "
           "(sk.SystemMonitor() shows what uses it); then job.resume()",
    "worker_lost": "the worker process ended without recording a result (killed, out of host memory, or the "
                   "machine restarted); read its log (`saekit show ID`), then job.resume() continues from the "
                   "last committed point",
    "timeout": "raise the timeout, or give the job less work",
    "credentials": "the endpoint refused the credentials: check the API key (or token) in the environment "
                   "variable the backend reads, then job.resume()",
}
AUTH_TYPES = ("AuthenticationError", "PermissionDeniedError")  # openai's 401 and 403
AUTH_TEXT = re.compile(r"(?i)\b401\b|unauthori[sz]ed|invalid (?:api )?key|incorrect api key|invalid_api_key")


OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory (host or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError (and torch.OutOfMemoryError)
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()  # torch raises a plain RuntimeError for the host allocator and some backends
    return any(phrase in text for phrase in OOM_PHRASES)


def classify(exc: BaseException) -> tuple[str, str, str | None]:
    """The error type, a one-line message and a suggestion (or None) for ``exc``; credentials in the message
    are masked."""
    error_type, message, suggestion = _classify(exc)
    return error_type, mask(message), mask(suggestion)


def _classify(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, SaekitError):
        message = Exception.__str__(exc)
        return exc.error_type, message, exc.suggestion
    message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if type(exc).__name__ in AUTH_TYPES or (not isinstance(exc, OSError) and AUTH_TEXT.search(str(exc))):
        return "credentials", message, SUGGESTIONS["credentials"]
    if is_oom(exc):
        return "oom", message, SUGGESTIONS["oom"]
    if isinstance(exc, TimeoutError):
        return "timeout", message, SUGGESTIONS["timeout"]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" on the disk of {exc.filename!r}" if exc.filename else ""
        return "data", message, f"free disk space{where}, then job.resume()"
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return "worker_lost", f"the worker was stopped ({message})", SUGGESTIONS["worker_lost"]
    return "unknown", message, None
