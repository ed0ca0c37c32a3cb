import threading
import time

import pytest

from saekit.errors import RegistryBusyError
from saekit.registry._lock import RegistryLock


def test_readers_share_writers_exclude_and_timeouts_release(tmp_path):
    path = tmp_path / "registry.lock"
    with RegistryLock(path, write=False, timeout=1), RegistryLock(path, write=False, timeout=1):
        with pytest.raises(RegistryBusyError, match="lock timeout"):
            with RegistryLock(path, write=True, timeout=0.2):
                pass
    with RegistryLock(path, write=True, timeout=1):
        t = time.monotonic()
        with pytest.raises(RegistryBusyError):
            with RegistryLock(path, write=False, timeout=0.3):
                pass
        assert 0.25 < time.monotonic() - t < 30  # it waited its timeout, then gave up
    time.sleep(0.05)  # the abandoned waiters got the lock and let it go at once
    with RegistryLock(path, write=True, timeout=1):
        pass


def test_waiting_writer_gets_the_lock_when_it_is_released(tmp_path):
    path = tmp_path / "registry.lock"
    order = []
    holder = RegistryLock(path, write=True, timeout=1).__enter__()

    def wait():
        with RegistryLock(path, write=True, timeout=5):
            order.append("waiter")

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    order.append("holder done")
    holder.__exit__(None, None, None)
    thread.join(5)
    assert order == ["holder done", "waiter"]
