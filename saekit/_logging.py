"""saekit's log: the "saekit" logger writes INFO and above to stderr unless the application configured it.

``$SAEKIT_LOG_LEVEL`` (e.g. WARNING) changes the level.
"""

from __future__ import annotations

import logging
import os
import sys


def configure() -> None:
    root = logging.getLogger("saekit")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("saekit: %(message)s"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("SAEKIT_LOG_LEVEL", "INFO").upper())
    root.propagate = False
