"""Zarr arrays that cannot be silently wrong: checksummed chunks, every chunk written, reads checked.

Zarr reads a missing chunk as its fill value (zeros) and does not write chunks that equal it, so a lost
chunk file would read as zeros without a word. saekit's arrays are therefore created with a crc32c
checksum after compression and written with ``write_empty_chunks``; a store is verified when it is
opened (every chunk of the committed rows exists, and the shapes hold the committed rows), and a chunk
that fails to decode raises ``StorageError`` naming the store, the array and the chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from saekit._fs import is_url
from saekit.errors import StorageError

WRITE_CONFIG = {"write_empty_chunks": True}


def open_group(location: str | Path, mode: Literal["r", "r+", "a", "w", "w-"]):
    """A Zarr group at a local path or an fsspec URL (``file://``, ``memory://``, ``s3://`` ...)."""
    import zarr

    location = str(location)
    if is_url(location):
        options = {"auto_mkdir": True} if location.startswith("file://") else None
        return zarr.open_group(location, mode=mode, storage_options=options)
    return zarr.open_group(location, mode=mode)


def exists(location: str | Path) -> bool:
    """Whether a Zarr group is at ``location`` (a path or an fsspec URL)."""
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(location))
        return fs.exists(path.rstrip("/") + "/zarr.json")
    return (Path(location) / "zarr.json").exists()


def _checksum():
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def create_checked_array(group, name: str, *, compressors=None, **kwargs):
    """``group.create_array`` with a crc32c checksum after the compressors and every chunk written."""
    if compressors is None:
        from zarr.codecs import ZstdCodec

        compressors = [ZstdCodec(level=1)]
    elif not isinstance(compressors, (list, tuple)):
        compressors = [compressors]
    return group.create_array(name, compressors=[*compressors, _checksum()], config=WRITE_CONFIG, **kwargs)


def writable(array):
    """``array`` configured to write every chunk, also those that equal the fill value."""
    return array.with_config(WRITE_CONFIG)


class DirectChunks:
    """Whole chunks of one array of a local store, encoded as Zarr encodes them (the array's bytes, then zstd
    or nothing, then the crc32c checksum) and written straight to their files, each in one rename.

    Zarr's own write path spends milliseconds of Python per chunk holding the interpreter lock; beside a
    model's forward pass (Python too) on a GPU that lock, not the cores, limited extraction. Here the
    compression and the file write release it and the rest is a few calls. ``of`` returns None for what it does
    not write byte for byte as Zarr would (other codecs, several column chunks, object storage): Zarr writes those.
    """

    def __init__(self, folder: Path, key, dtype: np.dtype, chunk_shape: tuple[int, ...], compress):
        self.folder, self.key, self.dtype, self.chunk_shape, self.compress = folder, key, dtype, chunk_shape, compress

    @classmethod
    def of(cls, array) -> DirectChunks | None:
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
        from zarr.storage import LocalStore

        codecs = tuple(array.metadata.codecs)
        if not isinstance(array.store, LocalStore) or tuple(array.chunks[1:]) != tuple(array.shape[1:]):
            return None
        if not (len(codecs) >= 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[-1], Crc32cCodec)
                and (codecs[0].endian is None or codecs[0].endian.value == "little")):
            return None
        middle = codecs[1:-1]
        if not middle:
            compress = None
        elif len(middle) == 1 and isinstance(middle[0], ZstdCodec):
            from numcodecs import Zstd

            compress = Zstd(level=middle[0].level, checksum=middle[0].checksum).encode
        else:
            return None
        folder = Path(array.store.root) / array.path
        return cls(folder, array.metadata.chunk_key_encoding.encode_chunk_key, np.dtype(array.dtype),
                   tuple(array.chunks), compress)

    def write(self, index: int, values: np.ndarray) -> None:
        """Write chunk ``index`` (along the rows): ``values`` fill it whole."""
        import google_crc32c

        from saekit._fs import write_atomic

        data = np.ascontiguousarray(values, dtype=self.dtype)
        if data.shape != self.chunk_shape:
            raise ValueError(f"a direct chunk write needs a whole chunk {self.chunk_shape}; got {data.shape}")
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        encoded = bytes(self.compress(data)) if self.compress is not None else data.tobytes()
        path = self.folder / self.key((index, *[0] * (len(self.chunk_shape) - 1)))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, encoded + np.uint32(google_crc32c.value(encoded)).tobytes())


def _stored_keys(location: str, name: str) -> set[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(location))
    prefix = f"{root.rstrip('/')}/{name}/c"
    try:
        found = fs.find(prefix)
    except FileNotFoundError:
        return set()
    start = len(root.rstrip("/")) + len(name) + 2
    return {path[start:] for path in (p.replace("\\", "/") for p in found)}


def verify_rows(location: str, group, names: list[str], rows: int, what: str) -> None:
    """Raise ``StorageError`` unless every array in ``names`` holds ``rows`` rows whose chunks all exist."""
    for name in names:
        array = group[name]
        if array.shape[0] < rows:
            raise StorageError(f"{what} {location!r}: array {name!r} has {array.shape[0]:,} rows but {rows:,} are "
                               "committed; its metadata was changed or cut",
                               suggestion="restore the store from a copy, or delete it and run its job again")
        chunk_rows = array.chunks[0]
        needed = -(-rows // chunk_rows)
        if needed == 0:
            continue
        stored = _stored_keys(location, name)
        encode = array.metadata.chunk_key_encoding.encode_chunk_key
        column_chunks = [range(-(-n // c)) for n, c in zip(array.shape[1:], array.chunks[1:])]
        for i in range(needed):
            for rest in np.ndindex(*[len(r) for r in column_chunks]) if column_chunks else [()]:
                key = encode((i, *rest))
                if key not in stored:
                    raise StorageError(
                        f"{what} {location!r}: chunk {key!r} of array {name!r} (rows {i * chunk_rows:,}-"
                        f"{min(rows, (i + 1) * chunk_rows) - 1:,}) is missing; it would read as zeros",
                        suggestion="restore the file from a copy, or delete the store and run its job again")


def read_rows(array, lo: int, hi: int, *, location: str, name: str) -> np.ndarray:
    """``array[lo:hi]``, with a chunk that fails its checksum or to decompress named in a ``StorageError``."""
    try:
        return np.asarray(array[lo:hi])
    except (ValueError, RuntimeError, OSError) as exc:
        raise _damaged(array, lo, hi, location, name, exc) from exc


def read_selection(array, selection, *, location: str, name: str) -> np.ndarray:
    """``array.oindex[selection]`` with the same error translation as ``read_rows``."""
    try:
        return np.asarray(array.oindex[selection])
    except (ValueError, RuntimeError, OSError) as exc:
        rows = sorted(selection[0]) if selection and len(selection[0]) else [0]
        raise _damaged(array, rows[0], rows[-1] + 1, location, name, exc) from exc


def _damaged(array, lo: int, hi: int, location: str, name: str, exc: Exception) -> StorageError:
    chunk_rows = array.chunks[0]
    bad = None
    for i in range(lo // chunk_rows, -(-hi // chunk_rows)):  # find the chunk (rare path: read each once)
        try:
            array[i * chunk_rows:min((i + 1) * chunk_rows, array.shape[0])]
        except Exception:  # noqa: BLE001
            bad = i
            break
    where = (f"chunk {bad} (rows {bad * chunk_rows:,}-{(bad + 1) * chunk_rows - 1:,})" if bad is not None
             else f"rows {lo:,}-{hi - 1:,}")
    return StorageError(f"store {location!r}: {where} of array {name!r} is damaged "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                        suggestion="restore the file from a copy, or delete the store and run its job again")
