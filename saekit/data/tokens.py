"""``TokenStore``: a tokenized corpus in Zarr (``<workspace>/tokens/<id>.zarr``), and the list of them.

Arrays, all ``[n_sequences, context_length]`` and chunked by rows: ``input_ids`` (int32), ``doc_ids``
(int64, -1 on padding), ``positions`` (int32, the token's position in its document, -1 on padding) and
``attention_mask`` (uint8, when asked for). Attributes hold the corpus and tokenizer references, the
settings, the committed row count and the statistics gathered while tokenizing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from saekit._table import Table
from saekit.errors import DataError
from saekit.workspace import Workspace, as_workspace

ARRAYS = ("input_ids", "doc_ids", "positions", "attention_mask")


def store_path(ws: Workspace, store_id: str) -> Path:
    return ws.path / "tokens" / f"{store_id}.zarr"


class TokenStore:
    """A tokenized corpus: ``store["input_ids"]`` (and ``doc_ids``, ``positions``, ``attention_mask``) are
    Zarr arrays ``[n_sequences, context_length]``; ``stats()`` describes it."""

    def __init__(self, path: str | Path, workspace: Workspace | str | None = None):
        import zarr

        self.path = Path(path)
        self.id = self.path.name.removesuffix(".zarr")
        self.workspace = as_workspace(workspace)
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"no token store at {str(self.path)!r}; sk.token_stores() lists them") from exc
        if self.group.attrs.get("saekit") != "token_store":
            raise DataError(f"{str(self.path)!r} is a Zarr group but not a saekit token store")

    @classmethod
    def open(cls, store_id_or_path: str | Path, workspace: Workspace | str | None = None) -> "TokenStore":
        """Open a token store by id (in the workspace) or by path."""
        ws = as_workspace(workspace)
        path = Path(store_id_or_path)
        if not path.exists():
            path = store_path(ws, str(store_id_or_path))
        return cls(path, ws)

    # -- facts -------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def context_length(self) -> int:
        return int(self.group.attrs["context_length"])

    @property
    def n_sequences(self) -> int:
        """Committed sequences (all of them once the tokenization completed)."""
        return int(self.group.attrs.get("committed_rows", 0))

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def __len__(self) -> int:
        return self.n_sequences

    def __getitem__(self, name: str):
        if name not in self.group:
            raise KeyError(f"{name!r} is not an array of token store {self.id}; it has {sorted(self.group.array_keys())}")
        return self.group[name]

    def stats(self) -> dict:
        """Documents, sequences, tokens, unique tokens, most frequent tokens, the document-length histogram
        and the split distribution, gathered while tokenizing (no second pass)."""
        stats = self.group.attrs.get("stats")
        if stats is None:
            raise DataError(f"token store {self.id} is not complete yet ({self.n_sequences:,} sequences committed); "
                            "its statistics are written when tokenization ends")
        return stats

    def tokenizer_bos_id(self) -> int | None:
        """The id of the tokenizer's beginning-of-sequence token (None when it has none)."""
        if "bos_token_id" in self.group.attrs:
            return self.group.attrs["bos_token_id"]
        return self.tokenizer().bos_token_id

    def tokenizer(self):
        """The tokenizer that made this store (saved in the workspace)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.group.attrs["tokenizer"]["path"])

    def decode(self, index: int) -> str:
        ids = np.asarray(self["input_ids"][index])
        if "attention_mask" in self.group:
            ids = ids[np.asarray(self["attention_mask"][index]).astype(bool)]
        return self.tokenizer().decode(ids.tolist())

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Sequences ``start:stop`` in order, ``batch_size`` at a time, as numpy arrays by name."""
        stop = self.n_sequences if stop is None else min(stop, self.n_sequences)
        names = [n for n in ARRAYS if n in self.group]
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield {n: np.asarray(self.group[n][lo:hi]) for n in names}

    def delete(self) -> None:
        """Delete this store and the job that made it."""
        from saekit import registry
        from saekit.jobs import Job

        if registry.get_job(self.workspace, self.id) is not None:
            Job(self.id, self.workspace).delete()
        shutil.rmtree(self.path, ignore_errors=True)

    def __repr__(self) -> str:
        a = self.group.attrs
        state = "" if self.complete else ", incomplete"
        return (f"TokenStore({self.id!r}, {self.n_sequences:,} x {self.context_length} tokens, "
                f"packing={a.get('packing')!r}, tokenizer={a.get('tokenizer', {}).get('source')!r}{state})")


STORE_COLUMNS = ("id", "status", "corpus", "tokenizer", "context_length", "packing", "sequences", "tokens",
                 "created_at")


def token_stores(workspace: Workspace | str | None = None) -> Table:
    """Every token store of the workspace, with its corpus, tokenizer and settings. Stores on disk that no
    job record knows are listed as ``orphan``."""
    import json

    from saekit import registry

    ws = as_workspace(workspace)
    rows, seen = [], set()
    for job_row in registry.list_jobs(ws, kind="tokenize", with_spec=True):
        seen.add(job_row["id"])
        path = store_path(ws, job_row["id"])
        stats = TokenStore(path, ws).group.attrs.get("stats") if path.exists() else None
        rows.append(_store_row(job_row["id"], job_row["status"], json.loads(job_row["spec"]), stats,
                               job_row["created_at"]))
    folder = ws.path / "tokens"
    for path in sorted(folder.glob("*.zarr")) if folder.is_dir() else []:
        store_id = path.name.removesuffix(".zarr")
        if store_id not in seen:
            try:
                store = TokenStore(path, ws)
            except DataError:
                continue
            rows.append(_store_row(store_id, "orphan", store.attrs, store.attrs.get("stats"), None))
    return Table(rows, STORE_COLUMNS, empty=f"no token stores in {str(ws.path)!r}; make one with sk.tokenize(corpus, lm)")


def _store_row(store_id: str, status: str, spec: dict, stats: dict | None, created) -> dict:
    corpus = spec.get("corpus", {}).get("ref") or {}
    return {"id": store_id, "status": status, "corpus": Path(str(corpus.get("path", "?"))).name,
            "tokenizer": spec.get("tokenizer", {}).get("source"), "context_length": spec.get("context_length"),
            "packing": spec.get("packing"), "sequences": (stats or {}).get("sequences"),
            "tokens": (stats or {}).get("tokens"), "created_at": created}
