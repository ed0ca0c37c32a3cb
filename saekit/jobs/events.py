"""The job's event log, ``jobs/<id>/events.jsonl``: one writer appends whole JSON lines, readers tail.

Records (``t`` is the type; ``time`` is epoch seconds):

- ``start``: an attempt began (``attempt``, ``pid``, ``host``)
- ``progress``: ``done``, ``total``, ``unit``, ``phase``
- ``metric``: ``step`` and ``values`` (name -> number)
- ``event``: ``level``, ``message`` and optional ``data``
- ``heartbeat``: the worker is alive; ``resources`` samples of its own process
- ``commit``: a resume point (``state``) that is safely on disk
- ``end``: the attempt ended (``attempt``, ``status``, ``result``, ``error_type``, ``error_message``, ``suggestion``)

A reader consumes only whole lines, so it never sees a half-written record and never blocks the writer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def _encode(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


class EventWriter:
    """Appends records to one event log. Each record is a single ``write`` of a whole line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict, *, durable: bool = False) -> None:
        if "time" not in record:
            record = {**record, "time": time.time()}
        if self._fd is None:
            raise ValueError(f"event log {str(self.path)!r} is closed")
        os.write(self._fd, _encode(record))
        if durable:
            os.fsync(self._fd)

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
            records.append(json.loads(line))
        except ValueError:
            log.warning("skipping a malformed line in %s: %r", path, line[:200])
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

    def metric_rows(self) -> list[tuple[int, str, float]]:
        return [(step, name, value) for (step, name), value in sorted(self.metrics.items())]
