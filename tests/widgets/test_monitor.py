"""System sampling, NVML through a fake module (this machine has no GPU), the system panel, worker
resource samples, the dashboard and run comparisons."""

import os
import time
from types import SimpleNamespace

import pytest
from data_for_tests import quick, toy_store

import saekit as sk
from saekit.errors import ConfigError
from saekit.jobs import submit
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path
from saekit.monitor.gpus import GpuReader
from saekit.monitor.system import ProcessSampler, SystemSampler
from saekit.widgets.dashboard import Compare, Dashboard
from saekit.widgets.poller import Poller
from saekit.widgets.system_widget import SystemMonitor


class FakeNVML:
    """Two GPUs; the processes on GPU 1 are whatever the test says."""

    class NVMLError_LibraryNotFound(Exception):
        pass

    def __init__(self, processes=(), missing=False):
        self.processes, self.missing = list(processes), missing

    def nvmlInit(self):
        if self.missing:
            raise self.NVMLError_LibraryNotFound("libnvidia-ml.so.1 not found")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake H100" if h == 0 else "Fake H200"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=37 if h else 0)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 51

    def nvmlDeviceGetPowerUsage(self, h):
        return 123_000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=512 * 2**20) for p in self.processes] if h == 1 else []


def test_gpu_reader_with_and_without_nvml():
    gpus = GpuReader(FakeNVML(processes=[4242]))
    assert gpus.available and gpus.count == 2
    first, second = gpus.read()
    assert first["name"] == "Fake H100" and second["name"] == "Fake H200" and second["utilization"] == 37
    assert second["power_w"] == 123.0 and second["memory_total"] == 80 * 2**30
    assert second["processes"] == [{"pid": 4242, "memory": 512 * 2**20}]
    assert gpus.process_usage(4242) == {"gpu_memory": 512 * 2**20, "gpus": [1], "gpu_utilization": 37}
    missing = GpuReader(FakeNVML(missing=True))
    assert not missing.available and missing.reason == "no NVIDIA driver here (NVML library not found)"
    assert missing.read() == []
    real = GpuReader()  # this machine: pynvml is installed, the driver is not
    assert real.available or "NVML" in real.reason or "driver" in real.reason


def test_samplers():
    sampler = SystemSampler(GpuReader(FakeNVML()))
    first = sampler.sample()
    with open(os.devnull, "wb") as f:
        f.write(b"x" * 2**20)
    second = sampler.sample()
    assert first["disk_read_rate"] is None and second["disk_read_rate"] is not None  # rates need two samples
    assert 0 <= second["cpu_percent"] <= 100 * second["cpu_count"] and second["ram_total"] > second["ram_used"] > 0
    assert len(second["gpus"]) == 2
    me = ProcessSampler(gpus=GpuReader(FakeNVML(processes=[os.getpid()]))).sample()
    assert me["t"] == "resources" and me["rss"] > 10 * 2**20 and me["gpu_memory"] == 512 * 2**20 and me["gpus"] == [1]
    alone = ProcessSampler(gpus=GpuReader(FakeNVML(missing=True))).sample()
    assert alone["gpu_memory"] is None and alone["gpus"] == []


def test_workers_append_resource_samples(ws, monkeypatch):
    monkeypatch.setenv("SAEKIT_HEARTBEAT", "0.1")
    job = submit("count", {"n": 30, "delay": 0.02}, progress=False)
    job.wait(timeout=60)
    samples = [r for r in read_all(events_path(ws, job.id)) if r["t"] == "resources"]
    assert samples and all(r["rss"] > 0 and r["cpu_percent"] >= 0 for r in samples)
    widget = job.widget()
    assert widget.resources and widget.resources[-1]["rss"] == samples[-1]["rss"]


def test_system_monitor_maps_gpu_processes_to_jobs(ws):
    poller = Poller()
    job = submit("count", {"n": 10_000, "delay": 0.01}, progress=False)
    deadline = time.monotonic() + 30
    while job.status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = job.info()["worker_pid"]
    panel = SystemMonitor(interval=1.0, nvml=FakeNVML(processes=[pid, 1]), poller=poller)
    assert panel in poller.widgets and len(panel.samples) == 1 and panel.gpu_reason == ""
    assert {(u["pid"], u["job_id"]) for u in panel.gpu_jobs} == {(pid, job.id), (1, None)}
    assert panel.samples[-1]["gpus"][1]["utilization"] == 37 and "processes" not in panel.samples[-1]["gpus"][1]
    panel.interval = 5.0  # what the select in the browser does
    assert panel.interval == 5.0
    panel.interval = 3.0  # not an offered interval: refused
    assert panel.interval == 5.0
    poller.tick()
    assert len(panel.samples) == 2  # a changed interval samples at once
    poller.tick()
    assert len(panel.samples) == 2  # then waits for it
    with pytest.raises(ConfigError, match="interval=7"):
        SystemMonitor(interval=7)
    job.cancel().wait(timeout=120)
    plain = SystemMonitor(nvml=FakeNVML(missing=True), poller=poller)
    assert plain.gpu_reason.startswith("no NVIDIA driver") and plain.samples[-1]["gpus"] == []
    plain.close()
    panel.close()
    poller.tick()
    assert poller.widgets == []


def test_dashboard_lists_active_and_finished_jobs(ws):
    poller = Poller()
    empty = Dashboard(poller=poller)
    assert empty.active == [] and empty.recent == []
    done = submit("count", {"n": 3}, background=False, progress=False)
    running = submit("count", {"n": 10_000, "delay": 0.01, "tag": "long"}, progress=False)
    board = Dashboard(poller=poller)
    deadline = time.monotonic() + 30
    while not (board.active and board.active[0]["percent"]):
        assert time.monotonic() < deadline
        board._read_at = -10  # read the registry at this tick
        poller.tick()
        time.sleep(0.05)
    assert [j["id"] for j in board.active] == [running.id] and [j["id"] for j in board.recent] == [done.id]
    assert board.active[0]["unit"] == "steps" and board.recent[0]["status"] == "completed"
    feed = poller._feeds[(str(ws.path), running.id)]
    chart = Compare([running], "progress", poller=poller)
    for _ in range(6):
        time.sleep(0.1)
        poller.tick()
    assert poller._feeds[(str(ws.path), running.id)] is feed  # kept while followed, not re-read from the start
    xs = [x for x, _ in next(iter(chart.series.values()))]
    assert len(xs) >= 2 and all(a < b for a, b in zip(xs, xs[1:]))  # no point twice
    sent = []
    chart.observe(lambda change: sent.append(len(next(iter(change["new"].values())))), names="series")
    deadline = time.monotonic() + 60
    while len(sent) < 2:  # the trait changes as the job goes on: the browser hears of each new point
        assert time.monotonic() < deadline, "a comparison of a running job never updated"
        time.sleep(0.1)
        poller.tick()
    assert sent[-1] > sent[0]
    assert board.active[0]["rate"] > 0 and board.active[0]["eta"] is not None
    running.cancel().wait(timeout=120)
    board._read_at = -10
    poller.tick()
    assert board.active == [] and {j["id"] for j in board.recent} == {done.id, running.id}


def test_compare_overlays_runs(ws):
    store = toy_store()
    jobs = [sk.train(store, "toy", sk.SAEConfig(arch="topk", d_sae=32, k=k), quick(ce_eval_tokens=100 * k),
                     background=False, progress=False) for k in (2, 4)]  # ce_eval_tokens differs, but changes no run
    chart = Compare(jobs, "fvu", poller=Poller())
    assert len(chart.series) == 2 and all(len(points) == 8 for points in chart.series.values())
    assert chart not in chart._poller.widgets  # finished runs: nothing to follow
    progress = Compare([j.id for j in jobs], "progress", poller=Poller())
    assert progress.x_label == "seconds" and all(points[-1][1] == 100.0 for points in progress.series.values())
    assert set(chart.series) == {"train " + jobs[0].id.split("-")[-1] + ": k=2",
                                 "train " + jobs[1].id.split("-")[-1] + ": k=4"}  # what differs, not "sae1"
    named = Compare(jobs, "fvu", names=["small", "large"], poller=Poller())
    assert sorted(named.series) == ["large: k=4", "small: k=2"]
    assert named.columns[:5] == ["run", "status", "loss", "fvu", "l0"] and named.columns[5:] == ["k"]
    assert [row[-1] for row in named.rows] == [2, 4] and all(row[1] == "completed" for row in named.rows)
    sweep = sk.train(store, "toy", [sk.SAEConfig(arch="topk", d_sae=32, k=2), sk.SAEConfig(arch="topk", d_sae=32, k=3)],
                     quick(), background=False, progress=False)
    swept = Compare([sweep], "l0", poller=Poller())
    assert len(swept.series) == 2 and all(label.endswith(("k=2", "k=3")) for label in swept.series)
    assert isinstance(sk.compare(jobs), Compare) and isinstance(sk.dashboard(), Dashboard)
