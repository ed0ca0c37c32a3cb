"""What cleans up, labels and re-runs work never loses or silently changes it (issue 24, items 6 and 9-17): gc
decides each removal again under the registry's lock, labels are written once and where the workspace is,
analyses refuse another layer's activations and damaged tables, imported labels are checked, corpus keys follow
the text."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import saekit as sk
from saekit import registry
from saekit.errors import ConfigError, DataError
from saekit.jobs import gc
from saekit.jobs.retention import ORPHAN, collect
from saekit.registry.labels import add_labels, label_rows, read_journal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
from planted import HOOK, PLANTED, planted_analysis, planted_sae, tokens  # noqa: E402

NEVER = sk.RetentionPolicy(events_days=None, reduce_events_days=None, worker_logs_days=None, checkpoints=False)


# -- item 6: gc and a job that starts while it plans -----------------------------------------------------------

def test_gc_keeps_what_a_job_created_after_its_plan_owns(ws, tiny_lm, docs_file, monkeypatch):
    leftover = ws.path / "tokens" / "tokenize-deadbeef.zarr"  # an orphan: no job of that id
    leftover.mkdir(parents=True)
    stale = registry.list_jobs(ws, with_spec=True)  # gc lists the jobs (none) ...
    store = tokens(tiny_lm, docs_file, n=20)  # ... a tokenization starts and completes ...
    job = sk.jobs()[0]
    monkeypatch.setattr(gc.registry, "list_jobs", lambda *a, **k: stale)
    plan = collect(ws, NEVER)  # ... and gc sees its folders, which no job it listed owns
    monkeypatch.undo()
    planned = {item.path for item in plan.items if item.action == ORPHAN}
    assert {ws.job_dir(job.id), Path(store.path), leftover} <= planned  # the condition of the report
    plan.apply()
    assert not leftover.exists()  # a real orphan goes
    assert ws.job_dir(job.id).exists() and Path(store.path).exists()
    assert sk.job(job.id).result()["input_ids"].shape[0] == store["input_ids"].shape[0]


# -- item 9: labels written once, and where the workspace is ---------------------------------------------------

@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_model_dir, docs_file, tiny_chat):
    ws = sk.Workspace(tmp_path_factory.mktemp("labels") / "ws")
    feats, token = planted_analysis(ws, tiny_model_dir, docs_file)
    return {"ws": ws, "feats": feats, "token": token, "chat": tiny_chat}


def _llm_rows(ws, feats):
    return [r for r in label_rows(ws, feats.id) if r["source"] == "llm"]


def test_explain_killed_between_the_journal_and_the_registry_labels_once(analysed, monkeypatch):
    ws, feats, chat = analysed["ws"], analysed["feats"], analysed["chat"]
    sk.set_workspace(ws)
    monkeypatch.setenv("SAEKIT_HOME", str(ws.path))
    before = len(read_journal(feats.journal_folder))
    monkeypatch.setenv("SAEKIT_FAULT", "labels_journalled")
    job = sk.explain(feats, [1, 2], explainer=chat, n_examples=2, progress=False)
    job.wait(timeout=300)
    assert job.info()["error_type"] == "worker_lost"  # killed with the labels in the journal only
    monkeypatch.delenv("SAEKIT_FAULT")
    job.resume(background=False, progress=False)
    assert job.status == "completed"
    mine = [r for r in read_journal(feats.journal_folder)[before:] if job.id in (r["provenance"] or "")]
    assert sorted(r["feature"] for r in mine) == [1, 2]  # each once in the journal ...
    assert sorted(r["feature"] for r in _llm_rows(ws, feats) if job.id in r["provenance"]) == [1, 2]  # ... and here
    registry.rebuild_registry(ws)
    assert sorted(r["feature"] for r in _llm_rows(ws, feats) if job.id in r["provenance"]) == [1, 2]  # and rebuilt
    provenance = json.loads(mine[0]["provenance"])
    assert provenance["explainer"].startswith("local:") and provenance["explainer_model"] == chat.name  # item 15
    sk.set_workspace(None)


def test_a_copied_workspace_labels_into_its_own_journal(analysed, tmp_path):
    ws, feats = analysed["ws"], analysed["feats"]
    copy = sk.Workspace(tmp_path / "copy")
    shutil.copytree(ws.path, copy.path)
    journal = ws.path / "analyses" / feats.id / "labels.jsonl"
    before = journal.read_bytes() if journal.exists() else b""
    copied = sk.job(feats.id, workspace=copy).result()
    copied.label(PLANTED, "labelled in the copy")
    assert (journal.read_bytes() if journal.exists() else b"") == before
    assert read_journal(copy.path / "analyses" / feats.id)[-1]["label"] == "labelled in the copy"
    assert str(copied.folder).startswith(str(copy.path))


def test_labels_whose_provenance_is_not_json_are_refused_and_never_break_explain(analysed, tmp_path):
    ws, feats, chat = analysed["ws"], analysed["feats"], analysed["chat"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"labels": [{"feature": 3, "label": "x", "source": "llm", "author": "a",
                                            "provenance": "{not json", "created_at": "2026-01-01T00:00:00"}]}))
    with pytest.raises(DataError, match="provenance .* is not a JSON object"):
        feats.import_labels(path)
    add_labels(ws, [{"analysis": feats.id, "feature": 3, "label": "old", "source": "llm", "author": "a",
                                     "note": None, "provenance": "{not json", "scores": None,
                                     "created_at": registry.utcnow()}])  # as an older saekit let in
    job = sk.explain(feats, [4], explainer=chat, n_examples=2, background=False, progress=False)
    assert job.status == "completed" and feats[4].label_source == "llm"


# -- item 10: another layer's activations ------------------------------------------------------------------------

def test_analyze_refuses_activations_of_another_hook_point(analysed, tiny_lm):
    ws, token = analysed["ws"], analysed["token"]
    sae = planted_sae(tiny_lm, token)
    sae.metadata["hook_point"] = "blocks.1.resid_pre"  # trained elsewhere; the store holds blocks.0.resid_pre
    store = sk.activation_stores(workspace=ws)[0]
    with pytest.raises(ConfigError, match="trained on blocks.1.resid_pre, but the activations given are of "
                                          "blocks.0.resid_pre"):
        sk.analyze(sae, store, workspace=ws)
    with pytest.raises(ConfigError, match="'blocks.1.resid_post' is not in activation store .*extract"):
        sk.analyze(sae, store, hook_point="blocks.1.resid_post", workspace=ws)
    toks = sk.token_stores(workspace=ws)[0]
    with pytest.raises(ConfigError, match="trained on blocks.1.resid_pre"):
        sk.analyze(sae, (tiny_lm, toks), hook_point=HOOK, workspace=ws)
    job = sk.analyze(sae, store, allow_other_hook=True, background=False, progress=False, workspace=ws)
    assert job.status == "completed"
    assert any("allow_other_hook=True" in e["message"] for e in job.events() if e.get("level") == "warning")


# -- item 11: damaged tables -----------------------------------------------------------------------------------------

def _everything(feats):
    return [(f.id, f.count, f.max, [e.value for e in f.examples], [e.token_ids for e in f.examples], f.top_tokens,
             [(q.low, q.high) for q in f.quantiles], f.label) for f in feats]


def test_a_flipped_byte_in_an_analysis_table_is_named_never_silent(analysed, tmp_path):
    ws, feats = analysed["ws"], analysed["feats"]
    truth = _everything(feats)
    rng = np.random.default_rng(0)
    seen = {"named": 0, "same": 0}
    for name in ("latents.parquet", "examples.parquet", "vocab.parquet"):
        size = (feats.folder / name).stat().st_size
        for position in sorted(rng.choice(size, 6, replace=False)):
            damaged = tmp_path / f"{name}-{position}"
            shutil.copytree(feats.folder, damaged)
            data = bytearray((damaged / name).read_bytes())
            data[position] ^= 0x5A
            (damaged / name).write_bytes(bytes(data))
            try:
                got = _everything(sk.FeatureSet(damaged, workspace=ws))
            except DataError as exc:
                assert name in str(exc) and "force=True" in str(exc)
                seen["named"] += 1
            else:
                assert got == truth, f"a flip at byte {position} of {name} changed the features silently"
                seen["same"] += 1
    assert seen["named"] >= 12, seen  # the checksums catch what the format does not


# -- item 12: which label shows, and what an import may bring ---------------------------------------------------------

def test_the_label_shown_is_the_last_to_arrive_and_imports_are_checked(analysed, tmp_path):
    feats = analysed["feats"]

    def export_of(*rows):
        path = tmp_path / f"labels-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"labels": [{"feature": 6, "label": "L", "source": "user", "author": "a",
                                                "created_at": "2026-01-01T00:00:00", **r} for r in rows]}))
        return path

    assert feats.import_labels(export_of({"label": "from the future", "created_at": "2099-01-01T00:00:00"})) == 1
    feats.label(6, "written later")
    assert feats[6].label == "written later"
    for bad, match in (({"feature": 4.9}, "not a latent id"), ({"feature": True}, "not a latent id"),
                       ({"label": "x" * 5_000_000}, "not one line of at most 500"),
                       ({"label": "two\nlines"}, "not one line"), ({"label": "carriage\rreturn"}, "not one line"),
                       ({"feature": -1}, "not a latent of this analysis")):
        with pytest.raises(DataError, match=match):
            feats.import_labels(export_of(bad))
    for bad in ("carriage\rreturn", "tab\there", "x" * 501):
        with pytest.raises(ConfigError, match="not one line"):
            feats.label(6, bad)
    assert feats[6].label == "written later"


def test_labels_of_another_sae_are_refused_unless_forced(analysed, tiny_lm, tmp_path):
    ws, feats, token = analysed["ws"], analysed["feats"], analysed["token"]
    feats.label(7, "a label of this SAE")
    path = feats.export_labels(tmp_path / "labels.json")
    other_sae = planted_sae(tiny_lm, token)
    with __import__("torch").no_grad():
        other_sae.W_enc.mul_(-1)
    other = sk.analyze(other_sae, sk.activation_stores(workspace=ws)[0], background=False, progress=False,
                       workspace=ws).result()
    with pytest.raises(DataError, match="holds the labels of another SAE"):
        other.import_labels(path)
    assert other.import_labels(path, force=True) >= 1
    same = sk.analyze(feats.sae(), sk.activation_stores(workspace=ws)[0], background=False, progress=False,
                      workspace=ws, force=True).result()
    assert same.import_labels(path) >= 1 and same[7].label == "a label of this SAE"


# -- item 16: a corpus rewritten with the same text -----------------------------------------------------------------

def test_rewriting_a_corpus_file_with_the_same_text_redoes_nothing(ws, tiny_lm, docs, tmp_path):
    path = tmp_path / "corpus.jsonl"
    text = "".join(json.dumps({"text": d}) + "\n" for d in docs[:30])
    path.write_text(text)
    first = sk.tokenize(sk.load_corpus(str(path)), tiny_lm, context_length=32, background=False, progress=False)
    os.utime(path, (1, 1))
    path.unlink()
    path.write_text(text)  # a notebook re-run writes its corpus file again
    again = sk.tokenize(sk.load_corpus(str(path)), tiny_lm, context_length=32, background=False, progress=False)
    assert again.id == first.id and len(sk.jobs()) == 1
    path.write_text(text.replace("the", "a"))
    changed = sk.tokenize(sk.load_corpus(str(path)), tiny_lm, context_length=32, background=False, progress=False)
    assert changed.id != first.id


def test_an_empty_answer_writes_no_label_over_the_automatic_one(analysed):
    from json_server import MODELS, json_server

    feats = analysed["feats"]
    empty = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}]}
    with json_server({"/v1/models": MODELS, "/v1/chat/completions": (200, empty)}) as url:
        table = sk.explain(feats, [8], explainer=sk.OpenAIChat("m", url, max_retries=0), background=False,
                           progress=False).result()
    assert table.loc[8, "explanation"] is None
    assert feats[8].label_source == "auto" and feats[8].label == feats[8].auto_label
