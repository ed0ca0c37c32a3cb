"""Moving finished jobs between workspaces: ``sk.export(ids, to)`` and ``sk.import_jobs(bundle)``.

A bundle is a folder (or a ``.tar``/``.tar.gz`` of one) holding ``manifest.json`` (the job rows), ``metrics.parquet``
(their compacted metrics) and ``files/`` (each job's event log and outputs - stores, SAEs, analyses with their
label journals - at their paths inside the workspace). The exporting workspace's path is written as
``${WORKSPACE}`` in rows, logs and JSON files, and is replaced by the importing one's; the home folder is
written as ``~`` in stored messages and tracebacks (the full text stays in the worker log, which is not
exported). Import keeps the job ids and refuses a bundle whose ids or files exist already.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

from saekit import registry
from saekit._fs import remove, staging_path
from saekit.errors import ConfigError, JobNotFoundError, JobStateError
from saekit.jobs.gc import spec_paths
from saekit.jobs.kinds import get_kind
from saekit.registry import history
from saekit.registry.labels import add_labels, read_journal
from saekit.workspace import Workspace, as_workspace

log = logging.getLogger("saekit.jobs")

FORMAT = 1
PLACEHOLDER = "${WORKSPACE}"
TEXT_SUFFIXES = (".json", ".jsonl")  # files whose workspace paths are rewritten (zarr.json, cfg.json, logs)
MESSAGE_FIELDS = ("error_message", "suggestion")
SHARED = ("activations/array-", "saes/imported/", "cache/")  # content-addressed: one name, the same bytes everywhere


def _spec_strings(value) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _spec_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _spec_strings(item)
    elif isinstance(value, str):
        yield value


def _named_jobs(spec: dict, known: set[str]) -> list[str]:
    """The ids of known jobs a spec names: as a value (``"tokens": {"id": ...}``), a path component
    (``.../saes/<id>/final``, ``.../activations/<id>.zarr``) or a fingerprint (``job:<id>``)."""
    return [part for text in _spec_strings(spec) for part in (p.removesuffix(".zarr") for p in re.split(r"[/:]", text))
            if part in known]


def _covered(paths: list[Path]) -> list[Path]:
    """The paths that no other of them contains, in order."""
    return [p for p in paths if not any(q != p and q in p.parents for q in paths)]


def _closure(ws: Workspace, ids: list[str], inputs: bool) -> list[registry.JobRecord]:
    """The jobs asked for and, with ``inputs``, the jobs their specs name (their stores, SAEs...), oldest first."""
    known = {r.id for r in registry.list_jobs(ws)}
    missing = [i for i in ids if i not in known]
    if missing:
        raise JobNotFoundError(f"no job(s) {missing} in {ws.path}; see sk.jobs()")
    chosen, todo = {}, list(ids)
    while todo:
        batch = [i for i in dict.fromkeys(todo) if i not in chosen]
        todo = []
        for row in registry.get_jobs(ws, batch):
            chosen[row.id] = row
            if row.active:
                raise JobStateError(f"job {row.id} is {row.status}; export it once it has finished")
            if inputs:
                todo += [i for i in _named_jobs(row.spec_dict, known) if i not in chosen]
    return sorted(chosen.values(), key=lambda r: (r.created_at or dt.datetime.min, r.id))


def _inside(ws: Workspace, path) -> Path | None:
    """``path`` relative to the workspace when it lies in one of its folders, else None."""
    if "://" in str(path):
        return None
    try:
        rel = Path(os.path.abspath(path)).relative_to(ws.path)
    except ValueError:
        return None
    return rel if len(rel.parts) >= 2 else None


def _files_of(ws: Workspace, row: registry.JobRecord) -> list[Path]:
    files = [Path("jobs") / row.id]
    try:
        kind = get_kind(row.kind)
    except ConfigError:
        kind = None
    outputs = list(kind.outputs(ws, row)) if kind is not None and kind.outputs else []
    for path in [*outputs, *spec_paths(ws, row.spec_dict)]:
        rel = _inside(ws, path)
        if rel is not None and (ws.path / rel).exists():
            files.append(rel)
    return list(dict.fromkeys(files))


def _swap(text: str, old: str, new: str) -> str:
    """``text`` with the path ``old`` (whole: followed by a separator, a quote or the end) replaced by ``new``."""
    return re.sub(re.escape(old) + r'(?=[/\\"\s]|$)', lambda _: new, text)


def _hide_home(text: str) -> str:
    home = str(Path.home())
    return _swap(text, home, "~") if len(home) > 1 else text


def _rewrite_log(text: str, old: str, new: str) -> str:
    """An event log with the workspace path replaced, and the home folder hidden in messages and tracebacks."""
    lines = []
    for line in _swap(text, old, new).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a cut line: readers skip it too
        for name in ("message", "data", *MESSAGE_FIELDS):
            if record.get(name) is not None:
                record[name] = json.loads(_hide_home(json.dumps(record[name])))
        lines.append(json.dumps(record, separators=(",", ":")) + "\n")
    return "".join(lines)


def _copy_tree(source: Path, target: Path, old: str, new: str) -> None:
    """Copy a file or folder, with the workspace path rewritten in JSON files (and see ``_rewrite_log``).
    Lease and cancel files are left behind."""
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in TEXT_SUFFIXES:
            text = source.read_text(encoding="utf-8")
            text = _rewrite_log(text, old, new) if source.name == "events.jsonl" else _swap(text, old, new)
            target.write_text(text, encoding="utf-8")
        else:
            shutil.copy2(source, target)
        return
    for entry in sorted(source.rglob("*")):
        if entry.is_file() and entry.name not in ("lease.lock", "cancel"):
            _copy_tree(entry, target / entry.relative_to(source), old, new)


def export(job_ids: str | Iterable[str], to: str | os.PathLike, *, inputs: bool = True,
           workspace: str | Workspace | None = None) -> Path:
    """Write finished jobs - with their stores, SAEs, analyses and labels, and (``inputs=True``) the jobs they
    were made from - into the bundle ``to``: a new folder, or a ``.tar`` / ``.tar.gz`` file. Returns its path.
    ``sk.import_jobs(path)`` brings them into another workspace."""
    ws = as_workspace(workspace)
    ids = [job_ids] if isinstance(job_ids, str) else [getattr(j, "id", j) for j in job_ids]
    if not ids:
        raise ConfigError("export() needs at least one job id")
    target = Path(to).expanduser().absolute()
    if target.exists():
        raise ConfigError(f"export target {str(target)!r} exists; give a new folder or archive name")
    archive = target.name.endswith((".tar", ".tar.gz", ".tgz"))
    rows = _closure(ws, ids, inputs)
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        folder = Path(tmp) / "bundle"
        files = _covered(list(dict.fromkeys(rel for row in rows for rel in _files_of(ws, row))))
        for rel in files:
            _copy_tree(ws.path / rel, folder / "files" / rel, str(ws.path), PLACEHOLDER)
        history.write_metrics(ws, [r.id for r in rows], folder / "metrics.parquet")
        full = history.full_rows(ws, [r.id for r in rows])
        for row in full:
            for name in ("spec", "result", *MESSAGE_FIELDS):
                if row.get(name) is not None:
                    row[name] = _swap(row[name], str(ws.path), PLACEHOLDER)
                    row[name] = _hide_home(row[name]) if name in MESSAGE_FIELDS else row[name]
        manifest = {"format": FORMAT, "exported_from": "saekit", "jobs": full,
                    "files": [str(f) for f in files], "asked": ids}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_iso) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if archive:
            mode = "w:gz" if target.name.endswith(("gz", ".tgz")) else "w"
            staged = staging_path(target)
            with tarfile.open(staged, mode) as tar:
                tar.add(folder, arcname="bundle")
            os.replace(staged, target)
        else:
            shutil.move(folder, target)
    log.info("exported %d job(s) to %s", len(rows), target)
    return target


def _iso(value):
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _unpack(bundle: Path, tmp: str) -> Path:
    if bundle.is_dir():
        return bundle
    if not tarfile.is_tarfile(bundle):
        raise ConfigError(f"{str(bundle)!r} is neither a bundle folder nor a tar archive of one; see sk.export()")
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp, filter="data")
    return Path(tmp) / "bundle"


def _same_content(a: Path, b: Path) -> bool:
    """Whether two content-addressed entries hold the same files (their names say their content)."""
    if a.is_file() and b.is_file():
        return a.stat().st_size == b.stat().st_size
    return a.is_dir() and b.is_dir() and sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))


def import_jobs(bundle: str | os.PathLike, *, workspace: str | Workspace | None = None) -> list[str]:
    """Bring an exported bundle's jobs into this workspace with their ids, files, metrics and labels. Refuses
    (changing nothing) when a job id or a file exists here already. Returns the imported ids."""
    ws = as_workspace(workspace)
    bundle = Path(bundle).expanduser().absolute()
    if not bundle.exists():
        raise ConfigError(f"no bundle at {str(bundle)!r}; give the folder or archive that sk.export wrote")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _unpack(bundle, tmp)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError:
            raise ConfigError(f"{str(bundle)!r} has no manifest.json; it is not a saekit export") from None
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"bundle format {manifest.get('format')!r} is not {FORMAT}; export it again with this saekit")
        rows = manifest["jobs"]
        taken = [r["id"] for r in rows if registry.get_job(ws, r["id"]) is not None]
        if taken:
            raise JobStateError(f"job id(s) {taken} exist in {ws.path} already; nothing was imported",
                                suggestion="import into another workspace, or delete those jobs here first")
        files = [Path(f) for f in manifest["files"]]
        clashes = [f for f in files if (ws.path / f).exists()
                   and not (str(f).startswith(SHARED) and _same_content(ws.path / f, folder / "files" / f))]
        if clashes:
            raise JobStateError(f"{len(clashes)} file(s) of the bundle exist in {ws.path} already "
                                f"({', '.join(map(str, clashes[:3]))}); nothing was imported")
        copied = []
        try:
            for rel in files:
                if (ws.path / rel).exists():
                    continue  # a content-addressed entry this workspace has already
                staged = staging_path(ws.path / rel)
                if (folder / "files" / rel).is_dir():
                    staged.mkdir(parents=True)
                _copy_tree(folder / "files" / rel, staged, PLACEHOLDER, str(ws.path))
                os.rename(staged, ws.path / rel)
                copied.append(ws.path / rel)
            for row in rows:
                for name in ("spec", "result", *MESSAGE_FIELDS):
                    if row.get(name) is not None:
                        row[name] = _swap(row[name], PLACEHOLDER, str(ws.path))
                for name in ("created_at", "queued_at", "started_at", "finished_at"):
                    row[name] = None if row.get(name) is None else dt.datetime.fromisoformat(row[name])
            metrics = folder / "metrics.parquet"
            history.insert_finished_jobs(ws, rows, metrics if metrics.exists() else None)
        except BaseException:
            for path in copied:
                remove(path)
            raise
    labels = [r for row in rows for r in read_journal(ws.path / "analyses" / row["id"]) if r["analysis"] == row["id"]]
    add_labels(ws, labels)
    log.info("imported %d job(s) into %s", len(rows), ws.path)
    return [r["id"] for r in rows]
