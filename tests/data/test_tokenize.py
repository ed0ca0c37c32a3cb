"""Tokenization into token stores: exact contents, statistics, idempotency, resume, cancel, bad input."""

import json
import os
import signal
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

import saekit as sk
from saekit import registry
from saekit.errors import ConfigError, DataError
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path


def reference_tokens(tokenizer, texts):
    return [tokenizer(t)["input_ids"] for t in texts]


def test_concat_store_holds_every_token_in_order(ws, docs_file, tiny_lm, docs):
    store = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, background=False,
                        progress=False).result()
    expected = reference_tokens(tiny_lm.tokenizer, docs)
    flat = np.concatenate([np.asarray(e) for e in expected])
    ids, mask = store["input_ids"][:], store["attention_mask"][:].astype(bool)
    assert ids.shape == (int(np.ceil(len(flat) / 64)), 64) and store.n_sequences == ids.shape[0]
    np.testing.assert_array_equal(ids[mask], flat)
    assert not mask[:-1].all(axis=1).__invert__().any()  # only the last row has padding
    doc_ids, positions = store["doc_ids"][:][mask], store["positions"][:][mask]
    np.testing.assert_array_equal(doc_ids, np.repeat(np.arange(len(docs)), [len(e) for e in expected]))
    np.testing.assert_array_equal(positions, np.concatenate([np.arange(len(e)) for e in expected]))
    assert (store["doc_ids"][:][~mask] == -1).all() and (store["positions"][:][~mask] == -1).all()
    stats = store.stats()
    counts = np.bincount(flat)
    assert stats["documents"] == len(docs) and stats["tokens"] == len(flat) and stats["sequences"] == len(ids)
    assert stats["padding"] == ids.size - len(flat)
    assert stats["unique_tokens"] == int((counts > 0).sum())
    top = stats["top_tokens"][0]
    assert top["id"] == int(counts.argmax()) and top["count"] == int(counts.max())
    assert top["token"] == tiny_lm.tokenizer.convert_ids_to_tokens(top["id"])
    assert stats["splits"] == {"train": {"documents": len(docs), "tokens": len(flat)}}
    assert sum(stats["length_histogram"]["documents"]) == len(docs)
    sequences = stats["sequence_length_histogram"]["sequences"]
    assert sum(sequences) == len(ids) and sequences[7] >= len(ids) - 1  # 64 tokens: bin 7 holds [64, 128)
    assert store.decode(0).startswith(tiny_lm.tokenizer.bos_token + docs[0][:20])
    batches = list(store.batches(1000))
    assert sum(len(b["input_ids"]) for b in batches) == len(ids)


def test_truncate_store_gives_each_document_a_padded_row(ws, docs_file, tiny_lm, docs):
    job = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=32, packing="truncate",
                      max_documents=300, background=False, progress=False)
    store = job.result()
    expected = reference_tokens(tiny_lm.tokenizer, docs[:300])
    ids, mask = store["input_ids"][:], store["attention_mask"][:].astype(bool)
    assert ids.shape == (300, 32)
    for row, tokens in zip(range(300), expected):
        kept = tokens[:32]
        assert ids[row][mask[row]].tolist() == kept
        assert (ids[row][~mask[row]] == tiny_lm.tokenizer.pad_token_id).all()
    stats = store.stats()
    assert stats["truncated_documents"] == sum(len(e) > 32 for e in expected)
    assert stats["tokens"] == sum(min(len(e), 32) for e in expected)


def test_same_request_is_the_same_job_and_force_runs_anew(ws, docs_file, tiny_lm):
    corpus = sk.load_corpus(docs_file)
    first = sk.tokenize(corpus, tiny_lm, context_length=64, max_documents=50, background=False, progress=False)
    again = sk.tokenize(corpus, tiny_lm, context_length=64, max_documents=50, batch_documents=7,
                        background=False, progress=False)  # a tuning knob is not part of the key
    assert again.id == first.id and len(sk.jobs(kind="tokenize")) == 1
    other = sk.tokenize(corpus, tiny_lm, context_length=32, max_documents=50, background=False, progress=False)
    assert other.id != first.id
    forced = sk.tokenize(corpus, tiny_lm, context_length=64, max_documents=50, force=True, background=False,
                         progress=False)
    assert forced.id not in (first.id, other.id)
    np.testing.assert_array_equal(forced.result()["input_ids"][:], first.result()["input_ids"][:])
    table = sk.token_stores()
    assert len(table) == 3 and {r["context_length"] for r in table.rows} == {32, 64}
    assert all(r["tokenizer"] == "tiny-llama" and r["corpus"] == "docs.jsonl" for r in table.rows)


def big_corpus(tmp_path, docs, copies=8):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for c in range(copies):
            for d in docs:
                f.write(json.dumps({"text": f"{c} {d}"}) + "\n")
    return sk.load_corpus(path)


def assert_same_store(a, b):
    for name in ("input_ids", "doc_ids", "positions", "attention_mask"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert a.stats() == b.stats()


@pytest.mark.heavy
def test_kill_9_and_resume_gives_the_same_store(ws, tmp_path, docs, tiny_lm):
    corpus = big_corpus(tmp_path, docs)
    kw = dict(context_length=64, batch_documents=100, commit_every=0.05)
    job = sk.tokenize(corpus, tiny_lm, **kw)
    for _ in range(2):  # kill it twice, each time after some commits
        start = len([r for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"])
        deadline = time.monotonic() + 60
        while len([r for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"]) < start + 3:
            assert time.monotonic() < deadline and job.status == "running"
            time.sleep(0.02)
        os.kill(job.info()["worker_pid"], signal.SIGKILL)
        job.wait(timeout=120)  # the lease frees when the process is gone, however long that takes
        assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
        job.resume()
    resumed = job.result(timeout=120)
    assert job.attempt == 3
    assert any("resuming at document" in e["message"] for e in job.events())
    straight = sk.tokenize(corpus, tiny_lm, force=True, background=False, progress=False, **kw).result()
    assert_same_store(resumed, straight)


@pytest.mark.heavy
def test_cancel_keeps_committed_rows_and_resume_completes(ws, tmp_path, docs, tiny_lm):
    corpus = big_corpus(tmp_path, docs)
    kw = dict(context_length=64, batch_documents=50, commit_every=0.05)
    job = sk.tokenize(corpus, tiny_lm, **kw)
    deadline = time.monotonic() + 60
    while (job.progress or 0) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.cancel().wait(timeout=120)
    assert job.status == "cancelled"
    partial = sk.TokenStore.open(job.id)
    assert 0 < partial.n_sequences and not partial.complete
    assert (partial["input_ids"][: partial.n_sequences] >= 0).all()
    job.resume(background=False, progress=False)
    assert job.status == "completed"
    straight = sk.tokenize(corpus, tiny_lm, force=True, background=False, progress=False, **kw).result()
    assert_same_store(job.result(), straight)


def test_num_proc_gives_the_same_store(ws, docs_file, tiny_lm):
    corpus = sk.load_corpus(docs_file)
    one = sk.tokenize(corpus, tiny_lm, context_length=64, batch_documents=200, background=False, progress=False)
    two = sk.tokenize(corpus, tiny_lm, context_length=64, num_proc=2, batch_documents=200, force=True,
                      background=False, progress=False)
    assert_same_store(one.result(), two.result())


def test_tokenizer_without_pad_token_pads_with_eos_and_says_so(ws, tmp_path, docs):
    from saekit.models.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "nopad", "gpt2", texts=docs[:300], pad_token=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.pad_token_id is None
    job = sk.tokenize(sk.load_corpus(sk.load_corpus.__module__ and
                                     __import__("datasets").Dataset.from_dict({"text": docs[:40]})),
                      tokenizer, context_length=16, packing="truncate", background=False, progress=False)
    store = job.result()
    assert store.attrs["pad_token_id"] == tokenizer.eos_token_id
    warnings = [e["message"] for e in job.events() if e["level"] == "warning"]
    assert any("no pad token; padding with id" in w for w in warnings)


def test_bad_input_is_refused_before_anything_is_written(ws, docs_file, tiny_lm):
    corpus = sk.load_corpus(docs_file)
    with pytest.raises(ConfigError, match="context_length=512 is longer than tiny-llama supports \\(256 tokens\\)"):
        sk.tokenize(corpus, tiny_lm, context_length=512)
    with pytest.raises(ConfigError, match="packing='pack'"):
        sk.tokenize(corpus, tiny_lm, packing="pack")
    with pytest.raises(ConfigError, match="context_length=0"):
        sk.tokenize(corpus, tiny_lm, context_length=0)
    with pytest.raises(ConfigError, match="not a fast tokenizer"):
        sk.tokenize(corpus, object())
    assert not ws.path.exists()


def test_orphan_store_is_listed_and_delete_removes_it(ws, docs_file, tiny_lm):
    store = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=20,
                        background=False, progress=False).result()
    registry.delete_job(ws, store.id)  # the record is gone, the files are not
    table = sk.token_stores()
    assert [(r["id"], r["status"]) for r in table.rows] == [(store.id, "orphan")]
    sk.TokenStore.open(store.id).delete()
    assert not store.path.exists() and len(sk.token_stores()) == 0
    with pytest.raises(DataError, match="no token store"):
        sk.TokenStore.open("tokenize-missing")


@pytest.mark.slow
def test_smollm2_tokenization_matches_its_tokenizer(ws, docs_file, smollm2, docs):
    store = sk.tokenize(sk.load_corpus(docs_file), smollm2, context_length=128, max_documents=200,
                        background=False, progress=False).result()
    flat = np.concatenate([np.asarray(e) for e in reference_tokens(smollm2.tokenizer, docs[:200])])
    np.testing.assert_array_equal(store["input_ids"][:][store["attention_mask"][:].astype(bool)], flat)
    assert store.stats()["tokens"] == len(flat) and store.stats()["unique_tokens"] > 1000
