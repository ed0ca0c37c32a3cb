"""Appending rows to the Zarr arrays of a store in whole chunks (token stores and activation stores).

Arrays are sized ahead (one metadata write, not one per chunk) and trimmed when the store is complete;
until then a store's committed row count, kept in its attributes, is the truth, and rows past it are
overwritten by a resumed job.
"""

from __future__ import annotations

import numpy as np

from saekit._zarr import writable


class RowAppender:
    """Buffers rows and writes them chunk-aligned; ``flush()`` writes what is left (a partial chunk,
    rewritten whole by the next write), ``trim()`` cuts the arrays to the rows written."""

    def __init__(self, group, names: list[str], chunk_rows: int, rows: int, expected_rows: int = 0):
        self.group, self.names, self.chunk_rows = group, names, chunk_rows
        self.arrays = {n: writable(group[n]) for n in names}  # every chunk is written, also all-zero ones
        self.rows = rows
        self.capacity = self.arrays[names[0]].shape[0]
        self._buffer: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.buffered = 0
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

    def trim(self) -> None:
        for array in self.arrays.values():
            array.resize((self.rows, *array.shape[1:]))
        self.capacity = self.rows

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        self.capacity = max(rows, 2 * self.capacity, self.chunk_rows)
        for array in self.arrays.values():
            array.resize((self.capacity, *array.shape[1:]))

    def _write(self, count: int) -> None:
        self._reserve(self.rows + count)
        for name in self.names:
            data = np.concatenate(self._buffer[name]) if len(self._buffer[name]) > 1 else self._buffer[name][0]
            self.arrays[name][self.rows:self.rows + count] = data[:count]
            self._buffer[name] = [data[count:]] if len(data) > count else []
        self.rows += count
        self.buffered -= count
