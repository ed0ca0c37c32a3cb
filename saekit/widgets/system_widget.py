"""``sk.SystemMonitor``: GPUs (utilisation, memory, temperature, power, which saekit job uses which GPU),
CPU, RAM, swap, disk and network rates, with sparklines over the last minutes. The interval (1, 2, 5 or
10 s) can be changed from the widget. Without NVIDIA GPUs or NVML the panel says so and shows the rest."""

from __future__ import annotations

import time

import psutil
import traitlets

from saekit.monitor.gpus import GpuReader
from saekit.monitor.system import SystemSampler
from saekit.widgets import snapshot
from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.poller import POLLER, Poller
from saekit.workspace import Workspace, as_workspace

INTERVALS = (1.0, 2.0, 5.0, 10.0)
HISTORY_SECONDS = 300.0
JOB_MAP_SECONDS = 10.0  # how often the active jobs' worker pids are read from the registry


def worker_pids(ws: Workspace) -> dict[int, dict]:
    """pid -> {id, kind, name} of the workspace's active jobs' workers."""
    from saekit import registry

    return {int(r.worker_pid): {"id": r.id, "kind": r.kind, "name": r.name}
            for r in registry.list_jobs(ws, status=registry.ACTIVE_STATES) if r.worker_pid}


def job_of_pid(pid: int, workers: dict[int, dict]) -> dict | None:
    """The job whose worker is ``pid`` or one of its ancestors (torchrun ranks are a worker's children)."""
    if pid in workers:
        return workers[pid]
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in workers:
                return workers[parent.pid]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


class SystemMonitor(SnapshotWidget):
    """A live panel of this machine; ``interval`` seconds between samples (1, 2, 5 or 10)."""

    _esm = esm("system.js")

    interval = traitlets.Float(2.0).tag(sync=True)
    intervals = traitlets.List(list(INTERVALS)).tag(sync=True)
    samples: traitlets.List[dict] = traitlets.List([]).tag(sync=True)  # the last HISTORY_SECONDS of samples
    gpu_reason = traitlets.Unicode("").tag(sync=True)  # why there are no GPUs, in plain words
    # [{gpu, pid, memory, job_id, kind, name}] measured through NVML
    gpu_jobs: traitlets.List[dict] = traitlets.List([]).tag(sync=True)

    def __init__(self, interval: float = 2.0, *, workspace: Workspace | str | None = None, nvml=None,
                 poller: Poller = POLLER, **kwargs):
        super().__init__(**kwargs)
        self.interval = self._checked(interval)
        self.workspace = as_workspace(workspace)
        self._sampler = SystemSampler(GpuReader(nvml))
        self.gpu_reason = "" if self._sampler.gpus.available else (self._sampler.gpus.reason or "no GPU")
        self._next_sample = 0.0
        self._workers: dict[int, dict] = {}
        self._workers_read = -JOB_MAP_SECONDS
        self._poller = poller
        self.observe(self._on_interval, names="interval")
        self.poll()
        poller.add(self)

    @staticmethod
    def _checked(interval) -> float:
        if float(interval) not in INTERVALS:
            from saekit.errors import ConfigError

            raise ConfigError(f"interval={interval!r}; use one of {list(INTERVALS)} seconds")
        return float(interval)

    def _on_interval(self, change) -> None:
        if float(change["new"]) not in INTERVALS:
            self.interval = change["old"]
            return
        self._next_sample = 0.0

    def _gpu_jobs(self, sample: dict) -> list[dict]:
        now = time.monotonic()
        if now - self._workers_read >= JOB_MAP_SECONDS:
            self._workers, self._workers_read = worker_pids(self.workspace), now
        rows = []
        for gpu in sample["gpus"]:
            for proc in gpu["processes"]:
                job = job_of_pid(proc["pid"], self._workers)
                rows.append({"gpu": gpu["index"], "pid": proc["pid"], "memory": proc["memory"],
                             "job_id": job["id"] if job else None, "kind": job["kind"] if job else None,
                             "name": job["name"] if job else None})
        return rows

    def followed(self) -> set:
        return set()  # reads no job logs

    def poll(self, now: float | None = None) -> bool:
        """Take a sample when the interval has passed; False once the widget was closed."""
        if self.comm is None:
            return False
        clock = time.monotonic()
        if clock < self._next_sample:
            return True
        self._next_sample = clock + self.interval
        sample = self._sampler.sample()
        gpu_jobs = self._gpu_jobs(sample) if sample["gpus"] else []
        for gpu in sample["gpus"]:
            gpu.pop("processes", None)
        keep = max(2, int(HISTORY_SECONDS / self.interval))
        with self.hold_sync():
            self.samples = [*self.samples[-(keep - 1):], sample]
            self.gpu_jobs = gpu_jobs
        return True

    def summary(self) -> str:
        last = self.samples[-1] if self.samples else None
        if last is None:
            return "System: no sample yet"
        gpus = ", ".join(f"GPU {g['index']} {g['utilization']}% {g['memory_used'] / 2**30:.1f} GiB" for g in last["gpus"])
        return (f"System: CPU {last['cpu_percent']:.0f}% of {last['cpu_count']} cores, RAM {last['ram_used'] / 2**30:.1f} of "
                f"{last['ram_total'] / 2**30:.1f} GiB; " + (gpus or f"GPUs: {self.gpu_reason}"))

    def snapshot_html(self) -> str:
        series = {"CPU %": [[s["time"], s["cpu_percent"]] for s in self.samples]}
        ram = {"RAM GiB": [[s["time"] - self.samples[0]["time"], s["ram_used"] / 2**30] for s in self.samples]}
        return snapshot.box(f"<b>System</b> <span style='color:#666'>{snapshot.esc(self.summary())}</span>",
                            snapshot.line_chart("CPU %", {k: [[t - self.samples[0]["time"], v] for t, v in p]
                                                          for k, p in series.items()}) if self.samples else "",
                            snapshot.line_chart("RAM", ram) if self.samples else "")
