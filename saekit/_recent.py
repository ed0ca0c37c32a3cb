"""The workspaces this user ran jobs in lately, so ``sk.job(id)`` finds a job after a kernel restart without being
told its workspace (a notebook that used ``sk.set_workspace(tmp)``). A small JSON file of paths,
``$SAEKIT_STATE_DIR/workspaces.json`` (default ``$XDG_STATE_HOME/saekit``, else ``~/.local/state/saekit``);
losing it loses nothing but this convenience."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("saekit")

KEEP = 20  # the most recently used workspaces remembered


def _file() -> Path:
    base = os.environ.get("SAEKIT_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"), "saekit")
    return Path(base) / "workspaces.json"


def recent() -> list[str]:
    """Workspace folders used lately, the most recent first (those that still exist)."""
    try:
        entries = json.loads(_file().read_text())
    except (OSError, ValueError):
        return []
    paths = [e["path"] for e in sorted(entries, key=lambda e: -e.get("used", 0))
             if isinstance(e, dict) and isinstance(e.get("path"), str)]
    return [p for p in paths if os.path.isdir(p)]


def remember(path: str | os.PathLike) -> None:
    """Note that a job was submitted in the workspace at ``path`` (best effort: a failure is only logged)."""
    from saekit._fs import write_atomic

    path = str(path)
    try:
        now = time.time()
        others = [p for p in recent() if p != path][:KEEP - 1]  # most recent first
        entries = [{"path": path, "used": now}, *({"path": p, "used": now - 1 - i} for i, p in enumerate(others))]
        target = _file()
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, json.dumps(entries, indent=1))
    except OSError as exc:
        log.debug("could not remember workspace %s in %s: %s", path, _file(), exc)
