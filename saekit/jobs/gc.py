"""What ``saekit gc`` finds: files in the workspace that no job owns.

Each job kind declares the workspace folders its outputs live in (``output_dirs``) and, per job, the
paths it made (``outputs``); a job also claims the workspace paths its spec names (an SAE saved for an
analysis). An entry of a declared folder that no job claims is an orphan (a store of a
deleted job, a half-written folder whose writer died). The jobs layer's own folders, ``jobs/`` and
``logs/``, hold one entry per job id. Nothing here knows the layout of a layer above.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path

import psutil

from saekit import registry
from saekit.errors import ConfigError
from saekit.jobs.kinds import _KINDS, builtin_kinds, get_kind
from saekit.workspace import Workspace

log = logging.getLogger("saekit.jobs")

_STAGING = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")  # saekit._fs.staging_path: .<name>.tmp-<pid>-<hex>


def _being_written(path: Path) -> bool:
    """A staging folder whose writer is alive (it becomes an output in one rename)."""
    match = _STAGING.match(path.name)
    return bool(match) and psutil.pid_exists(int(match.group(1)))


def spec_paths(ws: Workspace, spec) -> list[str]:
    """The strings anywhere in a spec that are paths inside the workspace."""
    if isinstance(spec, dict):
        return [p for value in spec.values() for p in spec_paths(ws, value)]
    if isinstance(spec, list):
        return [p for value in spec for p in spec_paths(ws, value)]
    return [spec] if isinstance(spec, str) and spec.startswith(str(ws.path) + os.sep) else []


def orphan_files(ws: Workspace) -> list[Path]:
    """Paths in the workspace that no job owns, sorted."""
    rows = registry.list_jobs(ws, with_spec=True)
    ids = {row.id for row in rows}
    claimed: set[str] = set()
    for row in rows:
        try:
            kind = get_kind(row.kind)
        except ConfigError:  # a kind this process does not know: its outputs cannot be told apart
            log.warning("job %s has kind %r, unknown here; its outputs are not claimed", row.id, row.kind)
            continue
        if kind.outputs is not None:
            claimed |= {str(Path(p)) for p in kind.outputs(ws, row) if "://" not in str(p)}
    for row in rows:  # what a spec names inside the workspace (an SAE saved for an analysis) and its folders
        for text in spec_paths(ws, row.spec_dict):
            for path in [Path(text), *Path(text).parents]:
                if path == ws.path:
                    break
                claimed.add(str(path))
    builtin_kinds()  # their modules declare their folders
    orphans: list[Path] = []
    for folder in ("jobs", "logs"):
        base = ws.path / folder
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            job_id = path.name.removesuffix(".log") if folder == "logs" else path.name
            if job_id not in ids:
                orphans.append(path)
    folders: dict[str, set[str | None]] = {}
    for kind in list(_KINDS.values()):
        for folder, keep in kind.output_dirs:
            folders.setdefault(folder, set()).add(keep)
    for folder, keeps in sorted(folders.items()):
        base = ws.path / folder
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            if str(path) in claimed or path.name.split(".")[0] in ids or _being_written(path):
                continue  # (an entry named after a job is never an orphan, whatever its kind declares)
            if any(keep and fnmatch.fnmatch(path.name, keep) for keep in keeps):
                continue
            orphans.append(path)
    return orphans
