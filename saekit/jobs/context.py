"""``JobContext``: a running job's voice (progress, metrics, events), its cancel check and its resume point."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from saekit.config import config
from saekit.errors import JobCancelled
from saekit.jobs.events import EventWriter
from saekit.workspace import Workspace

log = logging.getLogger("saekit.jobs")



class JobContext:
    """Handed to a job kind's function as ``ctx``.

    - ``ctx.progress(done, total, unit=..., phase=...)`` also checks for cancellation;
    - ``ctx.metrics(step, loss=..., ...)``, ``ctx.event("message", level="warning", **data)``;
    - ``ctx.commit(state)`` records a resume point once the work it describes is safely on disk;
      a later attempt of the same job finds it as ``ctx.resume_point``;
    - ``ctx.check_cancelled()`` raises ``JobCancelled`` once someone cancelled the job (a ``stat``);
    - ``ctx.after_end(fn)`` defers a cleanup until the job's end is recorded.

    On torchrun ranks other than 0 the voice is silent: only rank 0 writes the event log.
    """

    def __init__(self, workspace: Workspace, job_id: str, attempt: int, spec: Any, *,
                 writer: EventWriter | None, resume_point: Any = None, rank: int = 0, world_size: int = 1,
                 listeners: tuple[Callable[[dict], None], ...] = ()):
        self.workspace = workspace
        self.job_id = job_id
        self.attempt = attempt
        self.spec = spec
        self.resume_point = resume_point
        self.rank = rank
        self.world_size = world_size
        self.dir: Path = workspace.job_dir(job_id)
        self._writer = writer
        self._listeners = listeners
        self._cancel_path = self.dir / "cancel"
        self._last_progress: tuple[float, str | None, float | None] = (0.0, None, None)  # time, phase, total
        self._progress_interval = config.get("progress_interval")
        self.cleanups: list[Callable[[], None]] = []

    def _write(self, record: dict, durable: bool = False) -> None:
        if self._writer is None:
            return
        record.setdefault("time", time.time())
        self._writer.write(record, durable=durable)
        for listener in self._listeners:
            listener(record)

    def progress(self, done: float, total: float | None = None, *, unit: str | None = None,
                 phase: str | None = None, check_cancel: bool = True, **extra: float) -> None:
        """Report ``done`` of ``total`` units (``extra`` numbers ride along, e.g. ``tokens=``);
        raises ``JobCancelled`` if the job was cancelled (unless ``check_cancel=False``: a job that agrees on
        cancelling across ranks checks ``ctx.cancelled`` itself)."""
        if check_cancel:
            self.check_cancelled()
        now = time.monotonic()
        last_time, last_phase, last_total = self._last_progress
        final = total is not None and done >= total
        if now - last_time < self._progress_interval and phase == last_phase and total == last_total and not final:
            return
        self._last_progress = (now, phase, total)
        self._write({"t": "progress", "done": done, "total": total, "unit": unit, "phase": phase, **extra})

    def metrics(self, step: int, **values: float) -> None:
        """Record metric values at a step (compacted into the registry when the job ends)."""
        self._write({"t": "metric", "step": int(step), "values": {k: float(v) for k, v in values.items()}})

    def event(self, message: str, *, level: str = "info", **data: Any) -> None:
        """Record a human-readable event (shown in widgets, ``job.events()`` and ``saekit show``)."""
        getattr(log, level if level in ("debug", "info", "warning", "error") else "info")("%s: %s", self.job_id, message)
        record: dict[str, Any] = {"t": "event", "level": level, "message": message}
        if data:
            record["data"] = data
        self._write(record)

    def commit(self, state: Any) -> None:
        """Record a resume point (JSON). Call it only after the work it describes is durable."""
        self.resume_point = state
        self._write({"t": "commit", "state": state}, durable=True)

    def after_end(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` once the job's successful end is recorded (e.g. removing its checkpoints): until
        then every file a resume may need stays, so a kill at any instant leaves the job resumable."""
        self.cleanups.append(cleanup)

    @property
    def cancelled(self) -> bool:
        return os.path.exists(self._cancel_path)

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")
