"""The job's event log, ``jobs/<id>/events.jsonl``: one writer appends whole JSON lines, readers tail.

The logs are the truth of a workspace; the registry is their index (and is rebuilt from them when it is
lost). Records (``t`` is the type; ``time`` is epoch seconds):

- ``submit``: an attempt was queued (``attempt``, ``kind``, ``key``, ``name``, ``spec``, ``entry``,
  ``created_at``, ``launcher``): what the registry row is rebuilt from. The submitting process writes it,
  before any worker of that attempt exists.
- ``start``: an attempt began (``attempt``, ``pid``, ``host``)
- ``progress``: ``done``, ``total``, ``unit``, ``phase``
- ``metric``: ``step`` and ``values`` (name -> number)
- ``event``: ``level``, ``message`` and optional ``data``
- ``heartbeat``: the worker is alive; ``resources`` samples of its own process
- ``commit``: a resume point (``state``) that is safely on disk
- ``end``: the attempt ended (``attempt``, ``status``, ``result``, ``error_type``, ``error_message``, ``suggestion``)

A reader consumes only whole lines, so it never sees a half-written record and never blocks the writer.
A line cut by a failed write (a full disk) is taken back (the log is truncated to where it was), or where
that fails too, ended by the next write, so it loses only itself; readers skip it, with one warning per log.
Credentials in the messages of ``event`` and ``end`` records are masked (``saekit._secrets``) before they are
written.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterable

from saekit._secrets import mask_data
from saekit.errors import StorageError

log = logging.getLogger("saekit.jobs")

MASKED_RECORDS = ("event", "end")
MASKED_FIELDS = ("message", "data", "error_message", "suggestion")
_WARNED: set[str] = set()  # logs whose malformed lines were reported once already


def events_path(ws, job_id: str) -> Path:
    return ws.job_dir(job_id) / "events.jsonl"


def _encode(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


class EventWriter:
    """Appends records to one event log, each as one whole line (a short write is finished, not dropped)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            full = exc.errno == errno.ENOSPC
            raise StorageError(f"cannot append to the event log {str(self.path)!r}: {exc.strerror or exc}",
                               suggestion="free disk space" if full else "make the workspace writable (or choose "
                                          "another with sk.set_workspace)") from exc
        self._torn = False  # the last write stopped inside a line: the next one ends that line first

    def write(self, record: dict, *, durable: bool = False) -> None:
        """Append ``record``; ``StorageError`` when the disk is full (what was appended before stays whole)."""
        if "time" not in record:
            record = {**record, "time": time.time()}
        if record.get("t") in MASKED_RECORDS:
            record = {k: (mask_data(v) if k in MASKED_FIELDS else v) for k, v in record.items()}
        if self._fd is None:
            raise ValueError(f"event log {str(self.path)!r} is closed")
        data = memoryview((b"\n" if self._torn else b"") + _encode(record))
        written = 0
        try:
            before = os.fstat(self._fd).st_size
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if durable:
                os.fsync(self._fd)
        except OSError as exc:
            if 0 < written < len(data):  # a line cut short: take it back, or end it with the next write
                try:
                    os.ftruncate(self._fd, before)
                except OSError:
                    self._torn = True
            if exc.errno == errno.ENOSPC:
                raise StorageError(f"the disk holding the event log {str(self.path)!r} is full",
                                   suggestion="free disk space; the job records its end once there is room") from exc
            raise StorageError(f"cannot append to the event log {str(self.path)!r}: {exc.strerror or exc}",
                               suggestion="make the workspace writable (or choose another with sk.set_workspace)") from exc
        self._torn = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(chunk: bytes, path: Path) -> list[dict]:
    records = []
    for line in chunk.split(b"\n"):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif str(path) not in _WARNED:
            _WARNED.add(str(path))
            log.warning("skipping a malformed line in %s (a write cut short, e.g. by a full disk): %r", path, line[:200])
    return records


class EventTail:
    """Reads an event log incrementally: each ``read()`` returns the whole records added since the last.

    When nothing changed a call costs one ``stat``.
    """

    def __init__(self, path: Path, *, from_end: bool = False):
        self.path = Path(path)
        self.offset = 0
        self._inode: int | None = None
        if from_end:
            try:
                st = os.stat(self.path)
                self.offset, self._inode = st.st_size, st.st_ino
            except FileNotFoundError:
                pass

    def read(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if st.st_ino != self._inode or st.st_size < self.offset:  # a new file (the job was deleted and re-made)
            self._inode, self.offset = st.st_ino, 0
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return _parse(data[: end + 1], self.path)


def read_all(path: Path) -> list[dict]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return _parse(data[: data.rfind(b"\n") + 1], Path(path))


def read_last(path: Path, max_bytes: int = 65536) -> list[dict]:
    """The whole records within the last ``max_bytes`` of the log (cheap, for listings and checks)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    if start > 0:  # drop the first, probably partial, line
        data = data[data.find(b"\n") + 1:]
    return _parse(data[: data.rfind(b"\n") + 1], Path(path))


class LogState:
    """The state a job's event log describes, folded from its records in order."""

    def __init__(self) -> None:
        self.attempt = 0
        self.submit: dict | None = None  # the latest attempt's submission (kind, key, spec, ...)
        self.start: dict | None = None
        self.progress: dict | None = None
        self.last_event: dict | None = None
        self.end: dict | None = None
        self.commit: dict | None = None  # the latest resume point, across attempts
        self.last_time: float | None = None
        self.resources: dict | None = None
        self.metrics: dict[tuple[int, str], float] = {}
        self.n_records = 0

    def update(self, records: Iterable[dict]) -> "LogState":
        for record in records:
            self.n_records += 1
            kind = record.get("t")
            self.last_time = record.get("time", self.last_time)
            if kind == "progress":
                self.progress = record
            elif kind == "metric":
                step = int(record.get("step", 0))
                for name, value in record.get("values", {}).items():
                    self.metrics[(step, name)] = value
            elif kind == "event":
                self.last_event = record
            elif kind == "resources":
                self.resources = record
            elif kind == "commit":
                self.commit = record.get("state")
            elif kind == "submit":
                self.submit = record
            elif kind == "start":
                self.attempt = int(record.get("attempt", self.attempt + 1))
                self.start, self.end, self.progress = record, None, None
            elif kind == "end":
                self.end = record
        return self

    def percent(self) -> float | None:
        """Progress of the current attempt in percent (0-100), or None when it has no total yet."""
        if self.end is not None and self.end.get("status") == "completed":
            return 100.0
        p = self.progress
        if not p or not p.get("total"):
            return None
        value = 100.0 * float(p.get("done") or 0) / float(p["total"])
        return max(0.0, min(100.0, value)) if math.isfinite(value) else None

    def last_percent(self) -> float | None:
        """Where the current attempt's progress stood last (also after it failed or was cancelled)."""
        p = self.progress
        if not p or not p.get("total"):
            return None
        value = 100.0 * float(p.get("done") or 0) / float(p["total"])
        return max(0.0, min(100.0, value)) if math.isfinite(value) else None

    def metric_rows(self) -> list[tuple[int, str, float]]:
        return [(step, name, value) for (step, name), value in sorted(self.metrics.items())]
