"""One asyncio task on the kernel's event loop that keeps every live widget current.

Widgets never touch threads: the poller runs on the loop the kernel runs cells on (background threads
that set widget traits broke under ipykernel 7.0). Each tick it asks every registered widget to
``poll()``; a widget returns False once there is nothing more to follow (its job ended, it was
closed), and the task ends when no widget is left. Jobs are tailed once however many widgets show
them (``JobFeed``): one ``stat`` per job per tick when nothing changed, and a lease check every few
seconds so a worker killed without a word is seen as gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque

from saekit.config import config
from saekit.jobs.events import EventTail, LogState
from saekit.jobs.lease import lease_is_held
from saekit.jobs.lifecycle import events_path
from saekit.workspace import Workspace

log = logging.getLogger("saekit.widgets")

RESOURCE_SAMPLES = 240  # a job's resource history kept for its widgets (20 minutes at one per 5 s)


class JobFeed:
    """A job's event log folded into a ``LogState``, read incrementally, shared by its widgets."""

    def __init__(self, workspace: Workspace, job_id: str):
        self.workspace, self.job_id = workspace, job_id
        self.tail = EventTail(events_path(workspace, job_id))
        self.state = LogState()
        self.records: list[dict] = []  # the records of the last read
        self.version = 0  # counts reads that brought something new
        self.metrics_version = 0  # counts reads that brought metrics
        self._charts: tuple[int, dict] | None = None
        self.first_progress: dict | None = None  # the current phase's first progress record (for rates)
        self.step_times: dict[int, float] = {}  # when each metric step was logged
        self.resources: deque = deque(maxlen=RESOURCE_SAMPLES)
        self._last_read = -1.0
        self._last_liveness = time.monotonic()

    def read(self, now: float | None = None) -> bool:
        """Read what was appended (once per tick for all widgets); True when something new came."""
        now = time.monotonic() if now is None else now
        if self._last_read == now:
            return bool(self.records)
        self._last_read = now
        self.records = self.tail.read()
        for record in self.records:
            kind = record.get("t")
            if kind == "start":
                self.first_progress = None
            elif kind == "progress" and (self.first_progress is None
                                         or record.get("phase") != self.first_progress.get("phase")):
                self.first_progress = record
            elif kind == "metric" and record.get("time") is not None:
                self.step_times[int(record.get("step", 0))] = float(record["time"])
            elif kind == "resources":
                self.resources.append(record)
        if self.records:
            self.state.update(self.records)
            self.version += 1
            if any(r.get("t") == "metric" for r in self.records):
                self.metrics_version += 1
        return bool(self.records)

    def charts(self, build) -> dict:
        """``build(state)`` computed once per new batch of metrics, shared by the job's widgets."""
        if self._charts is None or self._charts[0] != self.metrics_version:
            self._charts = (self.metrics_version, build(self.state))
        return self._charts[1]

    def needs_registry(self, now: float | None = None) -> bool:
        """Every few seconds while the log shows no end: True when the registry must say what happened -
        the job has not started (it may have been cancelled while queued) or its worker holds no lease
        (it died without a word)."""
        now = time.monotonic() if now is None else now
        if self.state.end is not None or now - self._last_liveness < config.get("widget_liveness"):
            return False
        self._last_liveness = now
        return self.state.start is None or not lease_is_held(self.workspace.job_dir(self.job_id))


class Poller:
    """Polls registered widgets from one task on the kernel's event loop (``tick()`` runs one round by hand).

    A widget has ``poll(now) -> bool`` (False: stop polling it) and ``followed()``, the (workspace path,
    job id) pairs whose feeds it reads."""

    def __init__(self, interval: float | None = None):
        self.interval = interval if interval is not None else config.get("widget_tick")
        self._widgets: weakref.WeakSet = weakref.WeakSet()
        self._feeds: dict[tuple[str, str], JobFeed] = {}
        self._task: asyncio.Task | None = None
        self.ticks = 0

    # -- feeds -----------------------------------------------------------------------------------------
    def feed(self, workspace: Workspace, job_id: str) -> JobFeed:
        key = (str(workspace.path), job_id)
        if key not in self._feeds:
            self._feeds[key] = JobFeed(workspace, job_id)
        return self._feeds[key]

    # -- widgets ---------------------------------------------------------------------------------------
    def add(self, widget) -> None:
        self._widgets.add(widget)
        self._ensure_task()

    def discard(self, widget) -> None:
        self._widgets.discard(widget)

    @property
    def widgets(self) -> list:
        return list(self._widgets)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def tick(self) -> None:
        """One round: every widget polls; those that are done (or failed to poll) are dropped."""
        self.ticks += 1
        now = time.monotonic()
        for widget in list(self._widgets):
            try:
                keep = widget.poll(now)
            except Exception:
                log.exception("a widget failed to update; it stops following")
                keep = False
            if not keep:
                self._widgets.discard(widget)
        live = set().union(*(w.followed() for w in self._widgets))
        for key in [k for k in self._feeds if k not in live]:  # feeds no widget follows any more
            del self._feeds[key]

    async def _run(self) -> None:
        try:
            while len(self._widgets):
                self.tick()
                await asyncio.sleep(self.interval)
        finally:
            self._task = None

    def _ensure_task(self) -> None:
        if self.running:
            return
        loop = _kernel_loop()
        if loop is None:
            return  # no event loop (a script): widgets show their state as of now, tick() updates them
        self._task = loop.create_task(self._run())


def _kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop the kernel runs cells on, when there is one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        from tornado.ioloop import IOLoop

        current = IOLoop.current(instance=False)
        return getattr(current, "asyncio_loop", None) if current is not None else None
    except ImportError:
        return None


POLLER = Poller()
