"""saekit's stores on S3-compatible object storage, against a real S3 server on loopback (moto's server mode).

One pipeline runs on S3 with every output under an s3:// root: a tokenization, an extraction from that token
store, an analysis of that store, and a training run whose checkpoints and final live there. Each is SIGKILLed
mid-run and resumed, and each equals its local twin; training streams from the S3 store to the same SAE as from
disk; deleting a job deletes its objects; and the credentials appear in no spec, registry row, event log or
worker log."""

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.jobs.events import read_all

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_server  # noqa: E402
from test_extract import HOOKS, assert_same_store  # noqa: E402
from data_for_tests import dictionary_data, quick  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    server, previous = s3_server.start()
    try:
        yield s3_server.make_bucket("saekit-acts")
    finally:
        s3_server.stop(server, previous)


def _wait_commits(ws, job, n, timeout=300):
    import time

    deadline = time.monotonic() + timeout
    while sum(r["t"] == "commit" for r in read_all(ws.job_dir(job.id) / "events.jsonl")) < n:
        assert time.monotonic() < deadline and job.status in ("queued", "running"), job.info()
        time.sleep(0.02)


def _kill_and_resume(ws, job, commits):
    """SIGKILL the job's worker after ``commits`` commits, see it noticed, start the next attempt."""
    _wait_commits(ws, job, commits)
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    job.wait(timeout=120)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    job.resume(progress=False)


@pytest.mark.heavy
def test_a_pipeline_on_s3_killed_and_resumed_equals_it_on_disk(ws, s3, docs_file, tiny_lm, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem()
    # a token store under an s3:// root
    tkw = dict(context_length=64, max_documents=200, batch_documents=20, commit_every=0.01)
    tokenize = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, root=f"{s3}/tokens", progress=False, **tkw)
    _kill_and_resume(ws, tokenize, 2)
    remote_tokens = tokenize.result(timeout=300)
    assert remote_tokens.location == f"{s3}/tokens/{tokenize.id}.zarr" and tokenize.attempt == 2
    local_tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, background=False, progress=False, **tkw).result()
    for name in ("input_ids", "doc_ids", "positions", "attention_mask"):
        np.testing.assert_array_equal(remote_tokens[name][:], local_tokens[name][:])
    assert remote_tokens.stats() == local_tokens.stats()
    assert sk.TokenStore.open(tokenize.id).location == remote_tokens.location  # by id, through its job's spec
    assert tokenize.id in {row["id"] for row in sk.token_stores().rows}

    # an activation store under an s3:// root, extracted from the S3 token store
    kw = dict(batch_size=8, commit_every=0.1, chunk_bytes=2**17)
    job = sk.extract(tiny_lm, remote_tokens, HOOKS, root=f"{s3}/stores", progress=False, **kw)
    _wait_commits(ws, job, 3)
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    job.wait(timeout=120)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    partial = sk.ActivationStore(job.info()["spec"]["root"] + f"/{job.id}.zarr", ws)
    assert partial.n_tokens > 0 and not partial.complete  # it claims only rows whose chunks are written
    job.resume(progress=False)
    remote = job.result(timeout=300)
    assert remote.location == f"{s3}/stores/{job.id}.zarr" and job.attempt == 2
    local = sk.extract(tiny_lm, local_tokens, HOOKS, background=False, progress=False, **kw).result()
    assert_same_store(remote, local)

    # training streams from the S3 store (here; the workers above reached S3 through the same AWS environment)
    config = sk.SAEConfig(arch="topk", d_sae=64, k=4)
    train = sk.TrainConfig(total_tokens=10_000, batch_size=500, eval_tokens=2_000, log_every=5, preload=False)
    from_s3 = sk.train(remote, HOOKS[0], config, train, background=False, progress=False).result()
    from_disk = sk.train(local, HOOKS[0], config, train, background=False, progress=False).result()
    for name, value in from_disk.state_dict().items():
        torch.testing.assert_close(from_s3.state_dict()[name], value, rtol=0, atol=0)
    assert from_s3.metadata["eval"]["fvu"] == from_disk.metadata["eval"]["fvu"]

    # an analysis with its tables under an s3:// root, of the S3 store (contexts from the S3 token store); killed
    # before its tables are written, resumed; its labels journal stays in the workspace
    akw = dict(top_k=5, quantiles=2, per_quantile=2, context=(4, 2), neighbours=3, progress=False)
    monkeypatch.setenv("SAEKIT_FAULT", "analyze_before_tables:1")
    analysis = sk.analyze(from_s3, remote, root=f"{s3}/analyses", **akw)
    analysis.wait(timeout=300)
    assert analysis.status == "failed" and analysis.info()["error_type"] == "worker_lost"
    monkeypatch.delenv("SAEKIT_FAULT")
    analysis.resume(progress=False)
    feats = analysis.result(timeout=300)
    assert feats.folder == f"{s3}/analyses/{analysis.id}" and fs.exists(f"{feats.folder}/examples.parquet")
    on_disk = sk.analyze(from_disk, local, background=False, **akw).result()
    import pandas as pd

    pd.testing.assert_frame_equal(feats.to_pandas(), on_disk.to_pandas())
    busiest = int(np.argmax(on_disk.column("count")))
    assert [e.tokens for e in feats[busiest].examples] == [e.tokens for e in on_disk[busiest].examples]
    feats.label(busiest, "a label kept beside the tables")
    journal = ws.path / "analyses" / analysis.id / "labels.jsonl"
    assert journal.exists() and not fs.exists(f"{feats.folder}/labels.jsonl")
    reopened = sk.analyses().rows
    assert {r["id"]: r["folder"] for r in reopened}[analysis.id] == feats.folder
    assert sk.job(analysis.id).result()[busiest].label == "a label kept beside the tables"

    # SAEs: checkpoints and the final under an s3:// root; killed after its 2nd checkpoint, resumed
    x, _ = dictionary_data(20_000, 16, 64, 3, seed=5)
    toy = sk.ActivationStore.from_array(x, "toy", chunk_bytes=2**16)
    args = (toy, "toy", sk.SAEConfig(arch="topk", d_sae=64, k=3))
    tc = quick(total_tokens=50_000, checkpoint_every=20, log_every=10, keep_checkpoints=2)
    run = sk.train(*args, tc, root=f"{s3}/saes", progress=False)
    _kill_and_resume(ws, run, 2)
    resumed = run.result(timeout=300)
    assert any("resuming from the checkpoint" in e["message"] for e in run.events())
    final = run.info()["result"]["saes"][0]["path"]
    assert final == f"{s3}/saes/{run.id}/final" and resumed.saved_folder() == final
    assert fs.exists(f"{final}/cfg.json")
    assert [n for n in fs.ls(f"{s3}/saes/{run.id}") if "step_" in n] == []  # checkpoints go after the end
    assert not (ws.path / "saes" / run.id).exists()  # nothing of it in the workspace
    straight = sk.train(*args, tc, background=False, progress=False).result()
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(sk.SAE.load(final).W_dec, resumed.W_dec, rtol=0, atol=0)  # from the URL itself
    with pytest.raises(sk.DataError, match="no SAE at"):
        sk.SAE.load(f"{s3}/saes/nothing-here")

    # the credentials are nowhere saekit writes
    written = [ws.registry_path.read_bytes()]
    written += [p.read_bytes() for p in ws.path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".log", ".json")]
    assert not any(s3_server.SECRET.encode() in blob for blob in written)

    # deleting a job deletes its objects, and only its own
    for done in (analysis, job, tokenize, run):
        done.delete()
    assert not fs.exists(remote.location) and not fs.exists(remote_tokens.location)
    assert not fs.exists(feats.folder) and not journal.parent.exists()
    assert not fs.exists(f"{s3}/saes/{run.id}")
    assert sk.ActivationStore(local.location, ws).n_tokens == local.n_tokens  # the local store is untouched
