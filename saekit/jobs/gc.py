"""What ``saekit gc`` finds: files in the workspace that no job owns.

Each job kind declares the workspace folders its outputs live in (``output_dirs``) and, per job, the
paths it made (``outputs``); a job also claims the workspace paths its spec names (an SAE saved for an
analysis). An entry of a declared folder that no job claims is an orphan (a store of a
deleted job, a half-written folder whose writer died). The jobs layer's own folders, ``jobs/`` and
``logs/``, hold one entry per job id. Nothing here knows the layout of a layer above.

A plan is a snapshot; jobs start while it is made. So each removal is decided again, with the registry's
write lock held (``remove_orphans``): a job's row exists before any of its files, so a job created after the
plan was made keeps its folder, its log and its outputs.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path

import psutil

from saekit import registry
from saekit._fs import remove, staging_path
from saekit.errors import ConfigError
from saekit.jobs.kinds import _KINDS, builtin_kinds, get_kind
from saekit.workspace import Workspace

log = logging.getLogger("saekit.jobs")

_STAGING = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")  # saekit._fs.staging_path: .<name>.tmp-<pid>-<hex>


def _being_written(path: Path) -> bool:
    """A staging folder whose writer is alive (it becomes an output in one rename)."""
    match = _STAGING.match(path.name)
    return match is not None and psutil.pid_exists(int(match.group(1)))


def spec_paths(ws: Workspace, spec) -> list[str]:
    """The strings anywhere in a spec that are paths inside the workspace."""
    if isinstance(spec, dict):
        return [p for value in spec.values() for p in spec_paths(ws, value)]
    if isinstance(spec, list):
        return [p for value in spec for p in spec_paths(ws, value)]
    return [spec] if isinstance(spec, str) and spec.startswith(str(ws.path) + os.sep) else []


def _claims(ws: Workspace, rows) -> set[str]:
    """The paths the jobs ``rows`` own: each kind's outputs, and what a spec names inside the workspace (an SAE
    saved for an analysis) with its folders."""
    claimed: set[str] = set()
    for row in rows:
        try:
            kind = get_kind(row.kind)
        except ConfigError:  # a kind this process does not know: its outputs cannot be told apart
            log.warning("job %s has kind %r, unknown here; its outputs are not claimed", row.id, row.kind)
            continue
        if kind.outputs is not None:
            claimed |= {str(Path(p)) for p in kind.outputs(ws, row) if "://" not in str(p)}
    for row in rows:
        for text in spec_paths(ws, row.spec_dict):
            for path in [Path(text), *Path(text).parents]:
                if path == ws.path:
                    break
                claimed.add(str(path))
    return claimed


def _is_orphan(ws: Workspace, path: Path, ids: set[str], claimed: set[str], keeps: dict[str, set]) -> bool:
    folder = path.parent.relative_to(ws.path).as_posix()
    if folder in ("jobs", "logs"):
        return (path.name.removesuffix(".log") if folder == "logs" else path.name) not in ids
    if str(path) in claimed or path.name.split(".")[0] in ids or _being_written(path):
        return False  # (an entry named after a job is never an orphan, whatever its kind declares)
    return not any(keep and fnmatch.fnmatch(path.name, keep) for keep in keeps.get(folder, ()))


def _output_folders() -> dict[str, set[str | None]]:
    builtin_kinds()  # their modules declare their folders
    folders: dict[str, set[str | None]] = {}
    for kind in list(_KINDS.values()):
        for folder, keep in kind.output_dirs:
            folders.setdefault(folder, set()).add(keep)
    return folders


def orphan_files(ws: Workspace) -> list[Path]:
    """Paths in the workspace that no job owns, sorted. A plan only: ``remove_orphans`` checks each again when it
    removes it."""
    rows = registry.list_jobs(ws, with_spec=True)
    ids, claimed, folders = {row.id for row in rows}, _claims(ws, rows), _output_folders()
    orphans: list[Path] = []
    for folder in ("jobs", "logs", *sorted(folders)):
        base = ws.path / folder
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            if _is_orphan(ws, path, ids, claimed, folders):
                orphans.append(path)
    return orphans


def remove_orphans(ws: Workspace, paths: list[Path]) -> list[Path]:
    """Remove those of ``paths`` that are still orphans: decided with the registry's write lock held, so that a
    job created since the plan (its row comes before its files) keeps what is its own. Each is renamed aside
    under the lock and deleted after it. Returns the paths removed."""
    folders = _output_folders()
    moved: list[tuple[Path, Path]] = []
    with registry.jobs_locked(ws) as rows:
        ids, claimed = {r.id for r in rows}, _claims(ws, rows)
        for path in map(Path, paths):
            if os.path.lexists(path) and _is_orphan(ws, path, ids, claimed, folders):
                aside = staging_path(path)
                try:
                    os.rename(path, aside)
                except OSError as exc:
                    log.warning("gc could not remove %s: %s", path, exc)
                    continue
                moved.append((path, aside))
    for _, aside in moved:
        remove(aside)
    return [path for path, _ in moved]
