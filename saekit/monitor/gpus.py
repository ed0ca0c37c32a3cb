"""NVIDIA GPUs through NVML (``pynvml``, from nvidia-ml-py): utilisation, memory, temperature, power and
the processes using each GPU. Without a driver or NVML, ``GpuReader.available`` is False and ``reason``
says why in plain words; nothing raises."""

from __future__ import annotations

import threading

_INIT_LOCK = threading.Lock()


def _load_nvml():
    import pynvml

    return pynvml


class GpuReader:
    """Reads every GPU NVML sees. ``nvml`` is the module to use (tests pass a fake one)."""

    def __init__(self, nvml=None):
        self.available, self.reason, self._nvml = False, None, None
        try:
            module = nvml if nvml is not None else _load_nvml()
        except ImportError:
            self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            with _INIT_LOCK:
                module.nvmlInit()
            self.count = module.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = _plain_reason(exc)
            return
        self._nvml, self.available = module, True
        if self.count == 0:
            self.available, self.reason = False, "NVML found no NVIDIA GPU"

    def read(self) -> list[dict]:
        """One dict per GPU: index, name, utilization (%), memory used/total (bytes), temperature (C),
        power (W), and ``processes`` [{pid, memory}] (memory in bytes; None where NVML does not say)."""
        if not self.available:
            return []
        nvml, out = self._nvml, []
        for index in range(self.count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpu = {"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                   "memory_used": int(memory.used), "memory_total": int(memory.total),
                   "utilization": getattr(_optional(nvml.nvmlDeviceGetUtilizationRates, handle), "gpu", None),
                   "temperature": _optional(nvml.nvmlDeviceGetTemperature, handle, 0),
                   "power_w": None, "processes": []}
            milliwatts = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                gpu["power_w"] = milliwatts / 1000.0
            procs = _optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                gpu["processes"].append({"pid": int(proc.pid), "memory": int(used) if used is not None else None})
            out.append(gpu)
        return out

    def process_usage(self, pid: int) -> dict:
        """GPU memory (bytes, summed over GPUs) of one process, and the GPUs it is on."""
        memory, used = 0, []
        for gpu in self.read():
            for proc in gpu["processes"]:
                if proc["pid"] == pid:
                    memory += proc["memory"] or 0
                    used.append(gpu)
        return {"gpu_memory": memory, "gpus": [g["index"] for g in used],
                "gpu_utilization": max((g["utilization"] or 0 for g in used), default=None)}


def _optional(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a field this GPU or driver does not support
        return None


def _plain_reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "LibraryNotFound" in name:
        return "no NVIDIA driver here (NVML library not found)"
    if "DriverNotLoaded" in name:
        return "the NVIDIA driver is not loaded"
    if "NoPermission" in name:
        return "no permission to read the GPUs through NVML"
    return f"NVML is not usable here ({name}: {exc})"
