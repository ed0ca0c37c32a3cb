"""Settings in one place, each with an environment override (``SAEKIT_<NAME>``)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        from saekit.errors import ConfigError

        raise ConfigError(f"environment variable {name}={raw!r} is not a number; unset it or give seconds, "
                          f"e.g. {default}") from None


@dataclass(frozen=True)
class Settings:
    """Timeouts of the job machinery, in seconds."""

    lock_timeout: float  # how long a registry access waits for the registry lock
    heartbeat_interval: float  # how often a worker writes a heartbeat line
    stale_after: float  # a heartbeat older than this means the worker is gone (where leases are not trusted)
    worker_start_timeout: float  # how long start() waits for a background worker to take its lease
    registry_retry_for: float  # how long a finishing worker keeps trying to record its end
    trust_leases: bool  # False on filesystems where flock is unreliable (some network mounts)


def settings() -> Settings:
    """The current settings, read from the environment each call (cheap)."""
    return Settings(
        lock_timeout=_env_float("SAEKIT_LOCK_TIMEOUT", 60.0),
        heartbeat_interval=_env_float("SAEKIT_HEARTBEAT", 5.0),
        stale_after=_env_float("SAEKIT_STALE_AFTER", 60.0),
        worker_start_timeout=_env_float("SAEKIT_WORKER_START_TIMEOUT", 120.0),
        registry_retry_for=_env_float("SAEKIT_REGISTRY_RETRY_FOR", 600.0),
        trust_leases=os.environ.get("SAEKIT_TRUST_LEASES", "1").lower() not in ("0", "false", "no"),
    )
