"""The worker's lease: an exclusive lock on ``jobs/<id>/lease.lock`` held for the worker's whole life.

A reader that can take the lease knows the worker is gone, at once: the OS drops the lock when the
process dies, however it dies.
"""

from __future__ import annotations

from pathlib import Path

import filelock


def lease_path(job_dir: Path) -> Path:
    return Path(job_dir) / "lease.lock"


class Lease:
    def __init__(self, job_dir: Path):
        Path(job_dir).mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(lease_path(job_dir)), thread_local=False, poll_interval=0.01)

    def acquire(self, timeout: float) -> bool:
        """Take the lease, waiting up to ``timeout`` seconds; False when another process holds it."""
        try:
            self._lock.acquire(timeout=timeout)
            return True
        except filelock.Timeout:
            return False

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


def lease_is_held(job_dir: Path) -> bool:
    """True while some process holds the job's lease (its worker is alive)."""
    path = lease_path(job_dir)
    if not path.exists():
        return False
    probe = filelock.FileLock(str(path), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release(force=True)
    return False
