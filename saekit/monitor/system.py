"""Samples of the machine (CPU, RAM, swap, disk and network rates, GPUs) and of one process (a job's
worker: CPU, RSS, its GPU memory and the utilisation of its GPUs). Rates come from the difference
between two samples, so the first sample of a sampler has none."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from saekit.monitor.gpus import GpuReader


class SystemSampler:
    """``sample()`` -> one dict: time, cpu_percent, per-CPU count, ram/swap used and total (bytes),
    disk read/write and network sent/received rates (bytes/s), and ``gpus`` (see ``GpuReader.read``)
    with ``gpu_reason`` when there are none."""

    def __init__(self, gpus: GpuReader | None = None):
        self.gpus = gpus if gpus is not None else GpuReader()
        self._last: tuple[float, Any, Any] | None = None
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def _counters(self):
        try:
            disk = psutil.disk_io_counters()
        except (OSError, RuntimeError):
            disk = None
        try:
            net = psutil.net_io_counters()
        except (OSError, RuntimeError):
            net = None
        return disk, net

    def sample(self) -> dict:
        now = time.time()
        disk, net = self._counters()
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        out = {"time": now, "cpu_percent": psutil.cpu_percent(None), "cpu_count": psutil.cpu_count() or 1,
               "ram_used": int(memory.total - memory.available), "ram_total": int(memory.total),
               "swap_used": int(swap.used), "swap_total": int(swap.total),
               "disk_read_rate": None, "disk_write_rate": None, "net_sent_rate": None, "net_recv_rate": None,
               "gpus": self.gpus.read(), "gpu_reason": self.gpus.reason}
        if self._last is not None:
            then, last_disk, last_net = self._last
            seconds = max(now - then, 1e-6)
            if disk is not None and last_disk is not None:
                out["disk_read_rate"] = max(0.0, (disk.read_bytes - last_disk.read_bytes) / seconds)
                out["disk_write_rate"] = max(0.0, (disk.write_bytes - last_disk.write_bytes) / seconds)
            if net is not None and last_net is not None:
                out["net_sent_rate"] = max(0.0, (net.bytes_sent - last_net.bytes_sent) / seconds)
                out["net_recv_rate"] = max(0.0, (net.bytes_recv - last_net.bytes_recv) / seconds)
        self._last = (now, disk, net)
        return out


class ProcessSampler:
    """Samples of one process (this one by default) for its job's event log: ``{"t": "resources",
    "cpu_percent", "rss", "gpu_memory", "gpu_utilization", "gpus"}``. GPU fields are None without NVML."""

    def __init__(self, pid: int | None = None, gpus: GpuReader | None = None):
        self.process = psutil.Process(pid or os.getpid())
        self.process.cpu_percent(None)
        self._gpus = gpus

    @property
    def gpus(self) -> GpuReader:
        if self._gpus is None:  # NVML is opened on the first sample, not at import
            self._gpus = GpuReader()
        return self._gpus

    def sample(self) -> dict:
        with self.process.oneshot():
            record = {"t": "resources", "cpu_percent": self.process.cpu_percent(None),
                      "rss": int(self.process.memory_info().rss)}
        if self.gpus.available:
            record.update(self.gpus.process_usage(self.process.pid))
        else:
            record.update({"gpu_memory": None, "gpu_utilization": None, "gpus": []})
        return record
