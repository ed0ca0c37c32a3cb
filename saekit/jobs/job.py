"""``Job``: a handle on one job of a workspace, re-creatable from its id in any process."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import secrets
import time
import warnings
from typing import Any

from saekit import registry
from saekit._fs import remove
from saekit._steps import in_kernel
from saekit._recent import recent, remember
from saekit.errors import ConfigError, JobFailedError, JobNotFoundError, JobStateError, JobTimeoutError, SaekitError
from saekit.eventlog import EventTail, EventWriter, LogState, read_all
from saekit.jobs.kinds import get_kind
from saekit.jobs.launchers import LAUNCHERS, check_nodes, run_here, start_worker
from saekit.jobs.lifecycle import cancel_path, epoch, events_path, refresh
from saekit.jobs.spec import canonical_json, normalize, spec_key
from saekit.jobs.textbar import TextProgress, render
from saekit.workspace import JOB_ID, Workspace, as_workspace

log = logging.getLogger("saekit.jobs")


class Job:
    """A job of a workspace: ``.id``, ``.kind``, ``.status``, ``.progress`` (percent), ``.metrics()``,
    ``.events()``, ``.wait()``, ``.result()``, ``.cancel()``, ``.resume()``, ``.delete()``.

    Every property reads the registry and the job's event log, so any number of handles, in any
    number of processes, see the same job.
    """

    def __init__(self, job_id: str, workspace: Workspace | str | None = None, *, _row: registry.JobRecord | None = None):
        """Attach to job ``job_id``; ``_row`` (its record, perhaps from a listing) saves the first read."""
        self.workspace = as_workspace(workspace)
        self.id = job_id
        self._row = _row
        self._tail = EventTail(events_path(self.workspace, job_id))
        self._log = LogState()
        if _row is None:
            self._load()

    # -- state -----------------------------------------------------------------------------------
    def _load(self) -> registry.JobRecord:
        row = registry.get_job(self.workspace, self.id)
        if row is None:
            raise _not_found(self.workspace, self.id)
        self._row = refresh(self.workspace, row)
        return self._row

    def _at_hand(self) -> registry.JobRecord:
        """The record last read (read now when there is none)."""
        return self._row if self._row is not None else self._load()

    def _sync_log(self) -> LogState:
        self._log.update(self._tail.read())
        return self._log

    def info(self) -> dict:
        """The job's registry row as plain values (spec and result parsed from JSON), after a fresh read."""
        return self._load().to_dict()

    def record(self) -> registry.JobRecord:
        """The job's registry record (``JobRecord``), after a fresh read."""
        return self._load()

    def _field(self, name: str):
        """A column that never changes (kind, name, spec): from the record at hand, else a fresh read."""
        if self._row is None or (name == "spec" and self._row.spec is None):  # listings carry no spec
            self._load()
        return getattr(self._row, name)

    @property
    def kind(self) -> str:
        return self._field("kind")

    @property
    def name(self) -> str | None:
        return self._field("name")

    @property
    def status(self) -> registry.Status:
        return self._load().status

    @property
    def attempt(self) -> int:
        return self._load().attempt

    @property
    def spec(self) -> dict:
        return json.loads(self._field("spec"))

    @property
    def progress(self) -> float | None:
        """Percent done (0-100) of the current attempt; 100 once completed; None before a total is known."""
        if self._load().status == "completed":
            return 100.0
        return self._sync_log().percent()

    @property
    def phase(self) -> str | None:
        return (self._sync_log().progress or {}).get("phase")

    def events(self, *, all_records: bool = False) -> list[dict]:
        """The job's events (messages such as warnings), oldest first; ``all_records=True`` returns the
        whole event log (progress, metrics, heartbeats, starts and ends too)."""
        records = read_all(events_path(self.workspace, self.id))
        return records if all_records else [r for r in records if r.get("t") == "event"]

    def metrics(self):
        """Metrics as a pandas DataFrame: one row per step, one column per metric."""
        import pandas as pd

        found = registry.metric_table(self.workspace, self.id)  # a finished job: one registry read
        if found is None:
            raise _not_found(self.workspace, self.id)
        frame = found[1]
        if frame is None or frame.empty:  # a running job, or one whose metrics are only in its log
            row = self._load()
            state = self._sync_log() if row.active else LogState().update(read_all(events_path(self.workspace, self.id)))
            rows = state.metric_rows()
            if not rows:
                return pd.DataFrame(index=pd.Index([], name="step"))
            frame = pd.DataFrame(rows, columns=["step", "name", "value"])
            return frame.pivot(index="step", columns="name", values="value").rename_axis(columns=None)
        return frame

    # -- waiting and results -----------------------------------------------------------------------
    def wait(self, timeout: float | None = None, *, progress: bool | None = None, poll: float = 0.05) -> "Job":
        """Block until the job ends (completed, failed or cancelled); ``JobTimeoutError`` after ``timeout`` s.

        While it waits it shows the job's progress (``progress=False`` turns that off): in Jupyter the live
        widget, on a terminal one updating line, written to a file one line every few seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        check_every, last_check = 1.0, 0.0
        show = self._progress_view() if progress is not False else None
        try:
            while True:
                records = self._tail_records()
                if show is not None:
                    show(records)
                ended = any(r.get("t") == "end" for r in records)
                now = time.monotonic()
                if ended or now - last_check >= check_every:
                    last_check = now
                    if self._load().status.final:
                        if show is not None and not ended:  # the end is in the log before the registry: show it
                            show(self._tail_records())
                        return self
                if deadline is not None and now >= deadline:
                    raise JobTimeoutError(
                        f"job {self.id} is still {self._at_hand().status} after {timeout} s; "
                        "wait longer, or job.cancel()", suggestion=None,
                    )
                time.sleep(poll)
        finally:
            if show is not None:
                show([], final=True)

    def _progress_view(self):
        """``show(new_records, final=False)``: the live widget in a kernel (polled from this loop: the kernel is
        busy here, so the poller's task cannot run), else a text bar; None when the job has ended already."""
        if self._load().status.final:
            return None
        if in_kernel():
            from IPython.display import display

            widget = self.widget()
            display(widget)
            last = [0.0]

            def show(records, final=False):
                if final or time.monotonic() - last[0] >= 0.5:
                    last[0] = time.monotonic()
                    widget.poll()
            return show
        bar = TextProgress(self.id)
        for record in read_all(events_path(self.workspace, self.id)):  # the history so far, then live
            bar.state.update([record])

        def show(records, final=False):
            for record in records:
                bar.update(record)
        return show

    def _tail_records(self) -> list[dict]:
        records = self._tail.read()
        self._log.update(records)
        return records

    def result(self, timeout: float | None = None, *, progress: bool | None = None) -> Any:
        """Wait for the job, then return its result (a store, an SAE, ... per kind); raises
        ``JobFailedError`` if it failed or was cancelled."""
        row = self.wait(timeout, progress=progress)._at_hand()
        if row.status != "completed":
            if row.traceback is None and row.status == "failed":
                row = self._load()  # a listing's row carries no traceback
            error = JobFailedError(
                f"job {self.id} ({row.kind}) {row.status}: [{row.error_type}] {row.error_message}"
                + (f"\n  raised at {where}" if (where := _where(row.traceback)) else ""),
                error_type=row.error_type or "unknown", suggestion=row.suggestion, job_id=self.id,
                traceback=row.traceback,
            )
            raise error from (WorkerTraceback(row.traceback) if row.traceback else None)
        kind = get_kind(row.kind)
        value = row.result_value
        return kind.load_result(self.workspace, value) if kind.load_result else value

    # -- control -------------------------------------------------------------------------------------
    def cancel(self) -> "Job":
        """Ask the job to stop: a queued job is cancelled at once, a running one within a batch or two.
        Works from any process; returns at once (``.wait()`` to see it end)."""
        path = cancel_path(self.workspace, self.id)
        self.workspace.dir("jobs", self.id)
        path.touch()
        row = registry.request_cancel(self.workspace, self.id)
        if row is None:
            raise _not_found(self.workspace, self.id)
        self._row = row
        return self

    def resume(self, *, background: bool = True, launcher: str | None = None, nproc: int = 1, nnodes: int = 1,
               rdzv_endpoint: str | None = None, progress: bool = True) -> "Job":
        """Start a new attempt of a failed or cancelled job; it continues from its last resume point. An imported job
        whose outputs lie outside this workspace (a ``root`` URL) is refused: they belong to the workspace that
        made it, and a resume would write there."""
        launcher = _launcher(background, launcher)
        check_nodes(launcher, nnodes, rdzv_endpoint)
        self._refuse_foreign_outputs()
        row, requeued = registry.resume_job(self.workspace, self.id, launcher=launcher, worker_pid=os.getpid())
        if row is None:
            raise _not_found(self.workspace, self.id)
        self._row = row
        if requeued:
            _record_submission(self.workspace, row)
            _launch(self.workspace, row, launcher, nproc, progress, nnodes, rdzv_endpoint)
            self._load()
        return self

    def _outputs(self, row: registry.JobRecord, kind) -> tuple[list, list[str]]:
        """(the job's outputs this workspace may remove, those it may not): what an imported job names outside
        this workspace (a ``root`` URL) is a reference to data another workspace wrote."""
        from saekit.jobs.portable import is_imported

        outputs = list(kind.outputs(self.workspace, row)) if kind is not None and kind.outputs else []
        if not is_imported(self.workspace, self.id):
            return outputs, []
        return ([p for p in outputs if self.workspace.contains(p)],
                [str(p) for p in outputs if not self.workspace.contains(p)])

    def _refuse_foreign_outputs(self) -> None:
        from saekit.jobs.portable import is_imported

        if not is_imported(self.workspace, self.id):  # a stat: a job made here resumes without more reads
            return
        row = registry.get_job(self.workspace, self.id)
        if row is None or row.status == "completed":
            return  # refused below for what it is
        try:
            kind = get_kind(row.kind)
        except ConfigError:
            return
        outside = self._outputs(row, kind)[1]
        if outside:
            raise JobStateError(f"job {self.id} was imported and its outputs are at {', '.join(outside)}, which this "
                                "workspace did not write: a resume here would write there",
                                suggestion="resume it in the workspace that made it, or run it anew here (force=True, "
                                           "with a root of this workspace's)")

    def delete(self) -> None:
        """Remove the job's registry rows and its files (event log, worker log, outputs); refuses while it is active."""
        row = self._load()
        if row.active:
            raise JobStateError(f"job {self.id} is {row.status}; job.cancel() and job.wait() first, then delete it")
        if row.spec is None:
            row = registry.get_job(self.workspace, self.id) or row
        try:
            kind = get_kind(row.kind)
        except ConfigError as exc:  # a kind this process does not know: its outputs are unknown here
            log.warning("job %s: %s; its registry rows, event log and worker log are deleted, its outputs are not",
                        self.id, exc)
            kind = None
        ws = self.workspace
        outputs, kept = self._outputs(row, kind)
        own = [ws.job_dir(self.id), ws.log_path(self.id)] if JOB_ID.fullmatch(self.id) else []
        registry.delete_job(ws, self.id)
        for path in [*own, *outputs]:
            remove(path)
        if kept:
            warnings.warn(f"job {self.id} was imported: its rows and its files in this workspace are deleted; "
                          f"{', '.join(kept)} {'is' if len(kept) == 1 else 'are'} kept, a reference to data this "
                          "workspace did not write", stacklevel=2)

    # -- display ---------------------------------------------------------------------------------------
    def widget(self):
        """A live widget of this job (Jupyter): status, progress, rate and ETA, the latest event, the error
        and its suggestion, a Cancel button, and metric charts for training jobs. Any number of them, in
        any kernel, show the same job."""
        from saekit._provided import provided  # the display layer sits above jobs: found by name, when asked for

        return provided("job widget")(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        if in_kernel():
            return self.widget()._repr_mimebundle_(include=include, exclude=exclude)
        return {"text/plain": repr(self)}

    def _ipython_display_(self) -> None:
        """In a notebook, the live widget, displayed so that the output saved with the notebook follows the job
        to its end (``refresh_snapshot``); elsewhere, the text."""
        from IPython.display import display

        if in_kernel():
            display(self.widget())
        else:
            display({"text/plain": repr(self)}, raw=True)

    def __repr__(self) -> str:
        try:
            row = self._load()
        except JobNotFoundError:
            return f"<Job {self.id} (deleted)>"
        state = self._sync_log()
        text = f"<Job {self.id} {row.kind} {row.status}"
        if row.active or state.progress:
            text += f"  {render(state, status=str(row.status), width=20)}"
        if row.error_message:
            text += f"\n  {row.error_type}: {row.error_message.splitlines()[0]}"
        return text + ">"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.workspace == self.workspace

    def __hash__(self) -> int:
        return hash((self.id, self.workspace))


class WorkerTraceback(Exception):
    """The traceback of the process that ran a failed job, shown as the cause of its ``JobFailedError``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip() + "\n(in the job's worker; job.info()['traceback'] holds it)"


def _where(trace: str | None) -> str | None:
    """``file:line in function`` of the innermost frame of a traceback's text."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', trace or "")
    if not frames:
        return None
    path, line, function = frames[-1]
    if "/saekit/" in path:  # the package's own files, wherever it is installed
        path = "saekit/" + path.rsplit("/saekit/", 1)[-1]
    return f"{path}:{line} in {function}"


def _not_found(ws: Workspace, job_id: str) -> JobNotFoundError:
    ids = registry.job_ids(ws)
    close = [i for i in ids if i.startswith(job_id)] or difflib.get_close_matches(job_id, ids, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else "; `saekit jobs` (sk.jobs() in Python) lists them"
    return JobNotFoundError(f"no job {job_id!r} in workspace {str(ws.path)!r}{hint}",
                            suggestion="another workspace: sk.job(id, workspace=path) or sk.set_workspace(path)")


def _launcher(background: bool, launcher: str | None) -> str:
    launcher = launcher or ("background" if background else "inprocess")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r} is not one of {', '.join(LAUNCHERS)}")
    return launcher


def _launch(ws: Workspace, row: registry.JobRecord, launcher: str, nproc: int, progress: bool, nnodes: int = 1,
            rdzv_endpoint: str | None = None) -> None:
    cancel_path(ws, row.id).unlink(missing_ok=True)  # a new attempt starts uncancelled
    if launcher == "inprocess":
        run_here(ws, row.id, listeners=_listeners(ws, row.id) if progress else ())
    else:
        start_worker(ws, row, launcher=launcher, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)


def _listeners(ws: Workspace, job_id: str) -> tuple:
    """What shows an in-process job's progress: its live widget in a kernel (updated from the job's own
    records, on this thread), else a text bar."""
    if not in_kernel():
        return (TextProgress(job_id).update,)
    from IPython.display import display

    widget = Job(job_id, ws).widget()
    display(widget)
    last = [0.0]

    def update(record: dict) -> None:
        if record.get("t") == "end" or time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            widget.poll()
    return (update,)


def submit(kind: str, spec: Any, *, workspace: Workspace | str | None = None, name: str | None = None,
           background: bool = True, force: bool = False, launcher: str | None = None, nproc: int = 1,
           nnodes: int = 1, rdzv_endpoint: str | None = None, progress: bool = True) -> Job:
    """Start (or find) the job for ``spec`` (a dict, or an instance of the kind's spec class) and return its handle.

    At most one queued/running job per key: starting an active spec returns that job; a completed
    one is returned as it is unless ``force=True``; a failed or cancelled one starts a new attempt
    that resumes from its last resume point. ``background=False`` runs it here, blocking.
    ``launcher="torchrun", nproc=N`` runs N ranks here; with ``nnodes=M, rdzv_endpoint="host:port"`` this
    machine is one of M nodes, each other node joins with ``saekit join JOB_ID`` (the workspace on a
    filesystem they all see).
    """
    ws = as_workspace(workspace)
    info = get_kind(kind)
    launcher = _launcher(background, launcher)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be a positive number of processes")
    check_nodes(launcher, nnodes, rdzv_endpoint)
    if info.module == "__main__" and launcher != "inprocess":
        raise ConfigError(
            f"job kind {kind!r} is defined in __main__, which a background worker cannot import; "
            "define it in a module, or run it with background=False"
        )
    spec = _checked_spec(info, spec)
    row, outcome = registry.submit_job(
        ws, new_id=f"{kind}-{secrets.token_hex(4)}", kind=kind, key=spec_key(kind, spec, info.volatile), name=name,
        spec=canonical_json(spec), entry=info.module, force=force, launcher=launcher, worker_pid=os.getpid(),
    )
    if outcome in ("created", "resumed"):
        remember(ws.path)
        _record_submission(ws, row, spec)
        _launch(ws, row, launcher, nproc, progress, nnodes, rdzv_endpoint)
    return Job(row.id, ws)


def _checked_spec(info, spec: Any) -> dict:
    """The spec as stored: checked against the kind's spec class (when it has one), then its ``validate``."""
    if info.spec is None:
        spec = normalize(dict(spec))
        return normalize(info.validate(spec)) if info.validate is not None else spec
    typed = info.parse(spec)
    if info.validate is not None:
        typed = info.parse(info.validate(typed))
    return normalize(typed.to_dict())


def _record_submission(ws: Workspace, row: registry.JobRecord, spec: dict | None = None) -> None:
    """The attempt's ``submit`` record in the event log: what the registry row is rebuilt from if it is lost."""
    writer = EventWriter(events_path(ws, row.id))
    try:
        writer.write({"t": "submit", "attempt": row.attempt, "kind": row.kind, "key": row.key, "name": row.name,
                      "spec": spec if spec is not None else row.spec_dict, "entry": row.entry,
                      "launcher": row.launcher, "created_at": epoch(row.created_at)}, durable=True)
    finally:
        writer.close()


def get_job(job_id: str, workspace: Workspace | str | None = None) -> Job:
    """Re-attach to a job by id (a unique prefix is enough), from any process. Without ``workspace``, a whole id
    that is not in the current workspace is looked for in the workspaces this user ran jobs in lately (a kernel
    restarted after ``sk.set_workspace(...)``)."""
    ws = as_workspace(workspace)
    if not isinstance(job_id, str) or not job_id.strip():
        raise JobNotFoundError(f"job id {job_id!r} is empty; give a job id (or a unique prefix of one): `saekit jobs` (sk.jobs()) lists them")
    try:
        return Job(job_id, ws)
    except JobNotFoundError as missing:
        matches = [i for i in registry.job_ids(ws) if i.startswith(job_id)]
        if len(matches) == 1:
            return Job(matches[0], ws)
        if workspace is None and JOB_ID.fullmatch(job_id):
            found = _elsewhere(job_id, ws)
            if found is not None:
                return found
        raise missing from None


def _elsewhere(job_id: str, searched: Workspace) -> Job | None:
    """The job ``job_id`` in a workspace used lately (the most recent that holds it), or None."""
    for path in recent():
        other = Workspace(path)
        if other == searched or not other.registry_path.exists():
            continue
        try:
            if registry.get_job(other, job_id) is not None:
                log.info("job %s is in workspace %s (used lately), not in %s", job_id, other.path, searched.path)
                return Job(job_id, other)
        except SaekitError:  # a workspace this process cannot read now: not this one
            continue
    return None
