"""saekit's log is the "saekit" logger, left to the application (a library adds only a ``NullHandler``).

What a user needs to see of a job goes to the job's events, its widget and its text bar, not to this log.
Background workers are applications: they log INFO and above, with timestamps, into their log file
(``configure_worker``); ``$SAEKIT_LOG_LEVEL`` changes their level.
"""

from __future__ import annotations

import logging
import os
import sys


def configure() -> None:
    """The library's setup: a ``NullHandler``, so records go wherever the application sends them."""
    root = logging.getLogger("saekit")
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())


class MaskingFormatter(logging.Formatter):
    """A formatter whose lines (message and traceback) carry no credentials (``saekit._secrets.mask``)."""

    def format(self, record: logging.LogRecord) -> str:
        from saekit._secrets import mask

        return mask(super().format(record))


def configure_worker() -> None:
    """A worker process's setup: timestamped records on stderr (its log file), credentials masked."""
    logging.basicConfig(level=os.environ.get("SAEKIT_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
