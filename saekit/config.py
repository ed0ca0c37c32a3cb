"""Settings in one place: each has a default, an environment override (``SAEKIT_<NAME>``, inherited by the
workers a process starts) and, for this process only, ``config.set(name=value)`` (a context manager, as
zarr's ``config.set``; tests use it instead of patching the environment).

    from saekit.config import config
    config.get("heartbeat")                 # 5.0, or $SAEKIT_HEARTBEAT
    with config.set(progress_interval=0.1):
        ...
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from saekit.errors import ConfigError

# name: (default, what it is); the environment variable is SAEKIT_<NAME>
DEFAULTS: dict[str, tuple[Any, str]] = {
    "lock_timeout": (60.0, "seconds a registry access waits for the registry lock"),
    "heartbeat": (5.0, "seconds between a worker's heartbeat lines"),
    "stale_after": (60.0, "a heartbeat older than this (s) means the worker is gone, where leases are not trusted"),
    "worker_start_timeout": (120.0, "seconds start() waits for a background worker to take its lease"),
    "registry_retry_for": (600.0, "seconds a finishing worker keeps trying to record its end"),
    "trust_leases": (True, "False on filesystems where flock is unreliable (some network mounts)"),
    "progress_interval": (0.5, "seconds between a job's progress lines (a phase change or the end always writes)"),
    "widget_tick": (0.5, "seconds between the widget poller's rounds"),
    "widget_liveness": (5.0, "seconds between a widget's checks that a silent job's worker is alive"),
    "dashboard_refresh": (2.0, "seconds between the dashboard's reads of the job list"),
    "reader_threads": (min(8, os.cpu_count() or 2), "threads that read and decompress store chunks"),
    "writer_threads": (min(16, os.cpu_count() or 2), "threads that compress and write store chunks (extraction)"),
    "sparse_kernels": ("auto", "sparse codes' sums: 'triton' (CUDA), 'torch' (embedding_bag) or 'auto' (Triton where "
                               "it runs)"),
    "extract_tokens_per_batch_cpu": (2048, "tokens per forward pass of extraction on the CPU (batch_size='auto')"),
    "extract_tokens_per_batch_cuda": (32768, "tokens per forward pass of extraction on a GPU (batch_size='auto')"),
    "preload_cpu_bytes": (2**30, "training rows up to this size are read into memory once on the CPU"),
    "text_progress_seconds": (10.0, "seconds between the lines of a text progress bar written to a file"),
}


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() not in ("0", "false", "no", "off", "")
    try:
        return type(default)(float(raw)) if isinstance(default, int) else float(raw)
    except ValueError:
        raise ConfigError(f"environment variable SAEKIT_{name.upper()}={raw!r} is not a number; unset it or give "
                          f"a number, e.g. {default}") from None


class Config:
    """The settings (see ``DEFAULTS``); ``get`` reads an override, else the environment, else the default."""

    def __init__(self) -> None:
        self._overrides: list[dict[str, Any]] = []

    def get(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise ConfigError(f"no setting {name!r}; settings are {sorted(DEFAULTS)}")
        for layer in reversed(self._overrides):
            if name in layer:
                return layer[name]
        default = DEFAULTS[name][0]
        raw = os.environ.get(f"SAEKIT_{name.upper()}")
        return default if raw is None or raw == "" else _parse(name, raw, default)

    @contextmanager
    def set(self, **values: Any) -> Iterator["Config"]:
        """Within the block, these settings take these values (in this process)."""
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"no setting(s) {unknown}; settings are {sorted(DEFAULTS)}")
        self._overrides.append(values)
        try:
            yield self
        finally:
            self._overrides.remove(values)

    def describe(self) -> dict[str, Any]:
        """Every setting's current value."""
        return {name: self.get(name) for name in DEFAULTS}


config = Config()


@dataclass(frozen=True)
class Settings:
    """The job machinery's timeouts, read together (see ``DEFAULTS``)."""

    lock_timeout: float
    heartbeat_interval: float
    stale_after: float
    worker_start_timeout: float
    registry_retry_for: float
    trust_leases: bool


def settings() -> Settings:
    """The current settings of the job machinery (cheap; read anew each call)."""
    return Settings(lock_timeout=config.get("lock_timeout"), heartbeat_interval=config.get("heartbeat"),
                    stale_after=config.get("stale_after"), worker_start_timeout=config.get("worker_start_timeout"),
                    registry_retry_for=config.get("registry_retry_for"), trust_leases=config.get("trust_leases"))
