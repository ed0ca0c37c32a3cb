"""Appending rows to the Zarr arrays of a store in whole chunks (token stores and activation stores).

Arrays are sized ahead (one metadata write, not one per chunk) and trimmed when the store is complete;
until then a store's committed row count, kept in its attributes, is the truth, and rows past it are
overwritten by a resumed job.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from saekit._zarr import DirectChunks, writable


class RowAppender:
    """Buffers rows and writes them chunk-aligned; ``flush()`` writes what is left (a partial chunk,
    rewritten whole by the next write) and waits for every write, ``trim()`` cuts the arrays to the rows written.

    With ``threads`` > 1 the chunks are compressed and written by that many threads at once (each writes whole
    chunks of its own, so no two touch one chunk), at most ``2 * threads`` chunks in flight; ``flush`` waits for
    them, so a commit never counts a row that is not on disk."""

    def __init__(self, group, names: list[str], chunk_rows: int, rows: int, expected_rows: int = 0, *,
                 threads: int = 1):
        self.group, self.names, self.chunk_rows = group, names, chunk_rows
        self.arrays = {n: writable(group[n]) for n in names}  # every chunk is written, also all-zero ones
        self.rows = rows
        self.capacity = self.arrays[names[0]].shape[0]
        self._buffer: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.buffered = 0
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="saekit-chunks") if self.threads > 1 else None
        self._pending: deque = deque()
        # whole chunks go straight to their files where the array allows it (see DirectChunks); Zarr writes the rest
        self._direct = {n: DirectChunks.of(a) for n, a in self.arrays.items()} if self._pool is not None else {}
        self._reserve(max(expected_rows, rows))

    def add(self, rows: dict[str, np.ndarray]) -> None:
        count = len(rows[self.names[0]])
        if not count:
            return
        for name in self.names:
            self._buffer[name].append(rows[name])
        self.buffered += count
        aligned = (self.rows + self.buffered) // self.chunk_rows * self.chunk_rows - self.rows
        if aligned > 0:
            self._write(aligned)

    def flush(self) -> None:
        if self.buffered:
            self._write(self.buffered)
        self._wait(0)

    def close(self) -> None:
        """Wait for the writes in flight and stop the threads (an error of theirs is raised)."""
        try:
            self._wait(0)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _wait(self, in_flight: int) -> None:
        """Wait until at most ``in_flight`` chunk writes are pending; the first error is raised."""
        while len(self._pending) > in_flight:
            self._pending.popleft().result()

    def trim(self) -> None:
        self._wait(0)
        for array in self.arrays.values():
            array.resize((self.rows, *array.shape[1:]))
        self.capacity = self.rows

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        self._wait(0)  # a resize rewrites the arrays' metadata: not beside chunk writes
        self.capacity = max(rows, 2 * self.capacity, self.chunk_rows)
        for array in self.arrays.values():
            array.resize((self.capacity, *array.shape[1:]))

    def _write(self, count: int) -> None:
        self._reserve(self.rows + count)
        for name in self.names:
            data = np.concatenate(self._buffer[name]) if len(self._buffer[name]) > 1 else self._buffer[name][0]
            if self._pool is None:
                self.arrays[name][self.rows:self.rows + count] = data[:count]
            else:  # one task per chunk: the first piece ends at a chunk boundary, the others are whole chunks
                lo, end = self.rows, self.rows + count
                while lo < end:
                    hi = min(end, (lo // self.chunk_rows + 1) * self.chunk_rows)
                    self._wait(2 * self.threads)
                    piece = data[lo - self.rows:hi - self.rows]
                    direct = self._direct.get(name)
                    if direct is not None and hi - lo == self.chunk_rows and lo % self.chunk_rows == 0:
                        self._pending.append(self._pool.submit(direct.write, lo // self.chunk_rows, piece))
                    else:
                        self._pending.append(self._pool.submit(_put, self.arrays[name], lo, hi, piece))
                    lo = hi
            self._buffer[name] = [data[count:]] if len(data) > count else []
        self.rows += count
        self.buffered -= count


def _put(array, lo: int, hi: int, values: np.ndarray) -> None:
    array[lo:hi] = values
