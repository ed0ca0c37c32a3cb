"""Files and folders: publishing written-aside results atomically, copying folders to and from object storage
(fsspec URLs), removing local paths or URLs, sizes.

Everything saekit writes that others may read while it is written (a saved corpus, a tokenizer, a
checkpoint, a store made in one go) is written into a private sibling folder first and then renamed
into place in one step, so a reader sees all of it or nothing, and two processes making the same
thing at once do not trip over each other: the first rename wins, the second finds it done.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def staging_path(final: str | os.PathLike) -> Path:
    """A private sibling of ``final`` to write into (hidden, unique per process and call)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


def publish(staged: str | os.PathLike, final: str | os.PathLike, *, replace: bool = False) -> bool:
    """Rename ``staged`` (a file or folder) to ``final`` in one step. When ``final`` exists already it is kept
    and ``staged`` removed (False: someone else published first), unless ``replace`` (then an existing
    folder is swapped out and removed)."""
    staged, final = Path(staged), Path(final)
    if replace and final.is_dir() and not final.is_symlink():
        old: Path | None
        old = staging_path(final)
        try:
            os.rename(final, old)
        except FileNotFoundError:
            old = None
        os.rename(staged, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        if staged.is_dir():
            os.rename(staged, final)  # fails when final is a non-empty folder: never merges two
        elif replace:
            os.replace(staged, final)
        else:
            os.link(staged, final)  # fails when final exists, unlike a rename of a file
            os.unlink(staged)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not final.exists():
            raise
        remove(staged)
        return False


@contextmanager
def publishing(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """``with publishing(folder) as tmp:`` write into ``tmp``; on success it becomes ``folder`` in one
    rename (see ``publish``), on an error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(final)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    publish(tmp, final, replace=replace)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = False) -> None:
    """Replace the file ``path`` with ``data`` in one rename (``durable``: fsync first)."""
    path = Path(path)
    tmp = staging_path(path)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def upload(folder: str | os.PathLike, url: str, *, last: str | None = None) -> None:
    """Copy the local ``folder`` to ``url`` (an fsspec URL such as ``s3://bucket/x``), file by file, with
    ``last`` (a file name inside it) written after all the others: object stores have no rename, so a
    reader takes that file's presence as the sign that the rest is there."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)  # stable: ``last`` goes last
    for path in files:
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(folder).as_posix()}")


def download(url: str, folder: str | os.PathLike) -> Path:
    """Copy every object under ``url`` into the local ``folder`` (made if absent); returns ``folder``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    folder = Path(folder)
    root = root.rstrip("/")
    found = [p for p in fs.find(root) if p.rstrip("/") != root]
    if not found:
        raise FileNotFoundError(url)
    for key in found:
        target = folder / key[len(root) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
    return folder


def remote_names(url: str) -> list[str]:
    """The names directly under ``url`` (objects and prefixes), sorted; [] when there is nothing."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root.rstrip("/"), detail=False))
    except FileNotFoundError:
        return []


def open_file(location: str | os.PathLike, name: str):
    """The file ``name`` inside ``location`` (a folder or an fsspec URL), open for binary reading;
    ``FileNotFoundError`` when it is not there."""
    if not is_url(location):
        return open(Path(location) / name, "rb")
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(location))
    return fs.open(f"{root.rstrip('/')}/{name}", "rb")


def read_file(location: str | os.PathLike, name: str) -> bytes | None:
    """The bytes of ``name`` inside ``location`` (a folder or an fsspec URL), or None when it is not there."""
    try:
        with open_file(location, name) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def remove(location: str | os.PathLike | None) -> None:
    """Delete a file or folder, local or at an fsspec URL (``memory://``, ``s3://`` ...); absent is fine."""
    if location is None:
        return
    if is_url(location):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(str(location))
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
        return
    if not os.path.lexists(location):
        return
    if os.path.isdir(location) and not os.path.islink(location):
        shutil.rmtree(location, ignore_errors=True)
    else:
        try:
            os.remove(location)
        except FileNotFoundError:
            pass


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
