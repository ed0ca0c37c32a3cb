"""Text progress for terminals, scripts and the CLI (widgets replace it in Jupyter), drawn by tqdm's
``format_meter``: bar, done/total, elapsed and remaining time, rate, and the latest metrics.

On a terminal it is one line updated in place; written to a file (nohup, SLURM, CI) it is one
newline-ended line every ``text_progress_seconds`` (and at each phase change and at the end), so a log
shows the run's history instead of one endless line. The end line says the total time.
"""

from __future__ import annotations

import math
import shutil
import sys
import time

from saekit.config import config
from saekit.jobs.events import LogState

SHOWN_METRICS = ("loss", "fvu", "l0", "dead_fraction")  # the latest values of these ride along


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 1e7:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def latest_metrics(state: LogState, limit: int = 3) -> dict[str, float]:
    """The newest value of the metrics worth a glance (loss, fvu, l0, ... of the last logged step)."""
    if not state.metrics:
        return {}
    last_step = max(step for step, _ in state.metrics)
    values = {name: v for (step, name), v in state.metrics.items() if step == last_step}
    shown = [n for n in values if n.rsplit("/", 1)[-1] in SHOWN_METRICS] or sorted(values)
    return {n: values[n] for n in shown[:limit] if isinstance(values[n], (int, float)) and math.isfinite(values[n])}


def _postfix(state: LogState) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in latest_metrics(state).items())


def render(state: LogState, *, status: str | None = None, width: int | None = None, first: dict | None = None,
           now: float | None = None) -> str:
    """One line: phase, bar, done/total, elapsed<remaining, rate and the latest metrics (or the end status)."""
    from tqdm import tqdm

    p = state.progress or {}
    end = state.end
    label = (end or {}).get("status") or status or p.get("phase") or "starting"
    if not p:
        return f"{label}"
    done, total = float(p.get("done") or 0), p.get("total")
    if end is not None and end.get("status") == "completed" and total:
        done = float(total)
    first = first or p
    start = first.get("time") or p.get("time") or time.time()
    stamp = (end or {}).get("time") if end is not None else (now or time.time())
    elapsed = max(0.0, (stamp or time.time()) - start)
    rate = None
    # where this phase's count started: a later phase of a job may go on from an earlier one's count
    begun = min(float(first.get("done") or 0), done)
    if p.get("time") and first.get("time") and p["time"] > first["time"]:
        rate = (float(p.get("done") or 0) - begun) / (p["time"] - first["time"])
    unit = f" {p['unit']}" if p.get("unit") else ""
    whole = lambda x: int(x) if float(x).is_integer() else float(x)  # noqa: E731  "40/40 steps", not "40.0/40.0"
    # ``initial``: tqdm's own rate, before this phase has two records, is what the phase did, not the whole count
    return tqdm.format_meter(whole(done), whole(total) if total else None, elapsed, ncols=width, prefix=label, unit=unit,
                             rate=rate if rate and rate > 0 else None, postfix=_postfix(state) or None,
                             initial=whole(begun))


def render_log(records: list[dict], *, status: str | None = None, width: int | None = None) -> str:
    """``render`` of a whole event log, its rate measured from the current phase's first progress record."""
    state, first = LogState(), None
    for record in records:
        state.update([record])
        if record.get("t") == "start":
            first = None
        elif record.get("t") == "progress" and (first is None or record.get("phase") != first.get("phase")):
            first = record
    return render(state, status=status, width=width, first=first)


class TextProgress:
    """Renders a job's records on a stream: in place on a terminal, as timed lines otherwise."""

    def __init__(self, job_id: str, stream=None, interval: float | None = None, tty: bool | None = None):
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None and hasattr(self.stream, "isatty") else bool(tty)
        self.interval = interval if interval is not None else (0.2 if self.tty else config.get("text_progress_seconds"))
        self.state = LogState()
        self._first: dict | None = None  # the first progress record of the current phase
        self._shown = -math.inf
        self._shown_phase = None
        self._width = 0
        self._started: float | None = None

    def update(self, record: dict) -> None:
        self.state.update([record])
        kind = record.get("t")
        if kind == "start":
            self._started, self._first = record.get("time"), None
        if kind not in ("progress", "end"):
            return
        phase = (self.state.progress or {}).get("phase")
        if kind == "progress" and (self._first is None or record.get("phase") != self._first.get("phase")):
            self._first = record
        now = time.monotonic()
        due = kind == "end" or now - self._shown >= self.interval or (not self.tty and phase != self._shown_phase)
        if not due:
            return
        self._shown, self._shown_phase = now, phase
        self._write(record if kind == "end" else None)

    def _write(self, end: dict | None) -> None:
        columns = shutil.get_terminal_size((100, 20)).columns if self.tty else 100
        line = f"{self.job_id} " + render(self.state, width=max(60, columns - len(self.job_id) - 2), first=self._first)
        if end is not None:
            took = (end.get("time") or time.time()) - (self._started or end.get("time") or time.time())
            line += f"\n{self.job_id} {end.get('status')} in {_duration(took)}"
            metrics = _postfix(self.state)
            if metrics:
                line += f"; {metrics}"
            if end.get("error_message"):
                line += f"\n  {end.get('error_type')}: {end['error_message']}"
        try:
            if self.tty:
                padded, self._width = line.ljust(self._width), max(self._width, len(line.splitlines()[0]))
                self.stream.write("\r" + padded + ("\n" if end is not None else ""))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
