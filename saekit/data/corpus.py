"""Corpora: text documents from local files, folders, the HF hub, or a ``datasets.Dataset`` you already have.

A ``Corpus`` enters a job spec by reference (``ref``: how to load it again) plus a fingerprint of its
content; an in-memory dataset is first saved into the workspace so a background worker can load it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

from saekit._fs import publishing
from saekit._quiet import quietly_importing
from saekit.errors import ConfigError, DataError
from saekit.workspace import Workspace, as_workspace

_BUILDERS = {".txt": "text", ".md": "text", ".rst": "text", ".text": "text", ".json": "json", ".jsonl": "json",
             ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def _builder_for(files: list[str]) -> str:
    kinds = {_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise ConfigError(
            f"cannot tell the format of {files[:3]}{'...' if len(files) > 3 else ''}; give one kind of file "
            f"({', '.join(sorted(set(_BUILDERS)))}) or name the builder, e.g. sk.load_corpus('json', data_files=[...])"
        )
    return cast(str, kinds.pop())  # None refused above


TEXT_DTYPES = ("string", "large_string")


def _pick_text_column(columns: list[str], text_column: str | None, features) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise DataError(f"text_column={text_column!r} is not a column of this corpus; its columns are {columns}")
        chosen = text_column
    elif "text" in columns:
        chosen = "text"
    else:
        strings = [c for c in columns if getattr(features.get(c), "dtype", None) in TEXT_DTYPES]
        if len(strings) != 1:
            raise DataError(f"this corpus has no 'text' column; pass text_column= one of its columns {columns}")
        chosen = strings[0]
    dtype = getattr(features.get(chosen), "dtype", None)
    if dtype not in (*TEXT_DTYPES, "null"):  # null: no values at all (an empty corpus, said elsewhere)
        raise DataError(f"the text column {chosen!r} holds {dtype or type(features.get(chosen)).__name__}, not text "
                        "(it would be turned into strings silently)",
                        suggestion="convert it deliberately, e.g. ds.map(lambda r: {'text': str(r['text'])}), or pick "
                                   "another text_column=")
    return chosen


class Corpus:
    """Documents to tokenize: one ``datasets.Dataset`` per split, the text column, and a reference
    (``ref``) that loads the same data again in another process."""

    def __init__(self, splits: dict, text_column: str, ref: dict | None, fingerprint: str):
        self.splits = splits
        self.text_column = text_column
        self.ref = ref
        self.fingerprint = fingerprint

    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def __len__(self) -> int:
        return sum(len(ds) for ds in self.splits.values())

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Documents ``start:stop`` of the corpus (splits in order), as strings."""
        stop = len(self) if stop is None else min(stop, len(self))
        out, offset = [], 0
        for ds in self.splits.values():
            lo, hi = max(start - offset, 0), min(stop - offset, len(ds))
            if lo < hi:
                out += [t if isinstance(t, str) else ("" if t is None else str(t))
                        for t in ds[lo:hi][self.text_column]]
            offset += len(ds)
        return out

    def split_of(self) -> list[tuple[str, int, int]]:
        """``(split, first_document, end_document)`` of each split."""
        out, offset = [], 0
        for name, ds in self.splits.items():
            out.append((name, offset, offset + len(ds)))
            offset += len(ds)
        return out

    def head(self, n: int = 3) -> list[str]:
        return self.texts(0, n)

    @quietly_importing("datasets")
    def spec(self, workspace: Workspace | str | None = None) -> dict:
        """What a job spec holds: the reference and the fingerprint (saving an in-memory corpus first)."""
        if self.ref is None:
            ws = as_workspace(workspace)
            folder = ws.path / "corpora" / self.fingerprint
            if not (folder / "saekit_corpus.json").exists():
                ws.dir("corpora")
                with publishing(folder) as tmp:  # a concurrent first save of the same corpus: one wins
                    for name, ds in self.splits.items():
                        ds.save_to_disk(str(tmp / name))
                    (tmp / "saekit_corpus.json").write_text(json.dumps({"splits": list(self.splits)}))
            self.ref = {"path": str(folder), "saved": True, "splits": list(self.splits)}
        return {"ref": self.ref, "text_column": self.text_column, "fingerprint": self.fingerprint}

    @classmethod
    @quietly_importing("datasets")
    def from_spec(cls, spec: dict) -> "Corpus":
        """Load the corpus a job spec refers to; refuses data that changed since the job was submitted."""
        ref = spec["ref"]
        if ref.get("saved"):
            import datasets

            splits = {name: datasets.load_from_disk(str(Path(ref["path"]) / name)) for name in ref["splits"]}
            corpus = cls(splits, spec["text_column"], ref, spec["fingerprint"])
        else:
            corpus = load_corpus(ref["path"], data_files=ref.get("data_files"), split=ref.get("split"),
                                 text_column=spec["text_column"], **ref.get("kwargs", {}))
        if corpus.fingerprint != spec["fingerprint"]:
            raise DataError(f"the corpus {ref['path']!r} changed since the job was submitted "
                            f"(fingerprint {corpus.fingerprint} != {spec['fingerprint']}); start the job again")
        return corpus

    def __repr__(self) -> str:
        where = (self.ref or {}).get("path", "in memory")
        splits = ", ".join(f"{n}: {len(d):,}" for n, d in self.splits.items())
        return f"Corpus({where!r}, {len(self):,} documents ({splits}), text_column={self.text_column!r})"


def _content_fingerprint(splits: dict, text_column: str) -> str:
    h = hashlib.sha256()
    for name, ds in splits.items():
        h.update(name.encode())
        for batch in ds.select_columns([text_column]).with_format("arrow").iter(batch_size=10_000):
            for chunk in batch.column(0).chunks if hasattr(batch.column(0), "chunks") else [batch.column(0)]:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
    return h.hexdigest()[:16]


@quietly_importing("datasets")
def load_corpus(path_or_name: Any, data_files: str | list[str] | None = None, split: str | None = None,
                text_column: str | None = None, **kwargs) -> Corpus:
    """A corpus from local files or folders (text, json/jsonl, csv, parquet), a hub dataset id, a builder
    name with ``data_files=``, or an existing ``datasets.Dataset`` / ``DatasetDict``.

    ``split=None`` keeps every split (in order); ``text_column`` defaults to ``"text"`` (or the only string
    column). Extra keyword arguments go to ``datasets.load_dataset``.
    """
    import datasets

    if isinstance(path_or_name, (datasets.Dataset, datasets.DatasetDict)):
        data = path_or_name
        if isinstance(data, datasets.DatasetDict):
            splits = {split: data[split]} if split else dict(data)
        else:
            splits = {split or "train": data}
        first = next(iter(splits.values()))
        column = _pick_text_column(first.column_names, text_column, first.features)
        corpus = Corpus(splits, column, None, _content_fingerprint(splits, column))
    else:
        corpus = _load_from_source(str(path_or_name), data_files, split, text_column, kwargs)
    if len(corpus) == 0:
        raise DataError(f"corpus {path_or_name!r} has no documents; check the path, data_files and split")
    return corpus


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _load_from_source(source: str, data_files, split, text_column, kwargs) -> Corpus:
    import datasets

    files = [data_files] if isinstance(data_files, str) else (list(data_files) if data_files else None)
    if files:
        files = [str(Path(f).expanduser().resolve()) for f in files]
        missing = [f for f in files if not Path(f).exists() and not any(c in f for c in "*?[")]
        if missing:
            raise DataError(f"data_files {missing} do not exist")
    path = Path(source).expanduser()
    if path.exists():
        source = str(path.resolve())
    elif source.startswith(("/", ".", "~")):
        raise DataError(f"corpus path {source!r} does not exist; give a file, a folder, a hub dataset id, "
                        "or a builder name with data_files=[...]")
    ref = {"path": source, "data_files": files, "split": split, "kwargs": kwargs}
    try:
        if _is_saved_dataset(path):
            data = datasets.load_from_disk(source)
            if split is not None:
                data = data[split]
        else:
            builder, builder_files = (_builder_for([source]), [source]) if path.is_file() else (source, files)
            data = datasets.load_dataset(builder, data_files=builder_files, split=split, **kwargs)
    except (FileNotFoundError, ValueError, KeyError, StopIteration) as exc:
        empty = [f for f in (files or ([source] if path.is_file() else [])) if Path(f).is_file() and not Path(f).stat().st_size]
        if empty:
            raise DataError(f"corpus file(s) {empty} are empty; a corpus needs documents") from exc
        raise DataError(f"cannot load corpus {source!r}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # hub and network errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"cannot load corpus {source!r} (offline, only local files and cached datasets load): "
                        f"{type(exc).__name__}: {first}") from exc
    splits = dict(data) if isinstance(data, datasets.DatasetDict) else {split or "train": data}
    first_split = next(iter(splits.values()))
    column = _pick_text_column(first_split.column_names, text_column, first_split.features)
    # the key of every job made from it follows the text itself: datasets' own `_fingerprint` follows the files'
    # times too, so a file rewritten with the same content (a notebook re-run) would make every job run again
    return Corpus(splits, column, ref, _content_fingerprint(splits, column))
