"""sk.explain: explanations and their detection/fuzzing scores through a local chat model and through a real
OpenAI-compatible HTTP server on loopback (with its 503s retried), every call cached (a rerun makes none, a
kill -9 and resume makes no answered call twice), the explanations kept as LLM labels with their provenance,
bad backends refused before a job starts; and, with SmolLM2-135M-Instruct as scorer, right explanations of
planted features outscore wrong ones."""

import json
import os
import signal
import socket

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError, ModelLoadError
from saekit.features import scoring

from chat_server import ChatServer
from planted import PLANTED, planted_analysis


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, docs_file, tiny_chat):
    ws = sk.Workspace(tmp_path_factory.mktemp("explain") / "ws")
    feats, token = planted_analysis(ws, tiny_model_dir, docs_file)
    return {"ws": ws, "feats": feats, "chat": tiny_chat}


def test_scores_are_auc_and_balanced_accuracy_not_accuracy():
    assert scoring.auc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert scoring.auc([1.0], [1.0]) == 0.5  # ties count half
    assert scoring.auc([], [1.0]) is None
    # a scorer that always says "No": accuracy 0.9 on 1 positive in 10, balanced accuracy 0.5
    assert scoring.balanced_accuracy([-1.0], [-1.0] * 9) == 0.5
    assert scoring.balanced_accuracy([2.0, -1.0], [-3.0, 1.0]) == 0.5


def test_explain_with_a_local_chat_model_writes_scored_llm_labels(setup):
    feats, chat = setup["feats"], setup["chat"]
    job = sk.explain(feats, [PLANTED, 1, 2], explainer=chat, scorer=chat, n_examples=4, n_score=4,
                     background=False, progress=False)
    table = job.result()
    assert job.info()["spec"]["method"] == "likelihood"  # "auto" with a local scorer
    assert list(table.index) == [1, 2, PLANTED]  # by latent
    assert table["explanation"].str.len().gt(0).all()
    for column in ("detection_auc", "detection_balanced_accuracy", "fuzzing_auc", "fuzzing_balanced_accuracy"):
        assert 0 <= table.loc[PLANTED, column] <= 1, column
    assert (table["n_activating"] == 4).all() and table.loc[PLANTED, "n_non_activating"] == 4
    # the other latents are random directions that fire on about half the tokens: few windows are free of them,
    # and without any, detection has no non-activating contexts and says so (no score) instead of inventing one
    assert (table.loc[[1, 2], "n_non_activating"] < 4).all()
    assert (table["detection_auc"].isna() == (table["n_non_activating"] == 0)).all()
    assert (table["tokens_in"] > 0).all()
    info = job.info()["result"]
    assert info["calls"] > 0 and info["cache_hits"] == 0
    label = feats[PLANTED]
    assert label.label_source == "llm" and label.label == table.loc[PLANTED, "explanation"]
    row = label.label_history().iloc[-1]
    assert json.loads(row["provenance"]) == {"explainer": f"local:{chat.ref['fingerprint']}", "explainer_model": chat.name,
                                             "scorer": f"local:{chat.ref['fingerprint']}", "scorer_model": chat.name,
                                             "job": job.id}
    assert json.loads(row["scores"])["detection_auc"] == pytest.approx(table.loc[PLANTED, "detection_auc"])
    again = sk.explain(feats, [PLANTED, 1, 2], explainer=chat, scorer=chat, n_examples=4, n_score=4, force=True,
                       background=False, progress=False)
    assert again.info()["result"]["calls"] == 0 and again.info()["result"]["cache_hits"] == info["calls"]
    assert again.result().equals(table)
    assert len(feats.label_history(PLANTED)) == 2  # each job wrote its label once


def test_your_own_explanations_are_scored_not_labelled(setup):
    feats, chat = setup["feats"], setup["chat"]
    before = len(feats.label_history())
    table = sk.explain(feats, [PLANTED], explanations={PLANTED: "the letter s"}, scorer=chat, n_score=4,
                       background=False, progress=False).result()
    assert table.loc[PLANTED, "explanation"] == "the letter s" and 0 <= table.loc[PLANTED, "detection_auc"] <= 1
    assert len(feats.label_history()) == before


def test_an_openai_compatible_server_on_loopback_with_retries(setup):
    feats, chat = setup["feats"], setup["chat"]
    with ChatServer(sk.LocalChat(chat), fail_first=2) as server:
        remote = sk.OpenAIChat("tiny-chat", server.url, max_retries=3, concurrency=2)
        job = sk.explain(feats, [PLANTED, 3], explainer=remote, scorer=remote, n_examples=3, n_score=3,
                         background=False, progress=False)
        table = job.result()
        assert server.refused == 2 and len(server.answered) == job.info()["result"]["calls"]
        assert len(set(server.answered)) == len(server.answered)
    assert list(table.index) == [3, PLANTED] and 0 <= table.loc[PLANTED, "detection_auc"] <= 1
    assert feats[3].label_source == "llm"
    assert json.loads(feats[3].label_history().iloc[-1]["provenance"])["explainer"].startswith("openai:tiny-chat@http://127.0.0.1")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_backends_and_features_are_refused_before_a_job_starts(setup, tiny_lm, monkeypatch):
    feats, chat, ws = setup["feats"], setup["chat"], setup["ws"]
    before = len(sk.jobs(workspace=ws))
    with pytest.raises(ConfigError, match="not a chat model"):
        sk.explain(feats, [1], explainer=tiny_lm)
    with pytest.raises(ModelLoadError, match="cannot reach the endpoint"):
        sk.explain(feats, [1], explainer=sk.OpenAIChat("m", f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"no API key: \$OPENAI_API_KEY is not set"):
        sk.explain(feats, [1], explainer=sk.OpenAIChat("gpt-4o-mini"))
    with pytest.raises(ConfigError, match="not a latent"):
        sk.explain(feats, [feats.n_latents], explainer=chat)
    with pytest.raises(ConfigError, match="explainer="):
        sk.explain(feats, [1])
    with pytest.raises(ConfigError, match="no explanation given"):
        sk.explain(feats, [1, 2], explanations={1: "x"}, scorer=chat)
    with pytest.raises(ConfigError, match="n_score"):
        sk.explain(feats, [1], explainer=chat, n_score=0)
    with pytest.raises(ConfigError, match="method='likelihood' needs a local scorer"):
        with ChatServer(sk.LocalChat(chat)) as server:
            remote = sk.OpenAIChat("tiny-chat", server.url)
            sk.explain(feats, [1], explainer=remote, scorer=remote, method="likelihood")
    assert len(sk.jobs(workspace=ws)) == before


@pytest.mark.heavy
def test_killed_while_waiting_for_the_llm_and_resumed_makes_no_call_twice(setup):
    feats, chat = setup["feats"], setup["chat"]
    features = list(range(8))
    kw = dict(n_examples=3, n_score=3, progress=False)
    with ChatServer(sk.LocalChat(chat), hold_at=25) as server:
        remote = sk.OpenAIChat("tiny-chat", server.url, concurrency=1)
        job = sk.explain(feats, features, explainer=remote, scorer=remote, name="killed", **kw)
        assert server.holding.wait(300), "the worker never reached the held request"
        os.kill(job.info()["worker_pid"], signal.SIGKILL)
        job.wait(timeout=120)
        assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
        done_before = len((setup["ws"].job_dir(job.id) / "explanations.jsonl").read_text().splitlines())
        server.release.set()
        job.resume()
        resumed = job.result(timeout=600)
        assert 0 < done_before < len(features)
        assert len(server.answered) == len(set(server.answered)), "an answered call was made again"
        assert server.requests == len(server.answered) + 1  # only the request that was never answered, again
    with ChatServer(sk.LocalChat(chat)) as fresh:  # an uninterrupted run, from nothing cached
        for path in (setup["ws"].path / "cache" / "llm").rglob("*.json"):
            path.unlink()
        remote = sk.OpenAIChat("tiny-chat", fresh.url, concurrency=1)
        straight = sk.explain(feats, features, explainer=remote, scorer=remote, background=False, name="straight",
                              **kw).result()
    import pandas as pd
    pd.testing.assert_frame_equal(resumed, straight)


@pytest.mark.slow
def test_right_explanations_of_planted_features_outscore_wrong_ones_with_smollm2(smollm2, tmp_path, docs_file):
    """Latents planted on SmolLM2's embedding fire on one word each; SmolLM2-135M-Instruct scores the right
    explanation of each against the explanation of another planted latent."""
    ws = sk.Workspace(tmp_path / "ws")
    toks = sk.tokenize(sk.load_corpus(docs_file), smollm2, context_length=64, max_documents=400, background=False,
                       progress=False, workspace=ws).result()
    hook = "blocks.0.resid_pre"
    store = sk.extract(smollm2, toks, [hook], background=False, progress=False, workspace=ws).result()
    words = [" file", " list", " function", " number", " string", " value", " object", " error"]
    ids = [smollm2.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    emb = smollm2.model.get_input_embeddings().weight.detach().float()
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=smollm2.d_model, d_sae=len(words)))
    with torch.no_grad():
        sae.b_dec.zero_()
        for i, token in enumerate(ids):
            unit = emb[token] / emb[token].norm()
            scores = emb @ unit
            others = torch.cat([scores[:token], scores[token + 1:]]).max()
            sae.W_enc[i], sae.b_enc[i], sae.W_dec[i] = unit, -(scores[token] + others) / 2, unit
    feats = sk.analyze(sae, store, top_k=10, background=False, progress=False, workspace=ws).result()
    alive = [i for i in range(len(words)) if feats[i].count >= 12]
    assert len(alive) >= 5, [feats[i].count for i in range(len(words))]
    right = {i: f'the word "{words[i].strip()}"' for i in alive}
    wrong = {i: right[alive[(n + 1) % len(alive)]] for n, i in enumerate(alive)}
    kw = dict(scorer=smollm2, n_score=6, background=False, progress=False)
    good = sk.explain(feats, alive, explanations=right, **kw).result()["detection_auc"]
    bad = sk.explain(feats, alive, explanations=wrong, **kw).result()["detection_auc"]
    print(f"\ndetection AUC with SmolLM2-135M-Instruct as scorer, {len(alive)} planted features: "
          f"right explanations {good.mean():.3f}, wrong ones {bad.mean():.3f}; right > wrong for "
          f"{int((good > bad).sum())} of {len(alive)}")
    assert (good > bad).sum() > len(alive) / 2 and good.mean() > bad.mean()


def test_the_pool_of_a_model_analysis_runs_the_model_over_its_windows_a_batch_at_a_time(tmp_path, tiny_model_dir,
                                                                                      docs_file):
    """An analysis of ``(model, tokens)`` stored no rows: the scoring pool runs the model over its windows, a batch
    of them (right-padded) at a time; which latents fire on each window is what one window at a time gives."""
    from planted import tokens

    from saekit.features.explain import MODEL_BATCH, negative_pool

    ws = sk.Workspace(tmp_path / "ws")
    lm = sk.load_model(tiny_model_dir, device="cpu")
    hook = "blocks.1.resid_post"  # after attention: a window's rows depend on the tokens before them
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model, d_sae=32)).eval()
    feats = sk.analyze(sae, (lm, tokens(lm, docs_file, n=100, workspace=ws)), hook_point=hook, background=False,
                       progress=False, workspace=ws).result()
    windows, fires = negative_pool(feats, sae, seed=0, device="cpu")
    assert len(windows) > MODEL_BATCH and fires.shape == (len(windows), 32)
    lengths = {sum(t >= 0 for t in w.token_ids) for w in windows}
    assert len(lengths) > 1  # windows cut by a document's ends: the batches were padded
    with torch.no_grad():
        alone = [(sae.encode(lm.run_with_cache([t for t in w.token_ids if t >= 0], hook)[hook][0].float()) > 0)
                 .any(0).numpy() for w in windows]
    assert (fires == np.stack(alone)).all()
    assert 0 < fires.mean() < 1
