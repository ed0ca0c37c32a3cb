"""Text progress bars for terminals, scripts and the CLI (widgets replace them in Jupyter)."""

from __future__ import annotations

import shutil
import sys
import time

from saekit.jobs.events import LogState


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 1e7:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _count(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:,.2f}"


_PROGRESS_FIELDS = {"t", "done", "total", "unit", "phase", "time"}


def render(state: LogState, *, status: str | None = None, width: int = 30, first: dict | None = None) -> str:
    """One line: bar, percent, done/total unit, rate, ETA and phase (or the end status)."""
    p = state.progress or {}
    percent = state.percent()
    filled = int(round(width * (percent or 0) / 100))
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}]", f"{percent:5.1f}%" if percent is not None else "  ?  %"]
    unit = p.get("unit") or ""
    if p:
        parts.append(f"{_count(p.get('done'))}/{_count(p.get('total'))} {unit}".rstrip())
        extras = [f"{_count(v)} {k}" for k, v in p.items()
                  if k not in _PROGRESS_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if extras:
            parts.append(f"({', '.join(extras)})")
    if first and p and p.get("time") and first.get("time") and p["time"] > first["time"]:
        rate = (float(p.get("done") or 0) - float(first.get("done") or 0)) / (p["time"] - first["time"])
        if rate > 0:
            parts.append(f"{_count(rate)} {unit}/s".rstrip())
            if p.get("total"):
                parts.append(f"ETA {_duration((float(p['total']) - float(p.get('done') or 0)) / rate)}")
    end = state.end
    label = status or (end or {}).get("status") or p.get("phase")
    if label:
        parts.append(label)
    return "  ".join(parts)


class TextProgress:
    """Renders a job's records as a single, updating line on stderr (at most 5 times a second)."""

    def __init__(self, job_id: str, stream=None, interval: float = 0.2):
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.interval = interval
        self.state = LogState()
        self._first: dict | None = None
        self._shown = 0.0
        self._width = 0

    def update(self, record: dict) -> None:
        self.state.update([record])
        if record.get("t") not in ("progress", "end"):
            return
        if record.get("t") == "progress" and (self._first is None or record.get("phase") != self._first.get("phase")):
            self._first = record
        now = time.monotonic()
        if record.get("t") != "end" and now - self._shown < self.interval:
            return
        self._shown = now
        width = max(10, min(30, shutil.get_terminal_size((100, 20)).columns - 70))
        line = f"{self.job_id}  {render(self.state, width=width, first=self._first)}"
        end = record.get("t") == "end"
        if end and record.get("error_message"):
            line += f"\n  {record.get('error_type')}: {record['error_message']}"
        padded, self._width = line.ljust(self._width), max(self._width, len(line))
        try:
            self.stream.write("\r" + padded + ("\n" if end else ""))
            self.stream.flush()
        except (OSError, ValueError):
            pass
