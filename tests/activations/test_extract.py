"""Extraction into activation stores: exact contents, statistics, resume after kill -9, cancel, bounded
memory, refusals, write failures, fsspec roots, out-of-memory backoff."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import saekit as sk
from saekit import registry
from saekit.errors import DataError, HookPointError, StorageError
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path

HOOKS = ["blocks.1.resid_post", "blocks.2.mlp_out"]


def tokens(lm, docs_file, **kw):
    return sk.tokenize(sk.load_corpus(docs_file), lm, context_length=64, background=False, progress=False,
                       **kw).result()


def assert_same_store(a, b):
    assert a.n_tokens == b.n_tokens
    for name in [*a.hook_points, "token_ids", "doc_ids", "positions"]:
        np.testing.assert_array_equal(a[name][:a.n_tokens], b[name][:b.n_tokens])
    for h in a.hook_points:
        sa, sb = a.stats(h), b.stats(h)
        np.testing.assert_array_equal(sa["mean"], sb["mean"])
        np.testing.assert_array_equal(sa["var"], sb["var"])


def test_store_holds_the_model_activations_of_real_tokens(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=200)
    acts = sk.extract(tiny_lm, store, HOOKS, dtype="float32", background=False, progress=False).result()
    ids, mask = store["input_ids"][:], store["attention_mask"][:].astype(bool)
    real = mask & ~((ids == tiny_lm.tokenizer.bos_token_id) & (store["positions"][:] == 0))
    assert acts.n_tokens == real.sum() and acts.hook_points == HOOKS and acts.d_model == 64 and acts.complete
    np.testing.assert_array_equal(acts["token_ids"][:], ids[real])
    np.testing.assert_array_equal(acts["doc_ids"][:], store["doc_ids"][:][real])
    np.testing.assert_array_equal(acts["positions"][:], store["positions"][:][real])
    cache = tiny_lm.run_with_cache(ids[:5], HOOKS, attention_mask=mask[:5].astype(np.int64))
    first = int(real[:5].sum())
    for h in HOOKS:
        torch.testing.assert_close(acts.read(h, 0, first), cache[h][torch.from_numpy(real[:5])], rtol=1e-5, atol=1e-5)
        x = acts.read(h).double().numpy()
        stats = acts.stats(h)  # merged across batches, exactly
        scale = x.std(0)  # float32 sums within a batch, float64 across: errors far below the spread
        assert (np.abs(stats["mean"] - x.mean(0)) <= 1e-5 * scale).all()
        np.testing.assert_allclose(stats["var"], x.var(0), rtol=1e-5)
        assert stats["count"] == len(x) and stats["max_abs"] == np.abs(x).max()
        assert stats["mean_norm"] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-6)
    with_bos = sk.extract(tiny_lm, store, HOOKS[0], include_bos=True, background=False, progress=False).result()
    assert with_bos.n_tokens == mask.sum() and with_bos.dtype == torch.bfloat16
    bf16 = with_bos.read(HOOKS[0])
    assert bf16.dtype == torch.bfloat16 and with_bos["blocks.1.resid_post"].dtype == np.uint16


def test_max_tokens_and_idempotency(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=300)
    job = sk.extract(tiny_lm, store, HOOKS, max_tokens=5000, background=False, progress=False)
    assert job.result().n_tokens == 5000
    again = sk.extract(tiny_lm, store, HOOKS, max_tokens=5000, batch_size=3, background=False, progress=False)
    assert again.id == job.id  # batch size does not change the result, so it is not part of the key
    result = job.info()["result"]
    assert result["n_tokens"] == 5000 and set(result["stats"]) == set(HOOKS)


def _wait_commits(ws, job, more):
    start = len([r for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"])
    deadline = time.monotonic() + 60
    while len([r for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"]) < start + more:
        assert time.monotonic() < deadline and job.status == "running", job.info()
        time.sleep(0.02)


@pytest.mark.heavy
def test_killed_twice_and_resumed_equals_one_go(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=800)
    kw = dict(batch_size=8, commit_every=0.1, chunk_bytes=2**18)
    job = sk.extract(tiny_lm, store, HOOKS, **kw)
    for _ in range(2):
        _wait_commits(ws, job, 3)
        os.kill(job.info()["worker_pid"], signal.SIGKILL)
        job.wait(timeout=120)  # the lease frees when the process is gone, however long that takes
        assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
        job.resume()
    resumed = job.result(timeout=300)
    assert job.attempt == 3 and any("resuming at sequence" in e["message"] for e in job.events())
    straight = sk.extract(tiny_lm, store, HOOKS, force=True, **kw).result(timeout=300)
    assert_same_store(resumed, straight)  # bitwise, with no token missing or twice
    ids, mask = store["input_ids"][:], store["attention_mask"][:].astype(bool)
    real = mask & ~((ids == tiny_lm.tokenizer.bos_token_id) & (store["positions"][:] == 0))
    np.testing.assert_array_equal(resumed["token_ids"][:], ids[real])


@pytest.mark.heavy
def test_cancel_keeps_committed_rows_and_resume_completes(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=400)  # cancelled after 2 commits of 0.1 s: most is left
    kw = dict(batch_size=4, commit_every=0.1, chunk_bytes=2**18)
    job = sk.extract(tiny_lm, store, HOOKS, **kw)
    _wait_commits(ws, job, 2)
    job.cancel().wait(timeout=120)
    assert job.status == "cancelled"
    partial = sk.ActivationStore.open(job.id)
    assert 0 < partial.n_tokens and not partial.complete
    assert torch.isfinite(partial.read(HOOKS[0]).float()).all()
    job.resume(background=False, progress=False)
    straight = sk.extract(tiny_lm, store, HOOKS, force=True, background=False, progress=False, **kw).result()
    assert_same_store(job.result(), straight)


@pytest.mark.heavy
def test_peak_memory_does_not_grow_with_max_tokens(ws, tmp_path, docs_file, tiny_model_dir):
    lines = docs_file.read_text().splitlines()
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(lines * 3) + "\n")  # about 820k tokens
    lm = sk.load_model(tiny_model_dir)
    store = sk.tokenize(sk.load_corpus(big), lm, context_length=64, background=False, progress=False).result()
    script = r"""
import resource, sys, json
import saekit as sk
sk.set_workspace(sys.argv[1])
lm = sk.load_model(sys.argv[2])
store = sk.TokenStore.open(sys.argv[3])
acts = sk.extract(lm, store, ["blocks.3.resid_post"], max_tokens=int(sys.argv[4]), dtype="float32",
                  background=False, progress=False).result()
print(json.dumps({"n": acts.n_tokens, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
    runs = {}
    for n in (100_000, 700_000):  # each in a fresh process that only extracts
        out = subprocess.run([sys.executable, "-c", script, str(ws.path), str(tiny_model_dir), store.id, str(n)],
                             capture_output=True, text=True, check=True)
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[700_000]["n"] == 700_000
    # 700k rows x 64 float32 held in memory would add 179 MB to a ~740 MB process; streamed, the peak barely moves
    growth = (runs[700_000]["peak"] - runs[100_000]["peak"]) / runs[100_000]["peak"]
    print(json.dumps({**runs, "growth": growth}))
    assert growth < 0.10


def test_refusals_change_nothing(ws, docs_file, tiny_lm, monkeypatch):
    store = tokens(tiny_lm, docs_file, max_documents=50)
    with pytest.raises(HookPointError, match="blocks.9.resid_post"):
        sk.extract(tiny_lm, store, "blocks.9.resid_post")
    import saekit.activations.extraction as extract_module

    monkeypatch.setattr(extract_module.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(StorageError, match=r"needs .* but .* has 1000 B free"):
        sk.extract(tiny_lm, store, HOOKS)
    assert len(sk.jobs(kind="extract")) == 0 and not (ws.path / "activations").exists()


def test_incomplete_token_store_is_refused(ws, docs_file, tiny_lm):
    job = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=50, background=False,
                      progress=False)
    store = job.result()
    import zarr

    zarr.open_group(str(store.path), mode="r+").attrs["complete"] = False
    with pytest.raises(DataError, match="not complete"):
        sk.extract(tiny_lm, sk.TokenStore.open(store.id), HOOKS)


@pytest.mark.heavy
def test_write_failure_fails_clearly_and_keeps_committed_rows(ws, docs_file, tiny_lm, monkeypatch):
    store = tokens(tiny_lm, docs_file, max_documents=400)
    from zarr.storage import LocalStore

    calls = {"n": 0}
    original = LocalStore.set

    async def failing_set(self, key, value):
        if "activations" in str(self.root) and "/c/" in key:
            calls["n"] += 1
            if calls["n"] > 40:
                raise PermissionError(13, "Read-only file system", str(self.root / key))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    job = sk.extract(tiny_lm, store, HOOKS, batch_size=4, commit_every=0.01, chunk_bytes=2**14, background=False,
                     progress=False)
    info = job.info()
    assert info["status"] == "failed" and info["error_type"] == "data"
    assert "Read-only file system" in info["error_message"] and "rows committed before are intact" in info["error_message"]
    monkeypatch.setattr(LocalStore, "set", original)
    partial = sk.ActivationStore.open(job.id)
    assert partial.n_tokens > 0 and len(partial.read(HOOKS[0])) == partial.n_tokens
    job.resume(background=False, progress=False)
    assert job.status == "completed"


def test_a_foreign_store_is_never_overwritten(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=50)
    a = sk.extract(tiny_lm, store, HOOKS[0], background=False, progress=False)
    b = sk.extract(tiny_lm, store, HOOKS[1], max_tokens=10, background=False, progress=False)
    path_a, path_b = ws.path / "activations" / f"{a.id}.zarr", ws.path / "activations" / f"{b.id}.zarr"
    import shutil

    shutil.rmtree(path_b)
    shutil.copytree(path_a, path_b)  # b's place now holds a's store
    with registry.transaction(ws, write=True) as tx:  # make b resumable: mark it failed
        tx.execute("UPDATE jobs SET status='failed' WHERE id=?", [b.id])
    b.resume(background=False, progress=False)
    assert b.status == "failed" and b.info()["error_type"] == "data"
    assert f"made by {a.id}" in b.info()["error_message"]
    assert sk.ActivationStore(path_b).attrs["job_id"] == a.id  # untouched


def test_fsspec_roots(ws, docs_file, tiny_lm, tmp_path):
    store = tokens(tiny_lm, docs_file, max_documents=100)
    url = f"file://{tmp_path}/remote"
    acts = sk.extract(tiny_lm, store, HOOKS, root=url, background=False, progress=False).result()
    assert acts.location.startswith("file://") and (tmp_path / "remote" / f"{acts.id}.zarr" / "zarr.json").exists()
    memory = sk.extract(tiny_lm, store, HOOKS, root="memory://saekit-test", background=False, progress=False).result()
    assert memory.location.startswith("memory://")
    assert_same_store(acts, memory)
    assert sum(len(b) for b in memory.batches(HOOKS[0], 1000)) == memory.n_tokens
    job = sk.job(memory.attrs["job_id"])
    job.delete()
    with pytest.raises(DataError):
        sk.ActivationStore.open(memory.location)


@pytest.mark.heavy
def test_out_of_memory_halves_the_batch_and_continues(ws, docs_file, tiny_lm, monkeypatch):
    store = tokens(tiny_lm, docs_file, max_documents=300)
    reference = sk.extract(tiny_lm, store, HOOKS, batch_size=2, background=False, progress=False).result()
    original = type(tiny_lm).run_with_cache

    def flaky(self, input_ids, *args, **kw):
        if len(input_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, input_ids, *args, **kw)

    monkeypatch.setattr(type(tiny_lm), "run_with_cache", flaky)
    job = sk.extract(tiny_lm, store, HOOKS, batch_size=8, force=True, background=False, progress=False)
    assert job.status == "completed"
    messages = [e["message"] for e in job.events() if e["level"] == "warning"]
    assert messages == ["out of memory at batch size 8; continuing with 4",
                        "out of memory at batch size 4; continuing with 2"]
    assert_same_store(job.result(), reference)


def test_orphan_store_is_listed_and_deletable(ws, docs_file, tiny_lm):
    store = tokens(tiny_lm, docs_file, max_documents=50)
    acts = sk.extract(tiny_lm, store, HOOKS, background=False, progress=False).result()
    assert [(r["id"], r["status"]) for r in sk.activation_stores().rows] == [(acts.id, "completed")]
    registry.delete_job(ws, acts.id)
    assert [(r["id"], r["status"]) for r in sk.activation_stores().rows] == [(acts.id, "orphan")]
    acts.delete()
    assert len(sk.activation_stores()) == 0


def test_extraction_never_waits_for_the_device_before_queuing_the_next_batch(ws, docs_file, tiny_lm, monkeypatch):
    """On a GPU every read back stalls the next forward pass (issue 25; an H200 ran extraction at 0.21x the bare
    forward). saekit's own code reads nothing back: rows and statistics go to the host by copies queued without
    waiting (``to_host``: pinned, non-blocking on a GPU), and a batch is handed to the writer only after the next
    batch's forward pass was queued, so the wait for its copies overlaps that pass. Counted on this CPU (what the
    model itself does is not saekit's), and the order of forward passes and hand-overs recorded."""
    import sys
    from pathlib import Path

    from saekit.activations import extraction
    from saekit.activations.writer import ChunkWriter

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from simulated_cuda import counting_syncs

    store = tokens(tiny_lm, docs_file, max_documents=120)
    order, copied = [], []
    forward, put, to_host = type(tiny_lm).run_with_cache, ChunkWriter.put, extraction.to_host
    monkeypatch.setattr(type(tiny_lm), "run_with_cache", lambda self, *a, **k: order.append("forward") or forward(self, *a, **k))
    monkeypatch.setattr(ChunkWriter, "put", lambda self, *a, **k: order.append("put") or put(self, *a, **k))
    monkeypatch.setattr(extraction, "to_host", lambda t: copied.append(t.shape) or to_host(t))
    with counting_syncs() as seen:
        acts = sk.extract(tiny_lm, store, HOOKS, batch_size=8, background=False, progress=False).result()
    ours = [s for s in seen if "/saekit/" in s.site and "language_model.py" not in s.site]
    assert ours == [], sorted({f"{s} at {s.site}" for s in ours})
    batches = -(-store.n_sequences // 8)
    assert order == ["forward", "forward"] + ["put", "forward"] * (batches - 2) + ["put", "put"]
    assert len(copied) == len(HOOKS) * batches and sum(shape[0] for shape in copied) == len(HOOKS) * acts.n_tokens
