"""``sk.tokenize``: a corpus into a ``TokenStore``, as a durable, resumable, cancellable job.

Documents are tokenized in batches with the fast tokenizer, packed into ``[n, context_length]`` rows
(``packing="concat"`` streams documents end to end; ``"truncate"`` gives each document its own padded
row), and appended to Zarr in whole chunks. Every few seconds the rows are flushed and a resume point
is committed with a checkpoint of the statistics, so a killed job resumes where it stopped.
"""

from __future__ import annotations

import collections
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saekit._checks import check_choice, check_positive_int, is_number
from saekit._fs import publishing
from saekit._quiet import quietly
from saekit._rows import RowAppender
from saekit.data.corpus import Corpus, load_corpus
from saekit.data.tokens import ARRAYS, TokenStore, store_location, tokenizer_fingerprint
from saekit._fs import is_url
from saekit._zarr import create_checked_array, exists, open_group
from saekit.errors import ConfigError, DataError
from saekit.jobs import job_kind, submit
from saekit.jobs.resumable import ResumableOutput
from saekit.jobs.spec import JobSpec, spec_field
from saekit.workspace import Workspace, as_workspace

if TYPE_CHECKING:
    from concurrent.futures import Future

    from saekit.registry import JobRecord

PACKINGS = ("concat", "truncate")
CHUNK_BYTES = 2 * 2**20  # rows per chunk: about 2 MiB of int32 token ids
LENGTH_BINS = 24  # document-length histogram: bin b holds lengths in [2**(b-1), 2**b)
TOP_TOKENS = 50


@dataclass(frozen=True)
class TokenizeSpec(JobSpec):
    """A tokenize job's spec (``sk.tokenize`` builds it)."""
    corpus: dict = spec_field(doc="the corpus' reference (``Corpus.spec``: source, split, text column, fingerprint)")
    tokenizer: dict = spec_field(doc="the tokenizer's reference (its saved folder and fingerprint)")
    context_length: int = spec_field(doc="tokens per row")
    add_special_tokens: bool = spec_field(doc="whether the tokenizer adds BOS/EOS")
    return_attention_mask: bool = spec_field(doc="whether the store keeps an attention_mask array")
    packing: str = spec_field(doc="'concat' (documents end to end) or 'truncate' (one row per document)")
    max_documents: int | None = spec_field(doc="documents to tokenize at most (None: all)")
    num_proc: int | None = spec_field(None, volatile=True, doc="tokenizer processes")
    batch_documents: int = spec_field(1000, volatile=True, doc="documents tokenized at a time")
    commit_every: float = spec_field(5.0, volatile=True, doc="seconds between resume points")
    root: str | None = spec_field(None, omit_none=True, doc="a folder or fsspec URL for the store (None: the workspace)")


# -- tokenizer references ----------------------------------------------------------------------------

def _fast_tokenizer(model_or_tokenizer):
    """``(tokenizer, source name, max context or None)`` from a LanguageModel, a tokenizer, or a name/path."""
    if hasattr(model_or_tokenizer, "tokenizer") and hasattr(model_or_tokenizer, "max_context"):
        lm = model_or_tokenizer
        return lm.tokenizer, lm.name, lm.max_context
    tokenizer = model_or_tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        except Exception as exc:
            raise ConfigError(f"cannot load a tokenizer from {str(model_or_tokenizer)!r}: {exc}") from exc
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; saekit tokenizes with HF fast "
                          "tokenizers (AutoTokenizer.from_pretrained(..., use_fast=True)) or takes a LanguageModel")
    limit = getattr(tokenizer, "model_max_length", None)
    return tokenizer, getattr(tokenizer, "name_or_path", None) or "in memory", limit if limit and limit < 10**8 else None


@quietly
def tokenizer_spec(tokenizer, source: str, ws: Workspace) -> dict:
    """Save the tokenizer into the workspace (once per content) and return its reference."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    folder = ws.path / "tokenizers" / fingerprint
    if not folder.exists():
        ws.dir("tokenizers")
        with publishing(folder) as tmp:  # a concurrent first save of the same tokenizer: one wins
            tokenizer.save_pretrained(str(tmp))
    return {"path": str(folder), "source": str(source), "fingerprint": fingerprint}


# -- the public function -----------------------------------------------------------------------------

def tokenize(corpus, model_or_tokenizer, context_length: int = 128, *, add_special_tokens: bool = True,
             return_attention_mask: bool = True, packing: str = "concat", max_documents: int | None = None,
             num_proc: int | None = None, batch_documents: int = 1000, commit_every: float = 5.0,
             root: str | None = None, background: bool = True, force: bool = False, name: str | None = None,
             workspace: Workspace | str | None = None, progress: bool = True):
    """Tokenize ``corpus`` for a model (or tokenizer) into a ``TokenStore``; returns the job at once.

    ``packing="concat"`` joins documents end to end and cuts rows of ``context_length`` tokens (the last
    row is padded); ``"truncate"`` gives each document one row, cut at ``context_length`` and padded.
    ``num_proc`` > 1 tokenizes in that many processes; ``batch_documents`` documents are tokenized at a
    time and a resume point is committed every ``commit_every`` seconds. The same request twice is the
    same job (these three tuning knobs do not change the result, so they are not part of its key).
    ``root`` puts the store elsewhere than the workspace: a folder, or an fsspec URL such as
    ``s3://bucket/tokens`` (credentials come from the usual AWS environment and files, never the spec).
    """
    check_positive_int("context_length", context_length, example="128")
    check_choice("packing", packing, PACKINGS)
    check_positive_int("max_documents", max_documents, allow_none=True)
    check_positive_int("num_proc", num_proc, allow_none=True)
    check_positive_int("batch_documents", batch_documents)
    if not is_number(commit_every) or commit_every <= 0:
        raise ConfigError(f"commit_every={commit_every!r} must be a positive number of seconds")
    tokenizer, source, max_context = _fast_tokenizer(model_or_tokenizer)
    if max_context is not None and context_length > max_context:
        raise ConfigError(f"context_length={context_length} is longer than {source} supports ({max_context} tokens); "
                          f"use context_length <= {max_context}")
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    ws = as_workspace(workspace)
    spec = {
        "corpus": corpus.spec(ws), "tokenizer": tokenizer_spec(tokenizer, source, ws),
        "context_length": context_length, "add_special_tokens": bool(add_special_tokens),
        "return_attention_mask": bool(return_attention_mask), "packing": packing, "max_documents": max_documents,
        "num_proc": num_proc, "batch_documents": batch_documents, "commit_every": float(commit_every),
    }
    if root is not None:  # only then, so that a workspace store's job key is what it always was
        if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
            raise ConfigError(f"root={root!r} must be a folder or an fsspec URL such as 's3://bucket/tokens'")
        spec["root"] = str(root) if is_url(root) else str(Path(root).expanduser().resolve())
    return submit("tokenize", spec, workspace=ws, background=background, force=force, name=name, progress=progress)


# -- the job ---------------------------------------------------------------------------------------------

class _Stats:
    """Statistics gathered while tokenizing; ``snapshot``/``restore`` carry them across a resume."""

    def __init__(self, vocab_size: int, splits: list[tuple[str, int, int]]):
        self.token_counts = np.zeros(vocab_size, dtype=np.int64)
        self.length_counts = np.zeros(LENGTH_BINS + 1, dtype=np.int64)  # documents by length in tokens
        self.row_counts = np.zeros(LENGTH_BINS + 1, dtype=np.int64)  # sequences by tokens that are not padding
        self.splits = splits
        self.split_docs = {name: 0 for name, _, _ in splits}
        self.split_tokens = {name: 0 for name, _, _ in splits}
        self.documents = 0
        self.truncated = 0

    @staticmethod
    def _bins(lengths: np.ndarray) -> np.ndarray:
        """Counts per bin, bin b holding lengths in [2**(b-1), 2**b) (bin 0: length 0)."""
        bins = np.minimum(np.ceil(np.log2(lengths.astype(np.float64) + 1)).astype(np.int64), LENGTH_BINS)
        return np.bincount(bins, minlength=LENGTH_BINS + 1)

    def add_documents(self, first_doc: int, lengths: np.ndarray, context_length: int, truncating: bool) -> None:
        self.documents += len(lengths)
        self.length_counts += self._bins(lengths)
        if truncating:
            self.truncated += int((lengths > context_length).sum())
        docs = np.arange(first_doc, first_doc + len(lengths))
        for name, lo, hi in self.splits:
            inside = (docs >= lo) & (docs < hi)
            if inside.any():
                self.split_docs[name] += int(inside.sum())
                self.split_tokens[name] += int(lengths[inside].sum())

    def add_rows(self, ids: np.ndarray, valid: np.ndarray) -> None:
        if len(self.token_counts) <= int(ids.max(initial=0)):
            self.token_counts = np.pad(self.token_counts, (0, int(ids.max()) + 1 - len(self.token_counts)))
        self.token_counts += np.bincount(ids[valid], minlength=len(self.token_counts))
        self.row_counts += self._bins(valid.sum(axis=1))

    def snapshot(self) -> dict:
        return {"documents": self.documents, "truncated": self.truncated, "split_docs": self.split_docs,
                "split_tokens": self.split_tokens}

    def restore(self, state: dict, arrays) -> None:
        self.documents, self.truncated = state["documents"], state["truncated"]
        self.split_docs, self.split_tokens = state["split_docs"], state["split_tokens"]
        self.token_counts = arrays["token_counts"].astype(np.int64)
        self.length_counts = arrays["length_counts"].astype(np.int64)
        self.row_counts = arrays["row_counts"].astype(np.int64)

    def final(self, tokenizer, rows: int, context_length: int, padding: int) -> dict:
        order = np.argsort(-self.token_counts, kind="stable")[:TOP_TOKENS]
        order = order[self.token_counts[order] > 0]
        names = tokenizer.convert_ids_to_tokens(order.tolist())
        edges = [0] + [2 ** (b - 1) for b in range(1, LENGTH_BINS + 1)]
        return {
            "documents": self.documents, "sequences": rows, "tokens": int(self.token_counts.sum()),
            "padding": padding, "unique_tokens": int((self.token_counts > 0).sum()),
            "top_tokens": [{"id": int(i), "token": t, "count": int(self.token_counts[i])} for i, t in zip(order, names)],
            "length_histogram": {"min_length": edges, "documents": self.length_counts.tolist()},
            "sequence_length_histogram": {"min_length": edges, "sequences": self.row_counts.tolist()},
            "splits": {n: {"documents": self.split_docs[n], "tokens": self.split_tokens[n]} for n in self.split_docs},
            "truncated_documents": self.truncated, "context_length": context_length,
        }


class _Packer:
    """Turns tokenized documents into rows (``input_ids``, ``doc_ids``, ``positions``, ``attention_mask``)."""

    def __init__(self, context_length: int, packing: str, pad_id: int):
        self.n, self.packing, self.pad_id = context_length, packing, pad_id
        self.pending = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32))

    def rows(self, ids: np.ndarray, lengths: np.ndarray, first_doc: int) -> dict[str, np.ndarray]:
        docs = np.repeat(np.arange(first_doc, first_doc + len(lengths), dtype=np.int64), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = (np.arange(len(ids)) - starts).astype(np.int32)
        if self.packing == "truncate":
            keep = positions < self.n
            ids, docs, positions = ids[keep], docs[keep], positions[keep]
            row_of = docs - first_doc
            out = self._empty(len(lengths))
            out["input_ids"][row_of, positions] = ids
            out["doc_ids"][row_of, positions] = docs
            out["positions"][row_of, positions] = positions
            out["attention_mask"][row_of, positions] = 1
            return out
        ids = np.concatenate([self.pending[0], ids])
        docs = np.concatenate([self.pending[1], docs])
        positions = np.concatenate([self.pending[2], positions])
        full = len(ids) // self.n * self.n
        self.pending = (ids[full:], docs[full:], positions[full:])
        shape = (-1, self.n)
        return {"input_ids": ids[:full].reshape(shape), "doc_ids": docs[:full].reshape(shape),
                "positions": positions[:full].reshape(shape),
                "attention_mask": np.ones((full // self.n, self.n), np.uint8)}

    def _empty(self, count: int) -> dict[str, np.ndarray]:
        return {"input_ids": np.full((count, self.n), self.pad_id, np.int32),
                "doc_ids": np.full((count, self.n), -1, np.int64),
                "positions": np.full((count, self.n), -1, np.int32),
                "attention_mask": np.zeros((count, self.n), np.uint8)}

    def last_row(self) -> dict[str, np.ndarray]:
        """The padded row holding what is left of a concatenated stream (nothing in truncate mode)."""
        k = len(self.pending[0])
        out = self._empty(1 if k else 0)
        if k:
            out["input_ids"][0, :k], out["doc_ids"][0, :k], out["positions"][0, :k] = self.pending
            out["attention_mask"][0, :k] = 1
            self.pending = (self.pending[0][:0], self.pending[1][:0], self.pending[2][:0])
        return out


class _Encoder:
    """Batch tokenization to ``(flat int32 ids, lengths)``.

    It calls the Rust tokenizer's ``encode_batch_fast`` (no offsets: about 1.4x the speed of
    ``tokenizer(texts)`` here) when that gives the same ids as the HF tokenizer on a sample of the
    corpus, and the HF call otherwise.
    """

    def __init__(self, tokenizer, add_special_tokens: bool, fast: bool | None = None):
        self.tokenizer, self.add_special_tokens = tokenizer, add_special_tokens
        self.fast = fast

    def _hf(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=self.add_special_tokens, return_attention_mask=False,
                              return_token_type_ids=False)["input_ids"]

    def _backend(self, texts: list[str]) -> list[list[int]]:
        encodings = self.tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=self.add_special_tokens)
        return [e.ids for e in encodings]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.fast is None:  # decide once, on the first batch
            sample = texts[:64]
            self.fast = hasattr(self.tokenizer.backend_tokenizer, "encode_batch_fast") and self._backend(sample) == self._hf(sample)
        encoded = self._backend(texts) if self.fast else self._hf(texts)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum()))
        return ids, lengths


_WORKER_ENCODER: _Encoder | None = None


def _init_worker(path: str, add_special_tokens: bool, fast: bool | None) -> None:
    global _WORKER_ENCODER
    from transformers import AutoTokenizer

    _WORKER_ENCODER = _Encoder(AutoTokenizer.from_pretrained(path), add_special_tokens, fast)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_ENCODER is not None  # set by _init_worker
    return _WORKER_ENCODER(texts)


def _bounded_map(pool, texts, window: int):
    """``pool.map`` in order, with at most ``window`` batches in flight (memory stays bounded)."""
    futures: collections.deque[Future] = collections.deque()
    for batch in texts:
        futures.append(pool.submit(_encode_in_worker, batch))
        if len(futures) >= window:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


def _load_store(ws: Workspace, result: dict) -> TokenStore:
    return TokenStore(result["path"], ws)


def _outputs(ws: Workspace, row: JobRecord) -> list[str]:
    return [store_location(ws, row.id, row.spec_dict.get("root"))]


@job_kind("tokenize", load_result=_load_store, outputs=_outputs, output_dirs={"tokens": None},
          spec=TokenizeSpec)
def run_tokenize(ctx, spec: TokenizeSpec) -> dict:
    """The tokenize job: documents -> rows in a Zarr token store, committed every few seconds."""
    from transformers import AutoTokenizer

    path = store_location(ctx.workspace, ctx.job_id, spec.root)
    out = ResumableOutput(ctx, location=path, exists=lambda: exists(path),
                          owner=lambda: open_group(path, mode="r").attrs.get("job_id"),
                          commit_every=spec.commit_every)
    def clean_up() -> None:
        for checkpoint in ctx.dir.glob("tokenize_checkpoint_*.npz"):
            checkpoint.unlink(missing_ok=True)

    if not out.fresh and open_group(path, mode="r").attrs.get("complete"):
        ctx.after_end(clean_up)
        return _result(open_group(path, mode="r"), path)  # it ended, but the end was not recorded
    corpus = Corpus.from_spec(spec.corpus)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer["path"])
    n = spec.context_length
    n_docs = min(len(corpus), spec.max_documents or len(corpus))
    names = [a for a in ARRAYS if a != "attention_mask" or spec.return_attention_mask]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        ctx.event(f"the tokenizer has no pad token; padding with id {pad_id} "
                  f"({'eos' if tokenizer.eos_token_id is not None else 'token 0'}); padded positions have "
                  "attention_mask 0, doc_ids -1 and positions -1", level="warning")
    if not is_url(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    resume = out.resume
    if out.fresh:
        group = open_group(path, mode="w")
        chunk_rows = max(1, CHUNK_BYTES // (4 * n))
        for name, dtype in (("input_ids", "int32"), ("doc_ids", "int64"), ("positions", "int32"),
                            ("attention_mask", "uint8")):
            if name in names:
                create_checked_array(group, name, shape=(0, n), chunks=(chunk_rows, n), dtype=dtype)
        group.attrs.update({
            "saekit": "token_store", "format_version": 1, "job_id": ctx.job_id, "corpus": spec.corpus,
            "tokenizer": spec.tokenizer, "context_length": n, "packing": spec.packing,
            "add_special_tokens": spec.add_special_tokens, "return_attention_mask": spec.return_attention_mask,
            "max_documents": spec.max_documents, "pad_token_id": int(pad_id), "bos_token_id": tokenizer.bos_token_id,
            "committed_rows": 0, "complete": False,
        })
    else:
        group = open_group(path, mode="r+")
        chunk_rows = group["input_ids"].chunks[0]
    stats = _Stats(len(tokenizer), corpus.split_of())
    packer = _Packer(n, spec.packing, pad_id)
    appender = RowAppender(group, names, chunk_rows, resume["rows"] if resume else 0)
    doc = 0
    if resume:
        with np.load(ctx.dir / resume["checkpoint"]) as saved:
            stats.restore(resume["stats"], saved)
            packer.pending = (saved["pending_ids"], saved["pending_docs"], saved["pending_positions"])
        doc = resume["docs"]
        ctx.event(f"resuming at document {doc:,} ({appender.rows:,} sequences committed)")

    def commit() -> None:
        appender.flush()
        name = f"tokenize_checkpoint_{appender.rows}_{doc}.npz"
        with open(ctx.dir / name, "wb") as f:
            np.savez(f, token_counts=stats.token_counts, length_counts=stats.length_counts, row_counts=stats.row_counts,
                     pending_ids=packer.pending[0], pending_docs=packer.pending[1],
                     pending_positions=packer.pending[2])
            f.flush()
            os.fsync(f.fileno())
        group.attrs["committed_rows"] = appender.rows
        previous = (ctx.resume_point or {}).get("checkpoint")
        ctx.commit({"rows": appender.rows, "docs": doc, "checkpoint": name, "stats": stats.snapshot()})
        if previous and previous != name:
            (ctx.dir / previous).unlink(missing_ok=True)

    batch_docs = int(spec.batch_documents)
    encoder = _Encoder(tokenizer, spec.add_special_tokens)
    pool = None
    num_proc = spec.num_proc or 0
    if num_proc > 1:
        from concurrent.futures import ProcessPoolExecutor

        encoder(corpus.texts(doc, min(doc + 64, n_docs)))  # decide the encoding path once, here
        pool = ProcessPoolExecutor(num_proc, initializer=_init_worker,
                                   initargs=(spec.tokenizer["path"], spec.add_special_tokens, encoder.fast))
    try:
        with out.committing(commit):
            starts = range(doc, n_docs, batch_docs)
            texts = (corpus.texts(lo, min(lo + batch_docs, n_docs)) for lo in starts)
            encoded = _bounded_map(pool, texts, window=2 * num_proc) if pool is not None else map(encoder, texts)
            ctx.progress(doc, n_docs, unit="documents", phase="tokenizing", tokens=int(stats.token_counts.sum()))
            for lo, (ids, lengths) in zip(starts, encoded):
                stats.add_documents(lo, lengths, n, spec.packing == "truncate")
                rows = packer.rows(ids, lengths, lo)
                if len(rows["input_ids"]):
                    stats.add_rows(rows["input_ids"], rows["attention_mask"].astype(bool))
                appender.add({k: rows[k] for k in names})
                doc = lo + len(lengths)
                out.tick()
                ctx.progress(doc, n_docs, unit="documents", phase="tokenizing", tokens=int(stats.token_counts.sum()))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    last = packer.last_row()
    if len(last["input_ids"]):
        stats.add_rows(last["input_ids"], last["attention_mask"].astype(bool))
        appender.add({k: last[k] for k in names})
    appender.flush()
    if stats.token_counts.sum() == 0:
        raise DataError(f"the corpus gave no tokens: its {n_docs:,} document(s) are empty after tokenization",
                        suggestion="check the text column (text_column=) and that the documents are not empty")
    appender.trim()
    padding = appender.rows * n - int(stats.token_counts.sum())
    final = stats.final(tokenizer, appender.rows, n, padding)
    create_checked_array(group, "token_counts", data=stats.token_counts, overwrite=True)
    group.attrs.update({"committed_rows": appender.rows, "stats": final, "complete": True})
    ctx.after_end(clean_up)
    ctx.progress(n_docs, n_docs, unit="documents", phase="done", tokens=final["tokens"])
    return _result(group, path)


def _result(group, path: str) -> dict:
    final = group.attrs["stats"]
    return {"path": str(path), "sequences": int(group.attrs["committed_rows"]), "tokens": final["tokens"],
            "documents": final["documents"]}
