"""The registry's OS file lock: shared for reads, exclusive for writes, writers first.

Each acquisition opens its own descriptor, so threads of one process exclude each other as processes
do. A writer first takes a turnstile (``<lock>.turn``) that arriving readers also pass through, so a
steady stream of readers cannot starve a writer. Waiting is a blocking ``flock`` (the kernel queues
waiters, which keeps the wait fair: polling let unlucky writers wait ten times the median) in a helper
thread, so that a timeout can end the wait. Where ``fcntl`` is missing (Windows) the ``filelock``
package's exclusive lock serves reads and writes alike.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

from saekit.errors import RegistryBusyError, StorageError, WorkspaceError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _busy(path: Path) -> RegistryBusyError:
    return RegistryBusyError(
        f"the registry lock {str(path)!r} stayed taken for longer than the lock timeout; "
        "another process holds it (see `saekit jobs`), or raise $SAEKIT_LOCK_TIMEOUT"
    )


class _Waiter:
    """Blocks in ``flock`` on its own thread; hands the descriptor over, or closes it if abandoned."""

    def __init__(self, fd: int, op: int):
        self.fd, self.op = fd, op
        self.done = threading.Event()
        self.error: OSError | None = None
        self._guard = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._wait, name="saekit-registry-lock", daemon=True).start()

    def _wait(self) -> None:
        try:
            fcntl.flock(self.fd, self.op)
        except OSError as exc:
            self.error = exc
        with self._guard:
            if self._abandoned:
                os.close(self.fd)
            else:
                self.done.set()

    def result(self, timeout: float) -> bool:
        """True when the lock is held by ``fd`` now; False (and ``fd`` is no longer ours) after the timeout."""
        if self.done.wait(max(0.0, timeout)):
            return True
        with self._guard:
            if self.done.is_set():
                return True
            self._abandoned = True
            return False


def _unwritable(path: Path, exc: OSError):
    if exc.errno == errno.ENOSPC:
        return StorageError(f"the disk holding the registry lock {str(path)!r} is full",
                            suggestion="free disk space; the jobs' event logs keep what happened meanwhile")
    return WorkspaceError(f"the workspace {str(path.parent)!r} cannot be written ({exc.strerror or exc}): the "
                          "registry cannot record anything there",
                          suggestion="make it writable, or use another with sk.set_workspace(path); reading works")


def _open(path: Path, reader: bool) -> int | None:
    """A descriptor of the lock file. A reader in a folder it cannot write gets a read-only one (flock works
    on it), or None when the file does not exist there: nobody can write that workspace, so there is no one
    to exclude."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if not reader or exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise _unwritable(path, exc) from exc
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _acquire(path: Path, op: int, deadline: float, reader: bool = False) -> int | None:
    """Open ``path`` and lock it with ``op``; returns the descriptor that holds the lock (None: see ``_open``)."""
    fd = _open(path, reader)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    waiter = _Waiter(fd, op)
    if not waiter.result(deadline - time.monotonic()):
        raise _busy(path)
    if waiter.error is not None:
        os.close(fd)
        raise waiter.error
    return fd


class RegistryLock:
    """Context manager holding ``path`` shared (``write=False``) or exclusive (``write=True``)."""

    def __init__(self, path: Path, *, write: bool, timeout: float):
        self.path = Path(path)
        self.write = write
        self.timeout = timeout
        self._fd: int | None = None
        self._fallback = None

    def __enter__(self) -> "RegistryLock":
        deadline = time.monotonic() + self.timeout
        if fcntl is None:  # pragma: no cover - Windows
            import filelock

            self._fallback = filelock.FileLock(str(self.path), timeout=self.timeout)
            try:
                self._fallback.acquire()
            except filelock.Timeout as exc:
                raise _busy(self.path) from exc
            return self
        reader = not self.write
        turn = _acquire(self.path.with_name(self.path.name + ".turn"), fcntl.LOCK_EX, deadline, reader)
        try:
            if not self.write and turn is not None:  # a reader only passes through the turnstile
                os.close(turn)
                turn = None
            self._fd = _acquire(self.path, fcntl.LOCK_EX if self.write else fcntl.LOCK_SH, deadline, reader)
        finally:
            if turn is not None:
                os.close(turn)  # a writer holds the turnstile until it holds the lock itself
        return self

    def __exit__(self, *exc) -> None:
        if self._fallback is not None:  # pragma: no cover - Windows
            self._fallback.release()
            self._fallback = None
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
