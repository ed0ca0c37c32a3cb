"""sk.analyze end to end on a tiny model: a planted feature is found where it was planted (its token tops
its contexts, its frequency is its token's, its logit lens names it), both sources (an activation store,
a model over a token store) agree, kill -9 at any commit resumes to identical files, bad input is refused
before anything starts, and the FeatureSet reads back from any process."""

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError, DataError
from saekit.jobs.lease import lease_is_held

from planted import D_SAE, HOOK, PLANTED, common_token, planted_sae, tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory, docs_file, tiny_model_dir):
    """A workspace with a token store, an activation store of HOOK and the planted SAE (module-wide)."""
    path = tmp_path_factory.mktemp("analyze") / "ws"
    ws = sk.set_workspace(path)
    lm = sk.load_model(tiny_model_dir, device="cpu")
    toks = tokens(lm, docs_file)
    store = sk.extract(lm, toks, [HOOK], background=False, progress=False).result()
    token = common_token(toks, lm)
    sae = planted_sae(lm, token)
    yield {"ws": ws, "lm": lm, "toks": toks, "store": store, "token": token, "sae": sae}
    sk.set_workspace(None)


def files(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix == ".parquet"}


def test_a_planted_feature_is_found_where_it_was_planted(setup):
    s = setup
    feats = sk.analyze(s["sae"], s["store"], model=s["lm"], top_k=8, background=False, progress=False,
                       workspace=s["ws"]).result()
    f = feats[PLANTED]
    word = s["lm"].tokenizer.decode([s["token"]])
    kept = s["store"]["token_ids"][:]
    assert f.count == int((kept == s["token"]).sum()) > 8
    assert f.frequency == pytest.approx(f.count / len(kept))
    assert feats.n_tokens == len(kept)
    assert [e.token_ids[e.center] for e in f.examples] == [s["token"]] * 8  # every top context is the token
    assert f.top_tokens[0] == (word, 8)
    assert f.logits["top"][0][0] == word  # the unembedding direction of the token promotes the token
    # each context is the window of the document around the activating token
    e = f.examples[0]
    text = s["lm"].tokenizer.decode([t for t in e.token_ids if t >= 0])
    assert word in text and len(e.tokens) == 16 + 1 + 4
    # quantile bins: the planted latent has one value (its token's embedding), so every bin is that value
    assert all(q.low == pytest.approx(q.high) for q in f.quantiles)
    assert sum(len(q.examples) for q in f.quantiles) >= 5
    # the other latents: every statistic agrees with a dense encode of the whole store
    z = s["sae"].encode(s["store"].read(HOOK, 0, s["store"].n_tokens).float()).detach().numpy()
    np.testing.assert_array_equal(feats.column("count"), (z > 0).sum(0)[feats.ids])
    np.testing.assert_allclose(feats.column("max"), z.max(0), rtol=1e-6)
    assert len(feats.dead()) == int(((z > 0).sum(0) == 0).sum())


def test_both_sources_give_the_same_analysis(setup):
    s = setup
    from_store = sk.analyze(s["sae"], s["store"], model=s["lm"], background=False, progress=False,
                            workspace=s["ws"], force=True).result()
    from_model = sk.analyze(s["sae"], (s["lm"], s["toks"]), hook_point=HOOK, background=False, progress=False,
                            workspace=s["ws"]).result()
    a, b = from_store.to_pandas(), from_model.to_pandas()
    # the store keeps bfloat16: latents near their threshold may flip, nothing more
    np.testing.assert_allclose(a["count"], b["count"], rtol=0.01)
    np.testing.assert_allclose(a["max"], b["max"], rtol=0.02)
    assert a["count"][PLANTED] == b["count"][PLANTED]
    assert [e.row for e in from_store[PLANTED].examples] == [e.row for e in from_model[PLANTED].examples]


@pytest.mark.heavy  # 10-13 s each
@pytest.mark.parametrize("fault", ["analyze_committed_2:1", "analyze_saved_3:1", "analyze_before_tables:1"])
def test_killed_and_resumed_gives_identical_files(setup, monkeypatch, fault):
    s = setup
    kw = dict(model=s["lm"], top_k=5, batch_size=256, commit_every=1e-9, workspace=s["ws"], progress=False)
    straight = sk.analyze(s["sae"], s["store"], background=False, name="straight", **kw).result()
    monkeypatch.setenv("SAEKIT_FAULT", fault)  # the worker of attempt 1 kills itself there
    job = sk.analyze(s["sae"], s["store"], force=True, **kw)
    job.wait(timeout=300)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    monkeypatch.delenv("SAEKIT_FAULT")
    job.resume()
    resumed = job.result(timeout=300)
    if fault != "analyze_before_tables:1":
        assert any("resuming after" in e["message"] for e in job.events())
    assert files(resumed.folder) == files(straight.folder)
    # the checkpoint is cleaned up once the end is recorded, by the worker, which then lets go of its lease
    job_dir = s["ws"].job_dir(job.id)
    for _ in range(600):
        if not lease_is_held(job_dir):
            break
        time.sleep(0.1)
    assert not (job_dir / "analysis_state.safetensors").exists()


def test_bad_input_is_refused_before_anything_starts(setup, tmp_path):
    s = setup
    ws, lm, store, sae = s["ws"], s["lm"], s["store"], s["sae"]
    before = len(sk.jobs(workspace=ws))
    wide = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model + 1, d_sae=8))
    with pytest.raises(ConfigError, match=f"{lm.d_model + 1}-wide"):
        sk.analyze(wide, store, workspace=ws)
    with pytest.raises(ConfigError, match="top_k=0"):
        sk.analyze(sae, store, top_k=0, workspace=ws)
    with pytest.raises(ConfigError, match="n_tokens=0"):
        sk.analyze(sae, store, n_tokens=0, workspace=ws)
    with pytest.raises(ConfigError, match="more than the source"):
        sk.analyze(sae, store, n_tokens=store.n_tokens + 1, workspace=ws)
    with pytest.raises(ConfigError, match="top_k=.* more than the"):
        sk.analyze(sae, store, n_tokens=10, top_k=11, workspace=ws)
    with pytest.raises(ConfigError, match="context="):
        sk.analyze(sae, store, context=(3,), workspace=ws)
    bare = sk.ActivationStore.from_array(torch.randn(100, lm.d_model), "bare", workspace=ws)
    with pytest.raises(DataError, match="no token ids"):
        sk.analyze(sae, bare, workspace=ws)
    other = sk.load_model(*_other_model(tmp_path), device="cpu")
    with pytest.raises(DataError, match="was extracted from"):
        sk.analyze(sae, store, model=other, workspace=ws)
    with pytest.raises(ConfigError, match="hook point"):
        sk.analyze(sae, (lm, s["toks"]), workspace=ws)
    with pytest.raises(sk.HookPointError):
        sk.analyze(sae, (lm, s["toks"]), hook_point="blocks.99.resid_post", workspace=ws)
    with pytest.raises(ConfigError, match="not a training job"):
        sk.analyze(sk.jobs(kind="extract", workspace=ws)[0], store, workspace=ws)
    assert len(sk.jobs(workspace=ws)) == before  # nothing was submitted


def _other_model(tmp_path):
    from saekit.models.tiny import make_tiny_model

    return (make_tiny_model(tmp_path / "other", "llama", texts=["some other words entirely"] * 50),)


def test_a_failed_training_job_is_refused(ws, monkeypatch):
    from data_for_tests import quick, toy_store

    store = toy_store()
    monkeypatch.setenv("SAEKIT_FAULT", "before_end:1")  # the worker dies after training, before its end
    failed = sk.train(store, store.hook_points[0], sk.SAEConfig(arch="topk", d_sae=32, k=4), quick(), progress=False)
    failed.wait(timeout=300)
    assert failed.status == "failed"
    with pytest.raises(ConfigError, match=f"job {failed.id} is failed"):
        sk.analyze(failed, store)


def test_features_on_my_text(setup):
    """Per token the strongest latents of the analysed SAE: the planted latent is the strongest on its token
    and on no other; the table, the widget's data, its snapshot and a card opened from it agree."""
    s = setup
    feats = sk.analyze(s["sae"], s["store"], model=s["lm"], background=False, progress=False,
                       workspace=s["ws"]).result()
    word = s["lm"].tokenizer.decode([s["token"]])
    text = f"first{word} then more{word} and the end"
    found = feats.on_text(s["lm"], text, n=3)
    ids = s["lm"].tokenizer(text)["input_ids"]
    assert found.token_ids == ids and len(found.top) == len(ids) and "".join(found.tokens) == s["lm"].tokenizer.decode(ids)
    z = s["sae"].encode(s["lm"].run_with_cache(torch.tensor([ids]), HOOK)[HOOK][0].float()).detach()
    special = set(s["lm"].tokenizer.all_special_ids)
    for position, pairs in enumerate(found.top):
        expected = [(int(i), float(v)) for v, i in zip(*z[position].topk(3)) if v > 0]
        if ids[position] in special:  # BOS: left out, as the analysis leaves it out
            assert pairs == []
            continue
        assert [i for i, _ in pairs] == [i for i, _ in expected]
        planted_here = ids[position] == s["token"]
        assert (pairs[0][0] == PLANTED) == planted_here if pairs else not planted_here
    frame = found.to_pandas()
    assert list(frame.columns) == ["position", "token", "rank", "latent", "activation", "label"]
    assert len(frame) == sum(len(p) for p in found.top) and PLANTED in set(frame["latent"])
    view = found.view()
    strongest = max(range(len(ids)), key=lambda p: found.top[p][0][1] if found.top[p] else 0.0)
    assert view.selected == strongest  # at first, the token with the strongest activation
    at = ids.index(s["token"])
    assert str(PLANTED) in view.features and view.tokens[at]["top"][0][0] == PLANTED
    view.show_latent(PLANTED)
    assert view.card["id"] == PLANTED
    bundle = view._repr_mimebundle_()
    snapshot = bundle[0]["text/html"] if isinstance(bundle, tuple) else bundle["text/html"]
    assert f"#{PLANTED}" in snapshot and f"Feature {PLANTED}" in snapshot
    with pytest.raises(ConfigError, match="text="):
        feats.on_text(s["lm"], "  ")


def test_featureset_views_and_reading_back_from_another_process(setup):
    s = setup
    feats = sk.analyze(s["sae"], s["store"], model=s["lm"], background=False, progress=False,
                       workspace=s["ws"]).result()
    assert len(feats) == D_SAE and [f.id for f in feats][:3] == [0, 1, 2]
    top = feats.top(5, by="max")
    assert len(top) == 5 and list(top.column("max")) == sorted(feats.column("max"), reverse=True)[:5]
    assert top[0].id == int(top.ids[0])
    assert all(f.frequency > 0.3 for f in feats.dense(0.3))
    word = s["lm"].tokenizer.decode([s["token"]]).strip().lower()
    found = feats.search(word)
    # latents whose first top token is the word (case and a leading space aside) first, however rare; then
    # those with it as a whole token; then those with tokens that contain it
    first = [f.top_tokens[0][0].strip().lower() == word if f.top_tokens else False for f in found]
    whole = [word in [t.strip().lower() for t, _ in f.top_tokens] for f in found]
    assert first[0] and first == sorted(first, reverse=True) and PLANTED in found.ids[:sum(first)]
    assert whole[sum(first):] == sorted(whole[sum(first):], reverse=True)
    assert len(feats.search("zzzz-no-such-token")) == 0
    assert feats.search("7").ids[0] == 7 and feats.search(" 12 ").ids[0] == 12  # a latent by its id
    from saekit.widgets.feature_browser import FeatureBrowser

    browser = FeatureBrowser(feats)
    browser.limit = 3
    assert [r["id"] for r in browser.rows] == list(feats.sort("frequency").ids[:3]) and browser.matches == D_SAE
    browser.query = word  # a search lists by relevance, from the first rows again
    assert browser.sort == "relevance" and browser.rows[0]["id"] == found.ids[0] and browser.limit == 200
    browser.limit = 5000  # "show more"
    assert len(browser.rows) == browser.matches
    frame = feats.to_pandas()
    assert list(frame.index) == list(range(D_SAE)) and {"frequency", "max", "top_tokens"} <= set(frame.columns)
    with pytest.raises(ConfigError, match="by="):
        feats.top(3, by="loudness")
    with pytest.raises(IndexError, match="out of range"):
        feats[D_SAE]
    listing = sk.analyses(workspace=s["ws"])
    assert feats.id in [r["id"] for r in listing.rows]
    code = (f"import saekit as sk; f = sk.job({feats.id!r}, workspace={str(s['ws'].path)!r}).result(); "
            f"print(len(f), f[{PLANTED}].count)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [str(D_SAE), str(feats[PLANTED].count)], out.stderr


def test_features_of_two_saes_are_matched_by_decoder_cosine(setup):
    """Two SAEs whose decoders are the same rows in another order: every latent finds its twin (cosine 1,
    mutual), and from then on each card names its match in the other analysis."""
    s = setup
    first = sk.analyze(s["sae"], s["store"], background=False, progress=False, workspace=s["ws"]).result()
    order = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))
    other = sk.SAE.from_config(s["sae"].config)
    with torch.no_grad():
        for name, tensor in s["sae"].state_dict().items():
            getattr(other, name).copy_(tensor[order] if tensor.shape[:1] == (D_SAE,) else tensor)
    other.metadata = dict(s["sae"].metadata)
    second = sk.analyze(other, s["store"], background=False, progress=False, workspace=s["ws"]).result()
    found = first.match(second)
    frame = found.to_pandas()
    inverse = torch.argsort(order)
    assert list(frame["match"]) == inverse.tolist() and bool(frame["mutual"].all())
    assert frame["cosine"].min() == pytest.approx(1.0, abs=1e-5) and found.share(0.9) == 1.0
    assert "100.0% above 0.9" in repr(found)
    card = first[PLANTED].to_dict()
    assert card["matches"] == [[second.id, int(inverse[PLANTED]), pytest.approx(1.0, abs=1e-5)]]
    assert second[int(inverse[PLANTED])].matches[0][:2] == (first.id, PLANTED)
    bundle = first[PLANTED].card()._repr_mimebundle_()
    assert f"match in {second.id}" in (bundle[0] if isinstance(bundle, tuple) else bundle)["text/html"]
    with pytest.raises(ConfigError, match="itself"):
        first.match(first)


def test_exports(setup, tmp_path):
    s = setup
    feats = sk.analyze(s["sae"], s["store"], model=s["lm"], background=False, progress=False,
                       workspace=s["ws"]).result()
    page = feats.export_html(tmp_path / "features.html", [PLANTED, 0]).read_text()
    assert not any(part in page for part in ("<script", "src=", "<link", "href='http"))  # self-contained
    assert f"Feature {PLANTED}" in page and "Feature 0" in page
    batch = json.loads(feats.to_neuronpedia(tmp_path / "np.json", [PLANTED], model_id="tiny", sae_id="0-test").read_text())
    f = batch["features"][0]
    assert batch["layer"] == 0 and f["feature_index"] == PLANTED
    assert f["frac_nonzero"] == pytest.approx(feats[PLANTED].frequency)
    assert f["pos_str"][0] == s["lm"].tokenizer.decode([s["token"]])
    top = [a for a in f["activations"] if a["bin_min"] == -1]
    assert len(top) == len(feats[PLANTED].examples) and all(len(a["tokens"]) == len(a["values"]) for a in top)
