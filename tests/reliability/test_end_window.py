"""A kill between a job's last work and its end record (SAEKIT_FAULT=before_end:1 kills the worker
there) leaves it resumable: tokenize used to remove its checkpoint and training its step folders first."""

import os

import numpy as np
import pytest
import torch
from data_for_tests import quick, toy_store

import saekit as sk


def _kill_before_the_end(monkeypatch):
    monkeypatch.setenv("SAEKIT_FAULT", "before_end:1")  # inherited by the workers: attempt 1 dies there


@pytest.mark.heavy  # a killed worker and its resume: 6-7 s
def test_tokenize_killed_before_its_end_resumes(ws, tiny_lm, docs_file, monkeypatch):
    corpus = sk.load_corpus(docs_file)
    _kill_before_the_end(monkeypatch)
    job = sk.tokenize(corpus, tiny_lm, context_length=32, commit_every=0.01)
    job.wait(timeout=300)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    monkeypatch.delenv("SAEKIT_FAULT")
    store = job.resume().result(timeout=300)
    reference = sk.tokenize(corpus, tiny_lm, context_length=32, force=True, background=False, progress=False).result()
    for name in ("input_ids", "doc_ids", "positions"):
        assert np.array_equal(np.asarray(store[name][:]), np.asarray(reference[name][:]))
    assert store.stats() == reference.stats()
    assert not list(ws.job_dir(job.id).glob("tokenize_checkpoint_*"))  # removed once the end was recorded


@pytest.mark.heavy  # a killed worker and its resume: 6-7 s
def test_training_killed_before_its_end_resumes(ws, monkeypatch):
    store = toy_store()
    _kill_before_the_end(monkeypatch)
    job = sk.train(store, "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick())
    job.wait(timeout=300)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    assert list((ws.path / "saes" / job.id).glob("step_*"))  # what a resume needs is still there
    monkeypatch.delenv("SAEKIT_FAULT")
    sae = job.resume().result(timeout=300)
    reference = sk.train(store, "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), force=True,
                         background=False, progress=False).result()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    assert not list((ws.path / "saes" / job.id).glob("step_*"))


@pytest.mark.heavy  # a killed worker and its resume: 6-7 s
def test_extraction_killed_before_its_end_resumes_at_once(ws, tiny_lm, docs_file, monkeypatch):
    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=32, background=False, progress=False).result()
    _kill_before_the_end(monkeypatch)
    job = sk.extract(tiny_lm, tokens, "blocks.1.resid_post", max_tokens=4000)
    job.wait(timeout=300)
    assert job.status == "failed"
    monkeypatch.delenv("SAEKIT_FAULT")
    acts = job.resume().result(timeout=300)
    assert acts.n_tokens == 4000 and acts.complete
    assert os.path.exists(acts.location)
