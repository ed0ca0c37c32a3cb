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
from saekit._faults import fault_point
from saekit._fs import remove, staging_path
from saekit._secrets import mask
from saekit.errors import ConfigError, DataError, JobNotFoundError, JobStateError
from saekit.jobs.gc import spec_paths
from saekit.jobs.kinds import get_kind
from saekit.registry import history
from saekit.registry.labels import check_label, json_object, read_journal
from saekit.registry.rebuild import COLUMNS
from saekit.workspace import Workspace, as_workspace, check_job_id

log = logging.getLogger("saekit.jobs")

FORMAT = 1
PLACEHOLDER = "${WORKSPACE}"
TEXT_SUFFIXES = (".json", ".jsonl")  # files whose workspace paths are rewritten (zarr.json, cfg.json, logs)
MESSAGE_FIELDS = ("error_message", "suggestion", "traceback")
SHARED = ("activations/array-", "saes/imported/", "cache/", "corpora/", "tokenizers/")  # content-addressed
DATA_FOLDERS = ("jobs", "tokens", "activations", "saes", "analyses", "cache", "corpora", "tokenizers")
IMPORTED = "imported.json"  # in an imported job's folder: its outputs outside the workspace are references
KIND = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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
                    row[name] = mask(_hide_home(row[name])) if name in MESSAGE_FIELDS else row[name]
        manifest = {"format": FORMAT, "exported_from": "saekit", "jobs": full,
                    "files": [str(f) for f in files], "asked": ids}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_iso) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if archive:
            staged = staging_path(target)
            with tarfile.open(staged, "w:gz" if target.name.endswith(("gz", ".tgz")) else "w") as tar:
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
    try:
        with tarfile.open(bundle) as tar:
            tar.extractall(tmp, filter="data")  # no member outside, no device, no link leaving the archive
    except (tarfile.TarError, OSError) as exc:
        raise _bad(bundle, f"the archive cannot be unpacked safely ({type(exc).__name__}: {exc})") from None
    return Path(tmp) / "bundle"


def _bad(bundle: Path, why: str) -> DataError:
    return DataError(f"bundle {str(bundle)!r}: {why}; nothing was imported",
                     suggestion="a bundle is imported only as sk.export wrote it: export it again")


def _check_row(bundle: Path, row) -> dict:
    """One job row of a manifest, every column checked (a bundle is data from outside: its rows must not name
    paths, states or types that this workspace's code would act on)."""
    if not isinstance(row, dict):
        raise _bad(bundle, f"a job row is {type(row).__name__}, not an object")
    try:
        check_job_id(row.get("id"))
    except ConfigError as exc:
        raise _bad(bundle, str(exc)) from None
    where = f"job {row['id']}"
    if not isinstance(row.get("kind"), str) or not KIND.fullmatch(row["kind"]):
        raise _bad(bundle, f"{where}: kind {row.get('kind')!r} is not a job kind name")
    if row.get("status") not in registry.FINAL_STATES:
        raise _bad(bundle, f"{where}: status {row.get('status')!r} is not one of {registry.FINAL_STATES} "
                           "(only finished jobs travel)")
    for name in ("key", "spec", "entry"):
        if not isinstance(row.get(name), str):
            raise _bad(bundle, f"{where}: {name} is missing")
    for name in ("name", "result", "error_type", "error_message", "suggestion", "launcher", "worker_host", "traceback"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise _bad(bundle, f"{where}: {name} {row[name]!r} is not text")
    for name, text in (("spec", row["spec"]), ("result", row.get("result"))):
        try:
            value = None if text is None else json.loads(text)
        except ValueError:
            raise _bad(bundle, f"{where}: its {name} is not JSON") from None
        if name == "spec" and not isinstance(value, dict):
            raise _bad(bundle, f"{where}: its spec is not a JSON object")
    attempt = row.get("attempt", 1)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise _bad(bundle, f"{where}: attempt {attempt!r} is not a positive number")
    out = {c: row.get(c) for c in COLUMNS}
    out.update(attempt=attempt, active_key=None, cancel_requested=False,
               worker_pid=row.get("worker_pid") if isinstance(row.get("worker_pid"), int) else None)
    for name in ("created_at", "queued_at", "started_at", "finished_at"):
        try:
            out[name] = None if row.get(name) is None else dt.datetime.fromisoformat(row[name])
        except (TypeError, ValueError):
            raise _bad(bundle, f"{where}: {name} {row.get(name)!r} is not an ISO time") from None
    if out["created_at"] is None or out["queued_at"] is None:
        raise _bad(bundle, f"{where}: created_at and queued_at are needed")
    return out


def _check_path(bundle: Path, text, ids: set[str]) -> Path:
    """A manifest's file path: relative, inside one of the workspace's data folders, no ``..``; a job folder
    only of a job the bundle holds. (``saekit.json``, the registry and anything outside are never written.)"""
    parts = text.split("/") if isinstance(text, str) else []
    if (not parts or text.startswith("/") or "\\" in text or "\x00" in text or len(parts) < 2
            or any(p in ("", ".", "..") for p in parts) or parts[0] not in DATA_FOLDERS):
        raise _bad(bundle, f"file {text!r} is not a path inside a workspace's data folders ({', '.join(DATA_FOLDERS)})")
    if parts[0] == "jobs" and parts[1] not in ids:
        raise _bad(bundle, f"file {text!r} is in the folder of a job the bundle does not hold")
    return Path(*parts)


def _check_source(bundle: Path, files: Path, rel: Path) -> None:
    """The bundle's copy of ``rel``: there, and made of plain files and folders only (a symbolic link would copy
    whatever the importer can read)."""
    place = files
    for part in ("", *rel.parts):
        place = place / part if part else place
        if place.is_symlink():
            raise _bad(bundle, f"{place.relative_to(files.parent)} is a symbolic link")
    if not place.exists():
        raise _bad(bundle, f"file {rel.as_posix()} of the manifest is missing")
    if place.is_dir():
        for folder, dirs, names in os.walk(place):
            for name in dirs + names:
                entry = Path(folder) / name
                if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                    raise _bad(bundle, f"{entry.relative_to(files.parent)} is not a plain file or folder")
    elif not place.is_file():
        raise _bad(bundle, f"{rel.as_posix()} is not a plain file or folder")


def _bundle_labels(bundle: Path, files: Path, rows: list[dict]) -> list[dict]:
    """The label rows journalled in the bundle's analyses, each checked like an imported labels file."""
    out = []
    for row in rows:
        for label in read_journal(files / "analyses" / row["id"]):
            if label["analysis"] != row["id"]:
                continue  # rows of another analysis: that one's own
            try:
                if not isinstance(label["feature"], int) or isinstance(label["feature"], bool) or label["feature"] < 0:
                    raise ValueError(f"feature {label['feature']!r} is not a latent id")
                if label["source"] not in ("user", "llm") or not isinstance(label["author"], str):
                    raise ValueError(f"source {label['source']!r} or author is not valid")
                if not isinstance(label["label"], str):
                    raise ValueError("a label is not text")
                label["label"] = check_label(label["label"]) if label["label"].strip() else ""
                label["provenance"] = json_object(label["provenance"], "provenance")
                label["scores"] = json_object(label["scores"], "scores")
            except (ValueError, TypeError) as exc:
                raise _bad(bundle, f"a label of analysis {row['id']}: {exc}") from None
            out.append(label)
    return out


def _check_metrics(bundle: Path, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise _bad(bundle, f"metrics.parquet cannot be read ({type(exc).__name__}: {exc})") from None
    wanted = {"job_id": pa.string(), "step": pa.int64(), "name": pa.string(), "value": pa.float64()}
    if any(schema.field(n).type != t if n in schema.names else True for n, t in wanted.items()):
        raise _bad(bundle, f"metrics.parquet has columns {schema.names}, not job_id, step, name, value")


def _replaceable(rel: Path, ids: set[str]) -> bool:
    """Whether an existing ``rel`` here may be replaced by the bundle's: an entry named after one of the
    bundle's jobs, which this workspace does not have (left by an import that was cut short, or by a deleted
    job of that id)."""
    return rel.parts[1].split(".")[0] in ids


def import_jobs(bundle: str | os.PathLike, *, workspace: str | Workspace | None = None) -> list[str]:
    """Bring an exported bundle's jobs into this workspace with their ids, files, metrics and labels, all or
    nothing: a bundle whose job ids exist here is refused, and one cut short (killed) can be imported again.
    A bundle is data: its files land only inside this workspace's data folders, its rows are checked, and what
    they name outside the workspace (``root`` URLs) stays a reference that deleting the copy never removes.
    Returns the imported ids."""
    ws = as_workspace(workspace)
    bundle = Path(bundle).expanduser().absolute()
    if not bundle.exists():
        raise ConfigError(f"no bundle at {str(bundle)!r}; give the folder or archive that sk.export wrote")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _unpack(bundle, tmp)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{str(bundle)!r} has no manifest.json; it is not a saekit export") from None
        except (ValueError, OSError) as exc:
            raise _bad(bundle, f"manifest.json cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(manifest, dict):
            raise _bad(bundle, "manifest.json is not an object")
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"bundle format {manifest.get('format')!r} is not {FORMAT}; export it again with this saekit")
        if not isinstance(manifest.get("jobs"), list) or not isinstance(manifest.get("files"), list):
            raise _bad(bundle, "manifest.json has no list of jobs and files")
        rows = [_check_row(bundle, r) for r in manifest["jobs"]]
        ids = {r["id"] for r in rows}
        if len(ids) != len(rows):
            raise _bad(bundle, "a job id appears twice")
        files_root = folder / "files"
        if files_root.is_symlink():
            raise _bad(bundle, "files/ is a symbolic link")
        files = list(dict.fromkeys(_check_path(bundle, f, ids) for f in manifest["files"]))
        for rel in files:
            _check_source(bundle, files_root, rel)
        labels = _bundle_labels(bundle, files_root, rows)
        taken = [r.id for r in registry.get_jobs(ws, sorted(ids))]
        if taken:
            raise JobStateError(f"job id(s) {taken} exist in {ws.path} already; nothing was imported",
                                suggestion="import into another workspace, or delete those jobs here first")
        shared = {rel for rel in files if rel.as_posix().startswith(SHARED) and (ws.path / rel).exists()}
        clashes = [rel for rel in files if (ws.path / rel).exists() and rel not in shared and not _replaceable(rel, ids)]
        if clashes:
            raise JobStateError(f"{len(clashes)} file(s) of the bundle exist in {ws.path} already "
                                f"({', '.join(map(str, clashes[:3]))}); nothing was imported")
        metrics = folder / "metrics.parquet"
        if metrics.is_symlink():
            raise _bad(bundle, "metrics.parquet is a symbolic link")
        if metrics.is_file():
            _check_metrics(bundle, metrics)
        for row in rows:
            for name in ("spec", "result", *MESSAGE_FIELDS):
                if row.get(name) is not None:
                    row[name] = _swap(row[name], PLACEHOLDER, str(ws.path))
        staged = _stage(ws, bundle, files_root, [rel for rel in files if rel not in shared], rows, ids)
        try:
            history.insert_finished_jobs(ws, rows, metrics if metrics.is_file() else None, labels=labels,
                                         publish=lambda: _publish(staged))
        except BaseException:
            for aside, _, _ in staged:
                remove(aside)
            raise
    log.info("imported %d job(s) into %s", len(rows), ws.path)
    return [r["id"] for r in rows]


def _stage(ws: Workspace, bundle: Path, files_root: Path, files: list[Path], rows: list[dict],
           ids: set[str]) -> list[tuple[Path, Path, bool]]:
    """Copy the bundle's files beside their places (hidden staging names) and mark each job folder as imported;
    ``[(staged, final, whether an entry at final may be replaced)]``."""
    staged: list[tuple[Path, Path, bool]] = []
    try:
        for rel in files:
            final = ws.path / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            aside = staging_path(final)
            staged.append((aside, final, _replaceable(rel, ids)))
            if (files_root / rel).is_dir():
                aside.mkdir()
            _copy_tree(files_root / rel, aside, PLACEHOLDER, str(ws.path))
        folders = {final: aside for aside, final, _ in staged}
        for row in rows:
            final = ws.job_dir(row["id"])
            if final not in folders:
                final.parent.mkdir(parents=True, exist_ok=True)
                folders[final] = staging_path(final)
                folders[final].mkdir()
                staged.append((folders[final], final, True))
            mark = {"bundle": bundle.name, "imported_at": registry.utcnow().isoformat()}
            (folders[final] / IMPORTED).write_text(json.dumps(mark) + "\n")
    except BaseException:
        for aside, _, _ in staged:
            remove(aside)
        raise
    return staged


def _publish(staged: list[tuple[Path, Path, bool]]) -> None:
    """Move the staged files into place (inside the registry transaction that inserts their rows). An entry named
    after one of the bundle's jobs (left by an import cut short) is replaced; a content-addressed one that
    appeared meanwhile is kept, and the bundle's copy dropped."""
    for n, (aside, final, replace) in enumerate(staged):
        if os.path.lexists(final):
            if not replace:
                remove(aside)
                continue
            remove(final)
        os.rename(aside, final)
        if n == 0:
            fault_point("import_publishing")  # the reliability tests kill here: some files in place, no rows


def is_imported(ws: Workspace, job_id: str) -> bool:
    """Whether the job came into this workspace from a bundle (its folder holds ``imported.json``)."""
    return (ws.job_dir(job_id) / IMPORTED).exists()
