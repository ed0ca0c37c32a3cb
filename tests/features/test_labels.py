"""Feature labels: automatic ones for every latent without a model, user labels beside them (shown first) with
their whole history, LLM labels in between, search over labels, CSV and JSON round trips that are exact, imports
that write all or nothing, and labels that survive a registry rebuilt from the workspace's logs."""

import getpass
import json

import pytest

import saekit as sk
from saekit.errors import ConfigError, DataError

from planted import PLANTED, planted_analysis


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir, docs_file):
    ws = sk.Workspace(tmp_path_factory.mktemp("labels") / "ws")
    feats, token = planted_analysis(ws, tiny_model_dir, docs_file)
    other = sk.analyze(feats.sae(), sk.activation_stores(workspace=ws)[0], n_tokens=500, background=False,
                       progress=False, workspace=ws).result()  # a second analysis of the same SAE
    return {"ws": ws, "feats": feats, "other": other, "token": feats._shared.vocab[token]}


def test_every_feature_has_an_automatic_label_from_its_tokens_and_logit_lens(planted):
    feats = planted["feats"]
    f = feats[PLANTED]
    assert f.label_source == "auto" and f.label == f.auto_label
    assert f.auto_label.startswith(planted["token"].strip())  # its top token
    assert "→" in f.auto_label  # and what its decoder promotes
    table = feats.labels()
    assert len(table) == len(feats) and set(table["source"]) == {"auto"}
    assert table["auto"].str.len().gt(0).sum() == int((feats.column("count") > 0).sum())


def test_a_user_label_shows_first_and_every_change_is_kept(planted):
    feats = planted["feats"]
    feats.label(PLANTED, "the planted token", note="first try")
    feats.label(PLANTED, "planted token")
    feats.set_labels({PLANTED: "an LLM's idea", 3: "an LLM label"}, source="llm",
                     provenance={"explainer": "x"}, scores={"detection_auc": 0.9})
    f = feats[PLANTED]
    assert (f.label, f.label_source) == ("planted token", "user") and f.auto_label
    assert (feats[3].label, feats[3].label_source) == ("an LLM label", "llm")
    history = f.label_history()
    assert list(history["label"]) == ["the planted token", "planted token", "an LLM's idea"]
    assert list(history["source"]) == ["user", "user", "llm"] and set(history["author"]) == {getpass.getuser()}
    assert history["created_at"].is_monotonic_increasing and history["note"][0] == "first try"
    assert json.loads(history["scores"][2]) == {"detection_auc": 0.9}
    row = feats.labels().loc[PLANTED]
    assert (row["user"], row["llm"], row["source"]) == ("planted token", "an LLM's idea", "user")
    assert feats.to_pandas().loc[PLANTED, "label"] == "planted token"
    feats.clear_label(PLANTED)
    assert (feats[PLANTED].label, feats[PLANTED].label_source) == ("an LLM's idea", "llm")
    feats.clear_label(PLANTED, source="llm")
    assert feats[PLANTED].label_source == "auto"
    assert len(feats.label_history(PLANTED)) == 5  # clearing is a change too
    feats.label(PLANTED, "planted token")


def test_search_finds_labels(planted):
    feats = planted["feats"]
    feats.label(7, "Zebra crossings")
    found = feats.search("zebra")
    assert found.ids.tolist() == [7]
    assert feats.search("planted").ids[0] == PLANTED


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_export_and_import_round_trip_exactly(planted, tmp_path, suffix):
    feats, other = planted["feats"], planted["other"]
    first = feats.export_labels(tmp_path / f"labels{suffix}")
    other.import_labels(first)
    assert other.import_labels(first) == 0  # already there: nothing twice
    columns = ["feature", "label", "source", "author", "note", "provenance", "scores", "created_at"]
    assert other.label_history()[columns].equals(feats.label_history()[columns])
    again = other.export_labels(tmp_path / f"again{suffix}")
    if suffix == ".json":
        assert json.loads(first.read_text())["labels"] == json.loads(again.read_text())["labels"]
    else:
        assert first.read_text() == again.read_text()
    given = lambda t: t[t["source"] != "auto"].drop(columns="auto")  # noqa: E731
    assert given(other.labels()).equals(given(feats.labels()))


def test_a_bad_label_or_import_file_writes_nothing(planted, tmp_path):
    feats = planted["feats"]
    before = len(feats.label_history())
    with pytest.raises(ConfigError, match="not a latent"):
        feats.label(feats.n_latents, "x")
    with pytest.raises(ConfigError, match="not a latent"):
        feats.set_labels({1: "fine", 10 ** 6: "out of range"})  # all or nothing
    with pytest.raises(ConfigError, match="not a latent"):
        feats.label(True, "a bool is not an index")
    with pytest.raises(ConfigError, match="some text"):
        feats.label(1, "  ")
    good = json.loads(feats.export_labels(tmp_path / "l.json").read_text())
    good["labels"].append({**good["labels"][0], "feature": 10 ** 6, "created_at": "2026-01-01T00:00:00"})
    (tmp_path / "bad.json").write_text(json.dumps(good))
    with pytest.raises(DataError, match=r"label 9: feature 1000000 is not a latent of this analysis \(0..31\); nothing was imported"):
        feats.import_labels(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('{"labels": [')
    with pytest.raises(DataError, match="not a labels export"):
        feats.import_labels(tmp_path / "cut.json")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a labels export"):
        feats.import_labels(tmp_path / "x.csv")
    assert len(feats.label_history()) == before


def test_labels_survive_a_registry_rebuilt_from_the_logs(planted):
    ws, feats = planted["ws"], planted["feats"]
    expected = feats.label_history()
    for path in ws.path.glob("registry.duckdb*"):
        path.unlink()
    with pytest.warns(sk.registry.RegistryRebuiltWarning, match="label change"):
        again = sk.job(feats.id, workspace=ws).result()
    assert again.label_history().drop(columns="created_at").equals(expected.drop(columns="created_at"))
    assert list(again.label_history()["created_at"]) == list(expected["created_at"])
    other = planted["other"]  # the analysis the labels were imported into keeps its copies too
    assert len(sk.job(other.id, workspace=ws).result().label_history()) == len(other.label_history()) > 0
