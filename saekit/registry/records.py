"""Typed job records: what the registry hands out (``JobRecord``, with a ``Status``), never raw rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, overload


class Status(str, Enum):
    """A job's state: ``queued -> running -> completed | failed | cancelled`` (``completed`` is final).
    A ``Status`` is a ``str``, so ``record.status == "running"`` holds."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)

    @property
    def final(self) -> bool:
        return not self.active


@dataclass(frozen=True)
class JobRecord:
    """One job's row. ``spec`` and ``result`` are JSON text, None in listings (``spec_dict``/``result_value``
    parse them); timestamps are naive UTC."""

    id: str
    kind: str
    status: Status
    attempt: int = 1
    name: str | None = None
    key: str | None = None
    spec: str | None = None
    result: str | None = None
    entry: str | None = None  # the module that registered the kind when it was submitted (for people to read)
    error_type: str | None = None
    error_message: str | None = None
    suggestion: str | None = None
    launcher: str | None = None
    worker_pid: int | None = None
    worker_host: str | None = None
    cancel_requested: bool = False
    created_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    traceback: str | None = None  # where a failed attempt failed: the worker's traceback (credentials masked)

    @overload
    @classmethod
    def from_row(cls, row: dict) -> "JobRecord": ...

    @overload
    @classmethod
    def from_row(cls, row: dict | None) -> "JobRecord | None": ...

    @classmethod
    def from_row(cls, row: dict | None) -> "JobRecord | None":
        if row is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values["status"] = Status(values["status"])
        values["cancel_requested"] = bool(values.get("cancel_requested") or False)
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def spec_dict(self) -> dict:
        return json.loads(self.spec) if self.spec is not None else {}

    @property
    def result_value(self) -> Any:
        return json.loads(self.result) if self.result is not None else None

    def replace(self, **changes) -> "JobRecord":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (the status as its string), spec and result parsed."""
        out = dataclasses.asdict(self)
        out["status"] = str(self.status)
        out["spec"], out["result"] = (self.spec_dict if self.spec is not None else None), self.result_value
        return out
