"""Named points where the reliability tests kill a process, or learn that it got there, to prove that
every instant is resumable and every failure recoverable.

- ``$SAEKIT_FAULT=name:attempt`` (e.g. ``before_end:1``) kills the process with SIGKILL when it reaches
  ``fault_point(name, attempt)`` during that attempt;
- ``$SAEKIT_TRACE_DIR=folder`` makes each point it reaches touch ``folder/name`` (a signal that needs no
  shared clock, e.g. for a test that must act once a worker waits for disk space).

Unset (always, outside the tests) a point costs two environment lookups.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def fault_point(name: str, attempt: int | None = None) -> None:
    trace = os.environ.get("SAEKIT_TRACE_DIR")
    if trace:
        Path(trace, name).touch()
    wanted = os.environ.get("SAEKIT_FAULT")
    if wanted and wanted == (name if attempt is None else f"{name}:{attempt}"):
        os.kill(os.getpid(), signal.SIGKILL)
