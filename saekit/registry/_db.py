"""The only code that opens registry.duckdb.

Every access takes the registry lock (shared to read, exclusive to write), opens the file (read-only
for reads), runs one transaction and closes it. No connection outlives a call and nothing retries on
DuckDB's own lock errors: the OS lock is what serialises processes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import duckdb

from saekit._version import __version__
from saekit.config import settings
from saekit.errors import RegistryBusyError, RegistryCorruptError, RegistryVersionError
from saekit.registry._lock import RegistryLock
from saekit.registry.schema import MIGRATIONS, SCHEMA_VERSION
from saekit.workspace import Workspace


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


def _connect(ws: Workspace, *, read_only: bool) -> "duckdb.DuckDBPyConnection":
    path = ws.registry_path
    try:
        return duckdb.connect(str(path), read_only=read_only, config={"threads": 1})
    except duckdb.Error as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise RegistryBusyError(
                f"registry {str(path)!r} is held open by another program ({text.splitlines()[0]}); "
                "close other DuckDB sessions on it (saekit never keeps it open)"
            ) from exc
        raise RegistryCorruptError(
            f"registry {str(path)!r} cannot be opened as a DuckDB database ({text.splitlines()[0]}); "
            "it was left untouched: move it aside to start a new registry, or restore it from a backup"
        ) from exc


def _version(con: "duckdb.DuckDBPyConnection", ws: Workspace) -> int:
    try:
        row = con.execute("SELECT value FROM saekit_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:  # a new, empty database
        return 0
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
    except BaseException:
        con.rollback()
        raise


@contextmanager
def transaction(ws: Workspace, *, write: bool = False) -> Iterator[Tx]:
    """Hold the registry lock and one open transaction for the ``with`` block, then close everything."""
    ws.dir()
    timeout = settings().lock_timeout
    for _ in range(2):
        with RegistryLock(ws.registry_lock_path, write=write, timeout=timeout):
            if not write and not ws.registry_path.exists():
                pass  # nothing to read yet: create it under the exclusive lock below
            else:
                con = _connect(ws, read_only=not write)
                try:
                    if write:
                        _migrate(con, ws)
                    elif _version(con, ws) < SCHEMA_VERSION:
                        con.close()
                        con = None
                    if con is not None:
                        con.begin()
                        try:
                            yield Tx(con)
                            con.commit()
                        except BaseException:
                            con.rollback()
                            raise
                        return
                finally:
                    if con is not None:
                        con.close()
        # a read found no registry, or an older schema: create or migrate it, then read again
        with RegistryLock(ws.registry_lock_path, write=True, timeout=timeout):
            con = _connect(ws, read_only=False)
            try:
                _migrate(con, ws)
            finally:
                con.close()
    raise RuntimeError("unreachable: the registry was migrated but still reads as old")  # pragma: no cover
