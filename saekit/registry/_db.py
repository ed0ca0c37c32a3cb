"""The only code that opens registry.duckdb.

Every access takes the registry lock (shared to read, exclusive to write), opens the file (read-only
for reads), runs one transaction and closes it. No connection outlives a call and nothing retries on
DuckDB's own lock errors: the OS lock is what serialises processes.

Every DuckDB failure leaves as a saekit error, classified by what is true rather than by its message:
another program holds the file (``RegistryBusyError``), the disk is full (``StorageError``), or the file
is damaged (``RegistryCorruptError``, which says how to rebuild it from the event logs). A missing
registry in a workspace that has jobs is rebuilt from their event logs, never recreated empty.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import duckdb

from saekit._version import __version__
from saekit.config import settings
from saekit.errors import RegistryBusyError, RegistryCorruptError, RegistryVersionError, StorageError
from saekit.registry._lock import RegistryLock
from saekit.registry.schema import MIGRATIONS, SCHEMA_VERSION
from saekit.workspace import Workspace

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FULL_DISK_BYTES = 16 * 2**20  # less free space than this beside the registry means the disk is full
# DuckDB errors that say the program used DuckDB wrongly (a bug in saekit), not that the file is bad
PROGRAMMING_ERRORS = (duckdb.ConstraintException, duckdb.BinderException, duckdb.ParserException,
                      duckdb.CatalogException, duckdb.NotImplementedException)


class RegistryRebuiltWarning(UserWarning):
    """registry.duckdb was missing and has been rebuilt from the workspace's event logs."""


class Tx:
    """One open transaction: ``rows`` returns dicts, ``execute`` returns DuckDB's cursor."""

    def __init__(self, con: "duckdb.DuckDBPyConnection"):
        self._con = con

    def execute(self, sql: str, params: Any = None):
        return self._con.execute(sql, params) if params is not None else self._con.execute(sql)

    def rows(self, sql: str, params: Any = None) -> list[dict]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, values)) for values in cur.fetchall()]

    def one(self, sql: str, params: Any = None) -> dict | None:
        found = self.rows(sql, params)
        return found[0] if found else None


# -- classifying failures ------------------------------------------------------------------------------

def _held_by_another_program(path) -> bool:
    """Whether another process holds a DuckDB lock on the file (DuckDB locks it with fcntl)."""
    if fcntl is None or not os.path.exists(path):  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(fd)


def _disk_full(path) -> bool:
    try:
        return shutil.disk_usage(os.path.dirname(path)).free < FULL_DISK_BYTES
    except OSError:
        return False


def classify(ws: Workspace, exc: BaseException):
    """The saekit error that a DuckDB (or OS) failure on the registry stands for."""
    path = str(ws.registry_path)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, duckdb.IOException) and _held_by_another_program(path):
        return RegistryBusyError(f"registry {path!r} is held open by another program ({first}); close other "
                                 "DuckDB sessions on it (saekit never keeps it open)")
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or _disk_full(path):
        return StorageError(f"the disk holding the registry {path!r} is full ({first})",
                            suggestion="free disk space there; what the jobs did is in their event logs and is "
                                       "recorded when the registry can be written again")
    return RegistryCorruptError(
        f"registry {path!r} cannot be read as a DuckDB database ({type(exc).__name__}: {first}); it was left "
        "untouched", suggestion="`saekit gc --rebuild` moves it aside and rebuilds the job catalog from the "
                                "event logs (templates, kept only there, are lost), or restore it from a backup")


def _connect(ws: Workspace, *, read_only: bool) -> "duckdb.DuckDBPyConnection":
    try:
        return duckdb.connect(str(ws.registry_path), read_only=read_only, config={"threads": 1})
    except duckdb.Error as exc:
        raise classify(ws, exc) from exc


def _version(con: "duckdb.DuckDBPyConnection", ws: Workspace) -> int:
    try:
        row = con.execute("SELECT value FROM saekit_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:  # a new, empty database
        return 0
    except PROGRAMMING_ERRORS:
        raise
    except duckdb.Error as exc:  # the file is damaged past its header (e.g. truncated)
        raise classify(ws, exc) from exc
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        written_by = con.execute("SELECT value FROM saekit_meta WHERE key = 'written_by'").fetchone()
        raise RegistryVersionError(
            f"registry {str(ws.registry_path)!r} has schema version {version}, newer than this saekit's "
            f"{SCHEMA_VERSION} (it was written by saekit {written_by[0] if written_by else '?'}); "
            f"upgrade saekit (this is {__version__}) to use it; the file was not changed"
        )
    return version


def _migrate(con: "duckdb.DuckDBPyConnection", ws: Workspace) -> None:
    version = _version(con, ws)
    if version == SCHEMA_VERSION:
        return
    con.begin()
    try:
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                con.execute(sql)
        con.execute(
            "INSERT OR REPLACE INTO saekit_meta VALUES ('schema_version', ?), ('written_by', ?)",
            [str(SCHEMA_VERSION), __version__],
        )
        con.commit()
    except PROGRAMMING_ERRORS:
        _rollback(con)
        raise
    except duckdb.Error as exc:
        _rollback(con)
        raise classify(ws, exc) from exc
    except BaseException:
        _rollback(con)
        raise


def _rollback(con) -> None:
    try:
        con.rollback()
    except duckdb.Error:  # the transaction is gone already (a failed commit): the error that caused it counts
        pass


# -- creating the file ---------------------------------------------------------------------------------

def _has_event_logs(ws: Workspace) -> bool:
    jobs = ws.path / "jobs"
    return jobs.is_dir() and any((d / "events.jsonl").exists() for d in jobs.iterdir())


def _create(ws: Workspace) -> None:
    """Make registry.duckdb (under the exclusive lock): empty in a new workspace, rebuilt from the event
    logs in one that has jobs."""
    from saekit.registry.rebuild import rebuild_into

    con = _connect(ws, read_only=False)
    try:
        _migrate(con, ws)
        if _has_event_logs(ws):
            report = rebuild_into(con, ws)
            warnings.warn(f"{ws.registry_path} was missing; rebuilt it from the event logs: {report}",
                          RegistryRebuiltWarning, stacklevel=4)
    finally:
        con.close()


def rebuild_registry(ws: Workspace) -> str:
    """Move registry.duckdb aside (as ``registry.duckdb.damaged-<time>``, with its WAL) and rebuild the job
    catalog from the event logs; returns what was rebuilt (``saekit gc --rebuild``)."""
    from saekit.registry.rebuild import rebuild_into

    ws.dir()
    with RegistryLock(ws.registry_lock_path, write=True, timeout=settings().lock_timeout):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in (ws.registry_path, ws.registry_path.with_name(ws.registry_path.name + ".wal")):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.damaged-{stamp}"))
        con = _connect(ws, read_only=False)
        try:
            _migrate(con, ws)
            return rebuild_into(con, ws)
        finally:
            con.close()


def _ensure_current(ws: Workspace) -> None:
    """Create or migrate the registry (under the exclusive lock)."""
    if not ws.registry_path.exists():
        _create(ws)
        return
    con = _connect(ws, read_only=False)
    try:
        _migrate(con, ws)
    finally:
        con.close()


@contextmanager
def _run(ws: Workspace, con) -> Iterator[Tx]:
    """One transaction on ``con``; DuckDB failures leave as saekit errors, the first one counts."""
    try:
        con.begin()
        try:
            yield Tx(con)
            con.commit()
        except BaseException:
            _rollback(con)
            raise
    except PROGRAMMING_ERRORS:
        raise
    except duckdb.Error as exc:
        raise classify(ws, exc) from exc


@contextmanager
def transaction(ws: Workspace, *, write: bool = False) -> Iterator[Tx]:
    """Hold the registry lock and one open transaction for the ``with`` block, then close everything.
    Reading works in a workspace this process cannot write (a read-only copy, someone else's folder)."""
    if write or not ws.path.is_dir():
        ws.dir()
    timeout = settings().lock_timeout
    for _ in range(2):
        with RegistryLock(ws.registry_lock_path, write=write, timeout=timeout):
            if write and not ws.registry_path.exists():
                _create(ws)
            if ws.registry_path.exists():
                con = _connect(ws, read_only=not write)
                try:
                    if write:
                        _migrate(con, ws)
                    if write or _version(con, ws) >= SCHEMA_VERSION:  # else: migrate below, then read again
                        with _run(ws, con) as tx:
                            yield tx
                        return
                finally:
                    con.close()
            elif ws.path.is_dir() and not os.access(ws.path, os.W_OK):
                with _nothing_recorded(ws) as tx:  # a read-only workspace without a registry
                    yield tx
                return
        # a read found no registry, or an older schema: create or migrate it, then read again
        ws.dir()
        with RegistryLock(ws.registry_lock_path, write=True, timeout=timeout):
            _ensure_current(ws)
    raise RuntimeError("unreachable: the registry was migrated but still reads as old")  # pragma: no cover


@contextmanager
def _nothing_recorded(ws: Workspace) -> Iterator[Tx]:
    """An empty registry in memory, for reading a workspace that has none and cannot be given one."""
    con = duckdb.connect(":memory:")
    try:
        _migrate(con, ws)
        with _run(ws, con) as tx:
            yield tx
    finally:
        con.close()
