"""``TokenStore``: a tokenized corpus in Zarr (``<workspace>/tokens/<id>.zarr``, or ``<root>/<id>.zarr`` for a
tokenization given ``root=``: another folder or an fsspec URL such as ``s3://bucket/tokens``), and the list of them.

Arrays, all ``[n_sequences, context_length]`` and chunked by rows: ``input_ids`` (int32), ``doc_ids``
(int64, -1 on padding), ``positions`` (int32, the token's position in its document, -1 on padding) and
``attention_mask`` (uint8, when asked for). Attributes hold the corpus and tokenizer references, the
settings, the committed row count and the statistics gathered while tokenizing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from saekit._fs import is_url, remove
from saekit._table import ObjectTable
from saekit._zarr import exists, open_group, read_rows, read_selection, verify_rows
from saekit.errors import DataError
from saekit.workspace import Workspace, as_workspace

ARRAYS = ("input_ids", "doc_ids", "positions", "attention_mask")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what a tokenizer does: its class, its whole backend (vocabulary, merges, normalizers,
    added tokens) and its special tokens."""
    import hashlib
    import json

    content = json.dumps([type(tokenizer).__name__, tokenizer.backend_tokenizer.to_str(),
                          tokenizer.special_tokens_map], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def store_path(ws: Workspace, store_id: str) -> Path:
    return ws.path / "tokens" / f"{store_id}.zarr"


def store_location(ws: Workspace, store_id: str, root: str | None = None) -> str:
    """Where the tokenize job ``store_id`` writes: under ``root`` (a folder or an fsspec URL) when given."""
    return f"{str(root).rstrip('/')}/{store_id}.zarr" if root is not None else str(store_path(ws, store_id))


class TokenRows:
    """Some sequences of a token store: ``arrays`` by name (``[n, context_length]`` each), which positions
    hold real tokens (``mask``), and which of those become activation rows (``kept(bos)``)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    @property
    def input_ids(self) -> np.ndarray:
        return self.arrays["input_ids"]

    @property
    def mask(self) -> np.ndarray:
        """Real (not padding) positions, as bools."""
        if "attention_mask" in self.arrays:
            return self.arrays["attention_mask"].astype(bool)
        return self.arrays["doc_ids"] >= 0

    def kept(self, bos: int | None) -> np.ndarray:
        """Positions stored as activation rows: real tokens of a document, and not a document's leading BOS
        when ``bos`` (the id from ``TokenStore.excluded_bos``) is given."""
        keep = self.mask & (self.arrays["doc_ids"] >= 0)
        if bos is not None:
            keep &= ~((self.arrays["input_ids"] == bos) & (self.arrays["positions"] == 0))
        return keep

    def sources(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """``token_ids``, ``doc_ids`` and ``positions`` of the kept positions, in row order."""
        return {"token_ids": self.arrays["input_ids"][keep].astype(np.int32),
                "doc_ids": self.arrays["doc_ids"][keep].astype(np.int64),
                "positions": self.arrays["positions"][keep].astype(np.int32)}


class TokenReader:
    """Sequences read a block of chunks at a time (one Zarr read per array per block, not per batch)."""

    def __init__(self, store: "TokenStore", block_rows: int | None = None):
        self.store = store
        self.block_rows = block_rows or max(store["input_ids"].chunks[0], 1024)
        self.start = 0
        self.block: TokenRows | None = None

    def rows(self, lo: int, hi: int) -> TokenRows:
        if self.block is None or lo < self.start or hi > self.start + len(self.block):
            self.start = lo
            self.block = self.store.rows(lo, min(lo + max(self.block_rows, hi - lo), self.store.n_sequences))
        return TokenRows({n: a[lo - self.start:hi - self.start] for n, a in self.block.arrays.items()})


class TokenStore:
    """A tokenized corpus: ``store["input_ids"]`` (and ``doc_ids``, ``positions``, ``attention_mask``) are
    Zarr arrays ``[n_sequences, context_length]``; ``stats()`` describes it."""

    def __init__(self, path: str | Path, workspace: Workspace | str | None = None):
        self.location = str(path).rstrip("/")  # a path, or an fsspec URL (s3://...)
        self.path = self.location if is_url(self.location) else Path(self.location)
        self.id = self.location.rsplit("/", 1)[-1].removesuffix(".zarr")
        self.workspace = as_workspace(workspace)
        try:
            if not exists(self.location):
                raise FileNotFoundError(self.location)
            self.group = open_group(self.location, mode="r")
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"no token store at {self.location!r}; sk.token_stores() lists them") from exc
        if self.group.attrs.get("saekit") != "token_store":
            raise DataError(f"{self.location!r} is a Zarr group but not a saekit token store")
        verify_rows(self.location, self.group, self.array_names, self.n_sequences, "token store")

    @classmethod
    def open(cls, store_id_or_path: str | Path, workspace: Workspace | str | None = None) -> "TokenStore":
        """Open a token store by id (in the workspace), path or fsspec URL."""
        ws = as_workspace(workspace)
        where = str(store_id_or_path)
        if is_url(where) or Path(where).exists():
            return cls(where, ws)
        if store_path(ws, where).exists():
            return cls(store_path(ws, where), ws)
        from saekit import registry  # a store under another root: its job's spec says where

        row = registry.get_job(ws, where)
        root = row.spec_dict.get("root") if row is not None and row.kind == "tokenize" else None
        return cls(store_location(ws, where, root), ws)

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

    # -- reading sequences ------------------------------------------------------------------------
    @property
    def array_names(self) -> list[str]:
        return [n for n in ARRAYS if n in self.group]

    def rows(self, lo: int, hi: int) -> TokenRows:
        """Sequences ``lo:hi`` (clipped to the committed ones), one read per array."""
        hi = min(hi, self.n_sequences)
        return TokenRows({n: read_rows(self.group[n], lo, hi, location=self.location, name=n) for n in self.array_names})

    def take(self, indices) -> TokenRows:
        """The sequences at ``indices`` (any order; read in sorted order, returned in the order asked)."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        inverse = np.argsort(order, kind="stable")
        picked = indices[order].tolist()
        return TokenRows({n: read_selection(self.group[n], (picked, slice(None)), location=self.location, name=n)[inverse]
                          for n in self.array_names})

    def reader(self, block_rows: int | None = None) -> TokenReader:
        """A reader of consecutive sequences that reads a block of chunks at a time."""
        return TokenReader(self, block_rows)

    def excluded_bos(self, include_bos: bool) -> int | None:
        """The BOS id that is left out of activation rows (a document's leading BOS), or None when BOS is kept
        (``include_bos``) or the tokenizer has none: the rule extraction, training and evaluation share."""
        return None if include_bos else self.tokenizer_bos_id()

    def tokens_available(self, include_bos: bool) -> int:
        """How many activation rows the whole store gives (real tokens, leading BOS left out unless kept)."""
        n = int(self.stats()["tokens"])
        bos = self.excluded_bos(include_bos)
        if bos is not None and "token_counts" in self.group:
            n -= int(self.group["token_counts"][bos])
        return n

    def reference(self) -> dict:
        """How a job spec refers to this store: id, path, and the corpus and tokenizer fingerprints."""
        return {"id": self.id, "path": self.location, "corpus": self.attrs["corpus"]["fingerprint"],
                "tokenizer": self.attrs["tokenizer"]["fingerprint"]}

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
        for lo in range(start, stop, batch_size):
            yield self.rows(lo, min(lo + batch_size, stop)).arrays

    def delete(self) -> None:
        """Delete this store and the job that made it."""
        from saekit import registry
        from saekit.jobs import Job

        if registry.get_job(self.workspace, self.id) is not None:
            Job(self.id, self.workspace).delete()
        remove(self.location)

    def __repr__(self) -> str:
        a = self.group.attrs
        state = "" if self.complete else ", incomplete"
        return (f"TokenStore({self.id!r}, {self.n_sequences:,} x {self.context_length} tokens, "
                f"packing={a.get('packing')!r}, tokenizer={a.get('tokenizer', {}).get('source')!r}{state})")


STORE_COLUMNS = ("id", "status", "corpus", "tokenizer", "context_length", "packing", "sequences", "tokens",
                 "created_at")


def token_stores(workspace: Workspace | str | None = None) -> ObjectTable:
    """Every token store of the workspace, with its corpus, tokenizer and settings. Stores on disk that no
    job record knows are listed as ``orphan``."""

    from saekit import registry

    ws = as_workspace(workspace)
    rows, seen = [], set()
    for job_row in registry.list_jobs(ws, kind="tokenize", with_spec=True):
        seen.add(job_row.id)
        location = store_location(ws, job_row.id, job_row.spec_dict.get("root"))
        stats = TokenStore(location, ws).group.attrs.get("stats") if exists(location) else None
        rows.append(_store_row(job_row.id, str(job_row.status), job_row.spec_dict, stats, job_row.created_at))
    folder = ws.path / "tokens"
    for path in sorted(folder.glob("*.zarr")) if folder.is_dir() else []:
        store_id = path.name.removesuffix(".zarr")
        if store_id not in seen:
            try:
                store = TokenStore(path, ws)
            except DataError:
                continue
            rows.append(_store_row(store_id, "orphan", store.attrs, store.attrs.get("stats"), None))
    return ObjectTable(rows, STORE_COLUMNS, open=lambda row: TokenStore.open(row["id"], ws),
                       empty=f"no token stores in {str(ws.path)!r}; make one with sk.tokenize(corpus, lm)")


def _store_row(store_id: str, status: str, spec: dict, stats: dict | None, created) -> dict:
    corpus = spec.get("corpus", {}).get("ref") or {}
    return {"id": store_id, "status": status, "corpus": Path(str(corpus.get("path", "?"))).name,
            "tokenizer": spec.get("tokenizer", {}).get("source"), "context_length": spec.get("context_length"),
            "packing": spec.get("packing"), "sequences": (stats or {}).get("sequences"),
            "tokens": (stats or {}).get("tokens"), "created_at": created}
