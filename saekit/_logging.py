"""saekit's log: the "saekit" logger writes INFO and above to stderr unless the application configured it.

``$SAEKIT_LOG_LEVEL`` (e.g. WARNING) changes the level.
"""

from __future__ import annotations

import logging
import os
import sys


def configure(*, timestamps: bool = False) -> None:
    """Give the "saekit" logger a stderr handler (workers ask for timestamps in their log files)."""
    root = logging.getLogger("saekit")
    if timestamps:
        for handler in list(root.handlers):
            root.removeHandler(handler)
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps else "saekit: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(os.environ.get("SAEKIT_LOG_LEVEL", "INFO").upper())
    root.propagate = False
