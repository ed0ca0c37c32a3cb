"""Writing activation stores: a writer thread fed through a bounded queue hands whole chunks to a pool of
``writer_threads`` (saekit.config) that compress and write them, so the forward pass never waits on the disk,
compression uses the machine's cores, and memory stays bounded whatever the number of tokens.

Rows are appended in whole chunks; a commit flushes the rest, then records the row count (and the
running statistics that describe exactly those rows) in the store's attributes, then calls back so
the job can record its resume point. The committed count never runs ahead of the data on disk.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

from saekit._rows import RowAppender
from saekit.activations.stats import RunningStats
from saekit.activations.store import SOURCE_ARRAYS, STORAGE_DTYPES, open_group
from saekit._zarr import create_checked_array
from saekit.errors import ConfigError, StorageError

SOURCE_DTYPES = {"token_ids": "int32", "doc_ids": "int64", "positions": "int32"}


COMPRESSIONS = ("zstd", "lz4", "none")


def compressors(name: str) -> list:
    """The compressors of ``compression=name`` (a crc32c checksum is added after them)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return [ZstdCodec(level=1)]
    if name == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if name == "none":
        return []
    raise ConfigError(f"compression={name!r} is not one of {list(COMPRESSIONS)}")


def chunk_rows_for(d_model: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (d_model * itemsize))


def create_store(location: str, hook_points: list[str], d_model: int, dtype: str, chunk_bytes: int, *,
                 sources: bool = True, attrs: dict | None = None, compression: str = "zstd"):
    """An empty store: one ``[0, d_model]`` array per hook point (and the source arrays)."""
    group = open_group(location, mode="w")
    storage = STORAGE_DTYPES[dtype]
    rows = chunk_rows_for(d_model, np.dtype(storage).itemsize, chunk_bytes)
    for name in hook_points:
        create_checked_array(group, name, shape=(0, d_model), chunks=(rows, d_model), dtype=storage,
                             compressors=compressors(compression))
    if sources:
        for name in SOURCE_ARRAYS:
            create_checked_array(group, name, shape=(0,), chunks=(rows,), dtype=SOURCE_DTYPES[name])
    group.attrs.update({"saekit": "activation_store", "format_version": 1, "hook_points": list(hook_points),
                        "d_model": d_model, "dtype": dtype, "chunk_rows": rows, "compression": compression,
                        "n_tokens": 0, "complete": False, **(attrs or {})})
    return group


class ChunkWriter:
    """Appends rows to a store from its own thread. ``put(rows, stats)`` blocks when ``depth`` batches wait.

    ``rows`` maps array names (hook points and source arrays) to numpy arrays of equal length;
    ``commit(state)`` flushes, records ``n_tokens`` and statistics (unless ``record=False``: a rank of a
    distributed extraction, whose rank 0 records them), then calls ``on_commit(n_tokens, state, stats)``.
    An error on the thread (a full disk, a read-only store) is raised by the next call.
    """

    def __init__(self, group, location: str, names: list[str], hook_points: list[str], start_rows: int,
                 stats: dict[str, RunningStats], on_commit: Callable[[int, dict, dict], None], *,
                 expected_rows: int = 0, depth: int = 4, record: bool = True, threads: int | None = None):
        from saekit.config import config

        self.group, self.location, self.hook_points = group, location, hook_points
        self.record = record  # write n_tokens and the statistics into the store's attributes at each commit
        self.appender = RowAppender(group, names, int(group.attrs["chunk_rows"]), start_rows, expected_rows,
                                    threads=threads if threads is not None else config.get("writer_threads"))
        self.committed = start_rows
        self.stats = stats
        self.on_commit = on_commit
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="saekit-chunk-writer", daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, rows: dict[str, np.ndarray], stats: dict[str, dict]) -> None:
        """Queue rows, with the ``batch_stats`` of each hook point's rows."""
        self._send(("rows", (rows, stats)))

    def commit(self, state: dict) -> None:
        self._send(("commit", state))

    def _send(self, item) -> None:
        while True:  # never block forever on a writer that has stopped
            self._check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise StorageError(f"the writer of {self.location!r} stopped unexpectedly") from None

    def close(self, final_state: dict | None = None, *, trim: bool = False) -> None:
        """Commit ``final_state`` (if given), stop the thread and raise any error it met; ``trim`` cuts the
        arrays to the rows written (when the store is complete)."""
        if final_state is not None and self.error is None:
            self._send(("commit", final_state))
        if self._thread.is_alive():  # it drains the queue even after an error, so this put returns
            self._queue.put(("stop", None))
        self._thread.join()
        try:
            self.appender.close()
        except BaseException as exc:  # noqa: BLE001 - a write in flight failed: the rows after the last commit
            if self.error is None:
                self.error = StorageError(f"writing the store {self.location!r} failed: {type(exc).__name__}: {exc}",
                                          suggestion="fix the cause (space, permissions), then job.resume()")
        self._check()
        if trim:
            self.appender.trim()

    # -- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            if kind == "stop":
                return
            if self.error is not None:
                continue  # drain: the producer sees the error at its next call
            try:
                if kind == "rows":
                    rows, stats = item
                    self.appender.add(rows)
                    for hook_point in self.hook_points:
                        self.stats[hook_point].merge(stats[hook_point])
                else:
                    self.appender.flush()
                    if self.record:
                        self.group.attrs.update({"n_tokens": self.appender.rows,
                                                 "stats": {h: s.to_dict() for h, s in self.stats.items()}})
                    self.committed = self.appender.rows
                    self.on_commit(self.appender.rows, item, self.stats)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self.error = StorageError(
                    f"writing the store {self.location!r} failed: {type(exc).__name__}: {exc}; the "
                    f"{self.committed:,} rows committed before are intact",
                    suggestion="fix the cause (space, permissions), then job.resume()")
                self.error.__cause__ = exc
