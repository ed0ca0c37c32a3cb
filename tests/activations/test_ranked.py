"""Extraction across torchrun ranks (2 CPU ranks over gloo): the store equals one process's, bitwise in every
array, and a rank killed mid-run is resumed from its own commit to the same store."""

import json

import numpy as np
import pytest

import saekit as sk
from saekit.activations.ranked import committed_prefix, rank_ranges

from test_extract import HOOKS, tokens

KW = dict(batch_size=8, chunk_bytes=2**14, commit_every=0.05)


def assert_same_rows(a, b):
    assert a.n_tokens == b.n_tokens and a.complete and b.complete
    for name in [*a.hook_points, "token_ids", "doc_ids", "positions"]:
        np.testing.assert_array_equal(a[name][:], b[name][:])  # bitwise, and no row missing or twice
    for h in a.hook_points:  # the statistics merge in another order: equal up to rounding
        np.testing.assert_allclose(a.stats(h)["mean"], b.stats(h)["mean"], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(a.stats(h)["var"], b.stats(h)["var"], rtol=1e-5, atol=1e-9)


def test_ranges_are_whole_chunks_and_the_prefix_is_what_every_rank_before_wrote():
    assert rank_ranges(1000, 64, 2) == [(0, 512), (512, 1000)]  # 16 chunks, 8 each; the last ends at the target
    assert rank_ranges(100, 64, 3) == [(0, 0), (0, 64), (64, 100)]  # more ranks than chunks: one idles
    ranges = [(0, 512), (512, 1000)]
    assert committed_prefix(ranges, [128, 600]) == 128
    assert committed_prefix(ranges, [512, 600]) == 600
    assert committed_prefix(ranges, [512, 1000]) == 1000
    assert committed_prefix([(0, 0), (0, 64), (64, 100)], [0, 64, 80]) == 80  # an idle rank is done at once


@pytest.mark.heavy
def test_two_ranks_equal_one_process_and_a_killed_rank_resumes(ws, docs_file, tiny_lm, monkeypatch):
    store = tokens(tiny_lm, docs_file, max_documents=250)
    one = sk.extract(tiny_lm, store, HOOKS, background=False, progress=False, **KW).result()
    monkeypatch.setenv("SAEKIT_FAULT", "extract_rank1_commit3:1")  # rank 1 is SIGKILLed after its third commit
    job = sk.extract(tiny_lm, store, HOOKS, launcher="torchrun", nproc=2, force=True, progress=False, **KW)
    job.wait(timeout=300, progress=False)
    assert job.status == "failed", job.info()  # torchrun stops rank 0 when rank 1 dies
    monkeypatch.delenv("SAEKIT_FAULT")
    rank1 = json.loads((ws.job_dir(job.id) / "extract-rank-1-of-2.json").read_text())
    ranges = rank_ranges(one.n_tokens, one.attrs["chunk_rows"], 2)
    assert ranges[1][0] < rank1["pos"] < ranges[1][1]  # it had committed part of its range
    partial = sk.ActivationStore(one.location.replace(one.id, job.id), ws)
    assert not partial.complete and partial.n_tokens <= ranges[0][1]  # it claims only rows that are written
    job.resume(launcher="torchrun", nproc=2, progress=False)
    two = job.result(timeout=300)
    assert job.info()["launcher"] == "torchrun" and job.attempt == 2
    assert_same_rows(two, one)
    states = [json.loads((ws.job_dir(job.id) / f"extract-rank-{r}-of-2.json").read_text()) for r in range(2)]
    assert [s["pos"] for s in states] == [hi for _, hi in ranges]


@pytest.mark.heavy
def test_two_nodes_joined_through_the_rendezvous_equal_one_process(ws, docs_file, tiny_lm):
    """Two torchrun "nodes" of one rank each on this machine, meeting at a c10d rendezvous as two machines do:
    the submitting one starts its torchrun, `saekit join` runs the other's."""
    import socket
    import subprocess
    import sys

    store = tokens(tiny_lm, docs_file, max_documents=120)
    one = sk.extract(tiny_lm, store, HOOKS, background=False, progress=False, **KW).result()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sk.ConfigError, match="rdzv_endpoint"):
        sk.extract(tiny_lm, store, HOOKS, launcher="torchrun", nnodes=2, force=True, **KW)
    job = sk.extract(tiny_lm, store, HOOKS, launcher="torchrun", nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}",
                     force=True, progress=False, **KW)
    assert job.status in ("queued", "running")  # it waits for the second node
    join = [sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), "join", job.id]
    joined = subprocess.run(join, capture_output=True, text=True, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert f"--rdzv-endpoint=127.0.0.1:{port}" in joined.stderr and "--nnodes=2" in joined.stderr
    two = job.result(timeout=300)
    assert_same_rows(two, one)
    assert [json.loads((ws.job_dir(job.id) / f"extract-rank-{r}-of-2.json").read_text())["pos"] for r in range(2)] \
        == [hi for _, hi in rank_ranges(one.n_tokens, one.attrs["chunk_rows"], 2)]
    again = subprocess.run(join, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "no multi-node attempt to join" in again.stderr  # it has ended
