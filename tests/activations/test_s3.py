"""Activation stores on S3-compatible object storage, against a real S3 server on loopback (moto's server mode):
extraction into an s3:// root killed and resumed equals a local extraction bitwise, training streams from
the S3 store to the same SAE as from disk, deleting the job deletes the objects, and the credentials appear in
no spec, registry row, event log or worker log."""

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import saekit as sk
from saekit.jobs.events import read_all

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s3_server  # noqa: E402
from test_extract import HOOKS, assert_same_store, tokens  # noqa: E402


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


@pytest.mark.heavy
def test_extraction_to_s3_killed_and_resumed_equals_local(ws, s3, docs_file, tiny_lm):
    import s3fs

    store = tokens(tiny_lm, docs_file, max_documents=300)
    kw = dict(batch_size=8, commit_every=0.1, chunk_bytes=2**17)
    job = sk.extract(tiny_lm, store, HOOKS, root=f"{s3}/stores", **kw)
    for _ in range(1):
        _wait_commits(ws, job, 3)
        os.kill(job.info()["worker_pid"], signal.SIGKILL)
        job.wait(timeout=120)
        assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
        partial = sk.ActivationStore(job.info()["spec"]["root"] + f"/{job.id}.zarr", ws)
        assert partial.n_tokens > 0 and not partial.complete  # it claims only rows whose chunks are written
        job.resume()
    remote = job.result(timeout=300)
    assert remote.location == f"{s3}/stores/{job.id}.zarr" and job.attempt == 2
    local = sk.extract(tiny_lm, store, HOOKS, force=True, background=False, progress=False, **kw).result()
    assert_same_store(remote, local)

    # training streams from the S3 store (a background worker reaches it through the same AWS environment)
    config = sk.SAEConfig(arch="topk", d_sae=64, k=4)
    train = sk.TrainConfig(total_tokens=10_000, batch_size=500, eval_tokens=2_000, log_every=5, preload=False)
    from_s3 = sk.train(remote, HOOKS[0], config, train).result(timeout=300)
    from_disk = sk.train(local, HOOKS[0], config, train, background=False, progress=False).result()
    for name, value in from_disk.state_dict().items():
        torch.testing.assert_close(from_s3.state_dict()[name], value, rtol=0, atol=0)
    assert from_s3.metadata["eval"]["fvu"] == from_disk.metadata["eval"]["fvu"]

    # the credentials are nowhere saekit writes
    written = [ws.registry_path.read_bytes()]
    written += [p.read_bytes() for p in ws.path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".log", ".json")]
    assert not any(s3_server.SECRET.encode() in blob for blob in written)

    fs = s3fs.S3FileSystem()
    assert fs.exists(remote.location)
    job.delete()
    assert not fs.exists(remote.location)
    assert sk.ActivationStore(local.location, ws).n_tokens == local.n_tokens  # the local store is untouched
