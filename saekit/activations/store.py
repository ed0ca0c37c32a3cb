"""``ActivationStore``: activations in a Zarr group, one ``[n_tokens, d_model]`` array per hook point.

Beside them, ``token_ids`` (int32), ``doc_ids`` (int64) and ``positions`` (int32) map each row back to its
source. Arrays are chunked by rows. Zarr has no bfloat16: bfloat16 rows are stored as their uint16 bits
(attribute ``dtype: "bfloat16"``) and read back zero-copy as ``torch.bfloat16``. Only the first
``n_tokens`` rows (the committed count in the attributes) are ever read.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from saekit._fs import is_url, publishing, remove
from saekit._table import ObjectTable
from saekit._zarr import exists, open_group, read_rows, verify_rows, writable  # noqa: F401 (re-exported)
from saekit.config import config
from saekit.activations.stats import RunningStats
from saekit.errors import ConfigError, DataError
from saekit.workspace import Workspace, as_workspace

SOURCE_ARRAYS = ("token_ids", "doc_ids", "positions")
STORAGE_DTYPES = {"bfloat16": "uint16", "float16": "float16", "float32": "float32"}
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def to_torch(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows as a tensor of their true dtype (bfloat16 bits are viewed, not copied)."""
    tensor = torch.from_numpy(np.ascontiguousarray(rows))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def check_array_name(name) -> None:
    """A hook point (or other array) name must be a plain name: letters, digits, ``_ . -``, no ``..``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name) or ".." in name:
        raise ConfigError(f"{name!r} is not a usable array name; use letters, digits, '_', '.' and '-' "
                          "(e.g. 'blocks.6.resid_post'), without '/' or '..'")


def store_location(ws: Workspace, store_id: str, root: str | Path | None = None) -> str:
    base = str(root).rstrip("/") if root is not None else str(ws.path / "activations")
    return f"{base}/{store_id}.zarr"


class ActivationStore:
    """Activations on disk (or any fsspec store). ``store[hook_point]`` is the Zarr array of a hook point
    (or of ``token_ids``, ``doc_ids``, ``positions``); ``batches(...)`` streams shuffled training batches."""

    def __init__(self, location: str | Path, workspace: Workspace | str | None = None):
        self.location = str(location)
        self.id = self.location.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
        self.workspace = as_workspace(workspace)
        if not exists(self.location):
            raise DataError(f"no activation store at {self.location!r}; sk.activation_stores() lists them")
        self.group = open_group(self.location, mode="r")
        if self.group.attrs.get("saekit") != "activation_store":
            raise DataError(f"{self.location!r} is a Zarr group but not a saekit activation store")
        arrays = [*self.hook_points, *(a for a in SOURCE_ARRAYS if a in self.group)]
        verify_rows(self.location, self.group, arrays, self.n_tokens, "activation store")

    @classmethod
    def open(cls, store_id_or_location: str | Path, workspace: Workspace | str | None = None) -> "ActivationStore":
        """Open a store by id (in the workspace), local path or fsspec URL."""
        ws = as_workspace(workspace)
        location = str(store_id_or_location)
        if not is_url(location) and not Path(location).exists():
            location = store_location(ws, location)
        return cls(location, ws)

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def hook_points(self) -> list[str]:
        return list(self.group.attrs["hook_points"])

    @property
    def n_tokens(self) -> int:
        """Rows committed (all of them once the extraction completed)."""
        return int(self.group.attrs.get("n_tokens", 0))

    @property
    def d_model(self) -> int:
        return int(self.group.attrs["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.group.attrs["dtype"]]

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def __len__(self) -> int:
        return self.n_tokens

    def __getitem__(self, name: str):
        if name not in self.hook_points and name not in SOURCE_ARRAYS:
            raise KeyError(f"{name!r} is not an array of activation store {self.id}; it has "
                           f"{self.hook_points + [a for a in SOURCE_ARRAYS if a in self.group]}")
        return self.group[name]

    def check_hook_point(self, hook_point: str) -> None:
        if hook_point not in self.hook_points:
            raise ConfigError(f"{hook_point!r} is not in activation store {self.id}; it holds {self.hook_points}",
                              suggestion=f"use one of {self.hook_points}, or extract {hook_point!r} with sk.extract")

    def read(self, hook_point: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of a hook point as a tensor of the stored dtype."""
        self.check_hook_point(hook_point)
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        return to_torch(self._read(hook_point, start, stop), self.group.attrs["dtype"])

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        return read_rows(self.group[name], start, stop, location=self.location, name=name)

    def sources(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """``token_ids``, ``doc_ids`` and ``positions`` of rows ``start:stop`` (what each row came from)."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        missing = [a for a in SOURCE_ARRAYS if a not in self.group]
        if missing:
            raise DataError(f"activation store {self.id} has no {missing} arrays (made by from_array?): its rows "
                            "cannot be traced back to tokens", suggestion="extract activations with sk.extract")
        return {a: self._read(a, start, stop) for a in SOURCE_ARRAYS}

    def stats(self, hook_point: str) -> dict:
        """Mean and variance per dimension (numpy), mean norm, max |x| and count, over all committed rows."""
        self.check_hook_point(hook_point)
        stats = RunningStats.from_dict(self.group.attrs["stats"][hook_point])
        return {**stats.summary(), "mean": stats.mean, "var": stats.var}

    # -- streaming ------------------------------------------------------------------------------------
    def batches(self, hook_point: str | Sequence[str], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                start_step: int = 0, epochs: int | None = 1, buffer_bytes: int = 256 * 2**20, prefetch: int = 2,
                device: str | torch.device | None = None, rows: int | None = None,
                preload: bool = False) -> Iterator[torch.Tensor]:
        """Batches ``[batch_size, d_model]`` of one hook point, deterministic for a seed (several hook points:
        their rows side by side, ``[batch_size, n * d_model]``, the same token in each row: a transcoder's
        input and target).

        Rows are read chunk by chunk in a seeded random order; each window of chunks (about
        ``buffer_bytes``) is shuffled as a whole; batches are consecutive slices of that stream, across
        windows and epochs, so every batch is full but the last (``epochs=None`` streams forever).
        ``start_step=k`` resumes exactly at batch k without reading the data before it. A thread
        prefetches ``prefetch`` windows ahead. ``rows=n`` uses only the first ``n`` rows (the rest can be
        held out for evaluation). ``preload=True`` reads those rows once onto ``device`` (a GPU whose memory
        holds them) and gathers every batch there: the same batches, no reading while training.
        """
        names = [hook_point] if isinstance(hook_point, str) else list(hook_point)
        for name in names:
            self.check_hook_point(name)
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        n = self.n_tokens if rows is None else min(rows, self.n_tokens)
        if n <= 0:
            raise DataError(f"activation store {self.id} has no committed rows yet" if rows is None
                            else f"rows={rows} leaves no rows of activation store {self.id} to read")
        arrays = [self.group[name] for name in names]
        array = arrays[0]
        plan = _WindowPlan(n, array.chunks[0], array.chunks[0] * self.d_model * array.dtype.itemsize * len(arrays),
                           shuffle, seed, buffer_bytes)
        dtype = self.group.attrs["dtype"]
        target = None if device is None else torch.device(device)
        start_row = start_step * batch_size
        stop_row = None if epochs is None else epochs * n
        if stop_row is not None and start_row >= stop_row:
            return
        if preload:
            yield from self._preloaded(names, n, plan, start_row, stop_row, batch_size, target)
            return
        # a window in the reading buffer plus (prefetch - 1) windows of pieces in the queue
        readers = ThreadPoolExecutor(max_workers=config.get("reader_threads"), thread_name_prefix="saekit-read")
        reads = [functools.partial(read_rows, a, location=self.location, name=name) for a, name in zip(arrays, names)]
        read = reads[0] if len(reads) == 1 else (lambda lo, hi: np.concatenate([r(lo, hi) for r in reads], axis=1))
        windows = Prefetcher(plan.windows_from(start_row, stop_row, read, dtype, readers),
                              max(1, prefetch - 1) * plan.pieces_per_window)
        try:
            for batch in _rebatch(windows, batch_size, torch.cat):
                yield batch.to(target, non_blocking=True) if target is not None else batch
        finally:
            windows.close()
            readers.shutdown(wait=False, cancel_futures=True)

    def _preloaded(self, names: list[str], n: int, plan: "_WindowPlan", start_row: int, stop_row: int | None,
                   batch_size: int, target: torch.device | None) -> Iterator[torch.Tensor]:
        data = torch.cat([self.read(name, 0, n) for name in names], 1) if len(names) > 1 else self.read(names[0], 0, n)
        if target is not None:
            data = data.to(target)
        for take in _rebatch(plan.indices_from(start_row, stop_row), batch_size, np.concatenate):
            yield data.index_select(0, torch.from_numpy(take).to(data.device))

    # -- management -----------------------------------------------------------------------------------
    @classmethod
    def from_array(cls, x, hook_point: str = "custom", *, workspace: Workspace | str | None = None,
                   chunk_bytes: int = 4 * 2**20) -> "ActivationStore":
        """Wrap activations you already have (numpy or torch, ``[..., d_model]``) as a store named by their
        content, under ``<workspace>/activations/``; the same data twice is the same store. ``x`` may be a dict
        ``{hook_point: rows}`` of several hook points of the same tokens (as wide and as many rows each, e.g. a
        transcoder's input and target); ``hook_point`` is then unused."""
        ws = as_workspace(workspace)
        given = x if isinstance(x, dict) else {hook_point: x}
        if not given:
            raise ConfigError("from_array got an empty dict; give {hook_point: rows}")
        tensors = {name: _rows_of(name, rows, named=len(given) > 1) for name, rows in given.items()}
        first = next(iter(tensors.values()))
        if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors.values()):
            shapes = {name: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for name, t in tensors.items()}
            raise ConfigError(f"from_array's hook points must have the same rows, width and dtype; got {shapes}")
        names = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
        dtype = names[first.dtype]
        bits = {name: t.view(torch.uint16).numpy() if dtype == "bfloat16" else t.numpy() for name, t in tensors.items()}
        digest = hashlib.sha256()
        for name, array in bits.items():
            digest.update(name.encode() if len(bits) > 1 else b"")  # one hook point: the id it always had
            digest.update(array.tobytes())
        label = "+".join(bits) if len(bits) > 1 else next(iter(bits))
        store_id = f"array-{label.replace('/', '_')}-{digest.hexdigest()[:12]}"
        location = store_location(ws, store_id)
        if not exists(location):
            from saekit.activations.writer import create_store

            ws.dir("activations")
            with publishing(location) as tmp:  # all or nothing; the same array made twice at once: one wins
                group = create_store(str(tmp), list(bits), first.shape[1], dtype, chunk_bytes, sources=False,
                                     attrs={"source": "array", "job_id": None})
                stats = {}
                for name, array_bits in bits.items():
                    array = writable(group[name])
                    array.resize(array_bits.shape)  # from_array writes once: no need to size ahead
                    array[:] = array_bits
                    running = RunningStats(first.shape[1])
                    for lo in range(0, len(array_bits), 65536):
                        running.update(tensors[name][lo:lo + 65536])
                    stats[name] = running.to_dict()
                group.attrs.update({"n_tokens": len(first), "stats": stats, "complete": True})
        return cls(location, ws)

    @classmethod
    def from_blocks(cls, blocks, name: str, hook_point: str, n_tokens: int, d_model: int, *,
                    workspace: Workspace | str | None = None, chunk_bytes: int = 4 * 2**20,
                    attrs: dict | None = None) -> "ActivationStore":
        """A float32 store of one hook point written from ``blocks`` (an iterable of ``[rows, d_model]`` tensors,
        ``n_tokens`` rows in all) one block at a time, so it may be larger than memory. It is ``array-{name}``, a
        store of data you made as ``from_array``'s are, and ``name`` should say what the rows are: a store of that
        name is returned as it is. The store appears only once complete."""
        ws = as_workspace(workspace)
        check_array_name(name)
        store_id = f"array-{name}"
        location = store_location(ws, store_id)
        if exists(location):
            return cls(location, ws)
        from saekit.activations.writer import create_store

        ws.dir("activations")
        with publishing(location) as tmp:
            group = create_store(str(tmp), [hook_point], d_model, "float32", chunk_bytes, sources=False,
                                 attrs={"source": "array", "job_id": None, **(attrs or {})})
            array = writable(group[hook_point])
            array.resize((n_tokens, d_model))
            running, written = RunningStats(d_model), 0
            for block in blocks:
                block = torch.as_tensor(block, dtype=torch.float32)
                if block.ndim != 2 or block.shape[1] != d_model or written + len(block) > n_tokens:
                    raise ConfigError(f"block {tuple(block.shape)} after {written:,} rows does not fit a store of "
                                      f"{n_tokens:,} rows x {d_model}")
                array[written:written + len(block)] = block.numpy()
                running.update(block)
                written += len(block)
            if written != n_tokens:
                raise ConfigError(f"the blocks held {written:,} rows; the store was to hold {n_tokens:,}")
            group.attrs.update({"n_tokens": n_tokens, "stats": {hook_point: running.to_dict()}, "complete": True})
        return cls(location, ws)

    def delete(self) -> None:
        """Delete the store, and the job that made it."""
        from saekit import registry
        from saekit.jobs import Job

        job_id = self.group.attrs.get("job_id")
        if job_id and registry.get_job(self.workspace, job_id) is not None:
            Job(job_id, self.workspace).delete()
        remove(self.location)

    def __repr__(self) -> str:
        state = "" if self.complete else ", incomplete"
        return (f"ActivationStore({self.id!r}, {self.n_tokens:,} tokens x {self.d_model}, "
                f"{', '.join(self.hook_points)}, {self.group.attrs['dtype']}{state})")


def _rows_of(name: str, x, named: bool = False) -> torch.Tensor:
    """``x`` as ``[rows, d_model]`` float rows on the CPU, checked (a hook point name, rank, finite values); errors
    name the hook point when ``named``."""
    check_array_name(name)
    tensor = torch.as_tensor(x).detach().cpu()
    if tensor.ndim < 2:
        raise ConfigError(f"from_array needs rows of activations [..., d_model]; got shape {tuple(tensor.shape)}"
                          + (f" for {name!r}" if named else ""))
    tensor = tensor.reshape(-1, tensor.shape[-1]).contiguous()
    if tensor.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        tensor = tensor.float()
    bad = ~torch.isfinite(tensor).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        raise DataError(f"from_array: {len(rows):,} of {len(tensor):,} rows" + (f" of {name!r}" if named else "")
                        + f" hold NaN or infinity (the first is row {int(rows[0])}); activations must be finite",
                        suggestion="drop or fix those rows (e.g. x[torch.isfinite(x).all(-1)]) before wrapping them")
    return tensor


def _rebatch(pieces: Iterator, size: int, concat) -> Iterator:
    """Pieces of any lengths (tensors or arrays) cut into consecutive runs of ``size`` rows; the last
    may be shorter."""
    pending, pending_rows = [], 0
    for piece in pieces:
        pending.append(piece)
        pending_rows += len(piece)
        while pending_rows >= size:
            joined = concat(pending) if len(pending) > 1 else pending[0]
            batch, rest = joined[:size], joined[size:]
            pending, pending_rows = ([rest] if len(rest) else []), len(rest)
            yield batch
    if pending_rows:
        yield concat(pending) if len(pending) > 1 else pending[0]


class _WindowPlan:
    """Which rows come in which order: chunks in a seeded permutation per epoch, windows of chunks
    shuffled as a whole. Pure arithmetic until a window is read, so any step can be the first."""

    PIECE_ROWS = 8192  # a shuffled window is handed over in pieces of this many rows

    def __init__(self, n: int, chunk_rows: int, chunk_bytes: int, shuffle: bool, seed: int, buffer_bytes: int):
        self.n, self.chunk_rows, self.shuffle, self.seed = n, chunk_rows, shuffle, seed
        self.n_chunks = -(-n // chunk_rows)
        self.per_window = max(1, buffer_bytes // max(1, chunk_bytes)) if shuffle else 1
        self.pieces_per_window = max(1, -(-self.per_window * chunk_rows // self.PIECE_ROWS))
        self._buffer: np.ndarray | None = None

    def _chunk_rows(self, c: int) -> int:
        return min(self.chunk_rows, self.n - c * self.chunk_rows)

    def _epoch(self, epoch: int) -> list[list[int]]:
        order = np.arange(self.n_chunks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_chunks)
        return [order[i:i + self.per_window].tolist() for i in range(0, self.n_chunks, self.per_window)]

    def _shuffled(self, parts: list[np.ndarray], size: int, order: np.ndarray, offset: int, end: int,
                  dtype: str) -> Iterator[torch.Tensor]:
        """Rows ``offset:end`` of the window in its shuffled ``order``, gathered a piece at a time from a
        buffer kept across windows (a fresh window-sized array would page-fault on every window)."""
        permutation = torch.from_numpy(order)
        if self._buffer is None or len(self._buffer) < size or self._buffer.shape[1:] != parts[0].shape[1:]:
            self._buffer = np.empty((size, *parts[0].shape[1:]), dtype=parts[0].dtype)
        window = self._buffer[:size]
        np.concatenate(parts, out=window)
        bits = window.dtype == np.uint16  # bfloat16 bits: gathered as int16, which torch indexes
        rows = torch.from_numpy(window.view(np.int16) if bits else window)
        for lo in range(offset, end, self.PIECE_ROWS):
            piece = rows.index_select(0, permutation[lo:min(end, lo + self.PIECE_ROWS)]).numpy()
            yield to_torch(piece.view(np.uint16) if bits else piece, dtype)

    def _windows(self, start_row: int, stop_row: int | None):
        """The windows the stream passes from ``start_row`` (to ``stop_row``): (epoch, index, chunks, size,
        offset, end) with rows ``offset:end`` of the (shuffled) window in the stream; pure arithmetic."""
        epoch, offset = divmod(start_row, self.n)
        position = epoch * self.n
        while stop_row is None or position < stop_row:
            for w, chunks in enumerate(self._epoch(epoch)):
                size = sum(self._chunk_rows(c) for c in chunks)
                if offset >= size:  # skipped without reading
                    offset -= size
                    position += size
                    continue
                end = size if stop_row is None else min(size, stop_row - position)
                yield epoch, w, chunks, size, offset, end
                position += size
                offset = 0
                if stop_row is not None and position >= stop_row:
                    return
            epoch += 1

    def _permutation(self, epoch: int, w: int, size: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, w]).permutation(size)

    def windows_from(self, start_row: int, stop_row: int | None, read, dtype: str, readers) -> Iterator[torch.Tensor]:
        """The stream's rows from ``start_row`` (to ``stop_row``), one shuffled window at a time, its chunks
        read (and decompressed: ``read(lo, hi)``) by the ``readers`` thread pool."""
        for epoch, w, chunks, size, offset, end in self._windows(start_row, stop_row):
            parts = list(readers.map(lambda c: read(c * self.chunk_rows, c * self.chunk_rows + self._chunk_rows(c)),
                                     chunks))
            if self.shuffle:
                yield from self._shuffled(parts, size, self._permutation(epoch, w, size), offset, end, dtype)
            else:
                yield to_torch(np.concatenate(parts)[offset:end], dtype)

    def indices_from(self, start_row: int, stop_row: int | None) -> Iterator[np.ndarray]:
        """The same stream as row numbers (for data already in memory), one window at a time."""
        for epoch, w, chunks, size, offset, end in self._windows(start_row, stop_row):
            ids = np.concatenate([np.arange(c * self.chunk_rows, c * self.chunk_rows + self._chunk_rows(c))
                                  for c in chunks])
            if self.shuffle:
                ids = ids[self._permutation(epoch, w, size)]
            yield ids[offset:end]


class Prefetcher:
    """Runs a generator on a thread, ``depth`` items ahead; ``close()`` stops it."""

    _END = object()

    def __init__(self, source: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="saekit-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue ``item`` unless the consumer has stopped (a consumer gone never frees a full queue)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()


STORE_COLUMNS = ("id", "status", "model", "tokens", "hook_points", "n_tokens", "d_model", "dtype", "created_at")


def activation_stores(workspace: Workspace | str | None = None) -> ObjectTable:
    """Every activation store of the workspace: extraction jobs (any state) merged with stores found on
    disk that no job record knows, listed as ``orphan`` (or ``array`` for ``from_array`` stores)."""

    from saekit import registry

    ws = as_workspace(workspace)
    rows, seen = [], set()
    for job_row in registry.list_jobs(ws, kind="extract", with_spec=True):
        spec = job_row.spec_dict
        location = store_location(ws, job_row.id, spec.get("root"))
        seen.add(location)
        attrs = open_group(location, "r").attrs if exists(location) else {}
        rows.append(_store_row(job_row.id, str(job_row.status), spec, attrs, job_row.created_at, location))
    folder = ws.path / "activations"
    for path in sorted(folder.glob("*.zarr")) if folder.is_dir() else []:
        if str(path) in seen:
            continue
        try:
            store = ActivationStore(path, ws)
        except DataError:
            continue
        status = "array" if store.attrs.get("source") == "array" else "orphan"
        rows.append(_store_row(store.id, status, store.attrs, store.attrs, None, str(path)))
    return ObjectTable(rows, STORE_COLUMNS, open=lambda row: ActivationStore(row["location"], ws),
                       empty=f"no activation stores in {str(ws.path)!r}; make one with sk.extract(lm, tokens, [...])")


def _store_row(store_id: str, status: str, spec: dict, attrs, created, location: str) -> dict:
    model = (spec.get("model") or {}).get("name_or_path")
    return {"id": store_id, "status": status, "model": Path(model).name if model else None,
            "tokens": (spec.get("tokens") or {}).get("id"), "hook_points": ", ".join(spec.get("hook_points", [])),
            "n_tokens": attrs.get("n_tokens"), "d_model": attrs.get("d_model"), "dtype": spec.get("dtype"),
            "created_at": created, "location": location}
