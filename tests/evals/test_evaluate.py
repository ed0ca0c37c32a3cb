"""sk.evaluate: core, sparse probing, absorption, ground truth and the autointerp summary as one job on the tiny model;
the results beside the training run in sk.runs(), as SAEBench JSON and as a widget; a kill -9 between families
resumes without redoing a finished one; the pieces (the probe, the balanced split, the absorption formula) on data
whose answer is known; bad requests refused before a job starts."""

import json
import os
import signal

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError
from saekit.evals import absorption, probing, steering
from saekit.evals.probe_data import code_or_prose

FAMILIES = ["core", "sparse_probing", "absorption"]
SMALL = dict(absorption_words=300, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, docs_file):
    ws = sk.Workspace(tmp_path_factory.mktemp("evaluate") / "ws")
    lm = sk.load_model(tiny_model_dir, device="cpu")
    toks = sk.tokenize(sk.load_corpus(docs_file), lm, context_length=64, max_documents=300, workspace=ws,
                       background=False, progress=False).result()
    hook = lm.hook_points()[-1]
    acts = sk.extract(lm, toks, hook_points=[hook], workspace=ws, background=False, progress=False).result()
    run = sk.train(acts, hook, sk.SAEConfig(arch="topk", d_sae=128, k=8), sk.TrainConfig(total_tokens=30_000, batch_size=1024),
                   workspace=ws, background=False, progress=False)
    return {"ws": ws, "lm": lm, "acts": acts, "run": run, "hook": hook, "toks": toks}


def test_one_job_scores_the_sae_and_its_results_join_the_run(trained):
    ws, run = trained["ws"], trained["run"]
    job = sk.evaluate(run, workspace=ws, background=False, **SMALL)
    ev = job.result()
    assert list(ev.metrics) == FAMILIES  # every family the inputs allow (no truth, no features)
    core = ev.metrics["core"]
    held = run.result().metadata["eval"]  # training's own held-out evaluation of the same rows
    assert core["fvu"] == pytest.approx(held["fvu"], rel=1e-4) and core["l0"] == pytest.approx(held["l0"])
    assert core["explained_variance"] == pytest.approx(1 - core["fvu"])
    assert 0 < core["cossim"] <= 1 and core["ce_sae"] > 0 and core["kl"] >= 0 and core["ce_tokens"] > 0
    probing_ = ev.metrics["sparse_probing"]
    for k in (1, 2, 5):
        assert 0.3 <= probing_[f"sae_top_{k}_test_accuracy"] <= 1 and probing_[f"sae_top_{k}_test_accuracy_ci"] >= 0
    assert probing_["llm_test_accuracy"] > 0.6  # the tiny model's activations tell code from prose
    assert {t.split("/")[0] for t in ev.details("sparse_probing")} == {"stdlib_topic", "code_or_prose"}
    # the tiny random model has no notion of first letters: nothing is scored, and it says so
    assert ev.metrics["absorption"]["letters_scored"] == 0
    assert "no letter's probe reached F1 0.6" in ev.result["results"]["absorption"]["warnings"][0]

    table = sk.runs("train", workspace=ws)
    row = table[table["id"] == run.id].iloc[0]
    assert row["core/fvu"] == pytest.approx(core["fvu"])
    assert row["sparse_probing/sae_top_1_test_accuracy"] == pytest.approx(probing_["sae_top_1_test_accuracy"])
    assert sk.runs("evaluate", workspace=ws)["core/l0"].iloc[0] == pytest.approx(core["l0"])
    assert sk.evaluate(run, workspace=ws, background=False, **SMALL).id == job.id  # a finished evaluation is kept


def test_saebench_json_and_the_report_widget(trained, tmp_path):
    ev = sk.evaluate(trained["run"], workspace=trained["ws"], background=False, **SMALL).result()
    files = ev.to_saebench(tmp_path)
    assert sorted(p.parent.name for p in files) == ["absorption_first_letter", "core", "sparse_probing"]
    keys = ["eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
            "eval_result_details", "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version",
            "sae_cfg_dict", "eval_result_unstructured"]
    docs = {p.parent.name: json.loads(p.read_text()) for p in files}
    assert all(list(d) == keys for d in docs.values())
    core = docs["core"]["eval_result_metrics"]
    assert core["reconstruction_quality"]["explained_variance"] == pytest.approx(ev.metrics["core"]["explained_variance"])
    assert core["model_performance_preservation"]["ce_loss_score"] == pytest.approx(ev.metrics["core"]["ce_recovered"])
    probes = docs["sparse_probing"]["eval_result_metrics"]
    assert set(probes) == {"llm", "sae"} and "sae_top_1_test_accuracy" in probes["sae"]
    assert [d["dataset_name"] for d in docs["sparse_probing"]["eval_result_details"]] == [
        "stdlib_topic_results", "code_or_prose_results"]
    assert docs["absorption_first_letter"]["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] == -1

    widget = ev.widget()
    html = widget.snapshot_html()
    assert "sparse probing: held-out accuracy" in html and "sae_top_5_test_accuracy" in html and "±" in html
    assert [f["family"] for f in widget.families] == FAMILIES
    assert widget.probing[0][0] == "k=1" and widget.probing[-1][0] == "all"
    assert "Evaluation of" in widget.summary()


def test_other_seeds_agree_within_the_reported_interval(trained):
    kw = dict(metrics=["sparse_probing"], workspace=trained["ws"], background=False, progress=False)
    a = sk.evaluate(trained["run"], seeds=[0, 1, 2], **kw).result().metrics["sparse_probing"]
    b = sk.evaluate(trained["run"], seeds=[3, 4, 5], **kw).result().metrics["sparse_probing"]
    for probe in ("sae_test_accuracy", "sae_top_5_test_accuracy", "llm_test_accuracy"):
        assert abs(a[probe] - b[probe]) <= a[f"{probe}_ci"] + b[f"{probe}_ci"], probe


def test_killed_between_families_resumes_at_the_next(trained, monkeypatch):
    monkeypatch.setenv("SAEKIT_FAULT", "evaluate:committed:1")  # the worker kills itself once core is committed
    job = sk.evaluate(trained["run"], metrics=["core", "sparse_probing"], seeds=[7], workspace=trained["ws"],
                      name="killed", progress=False)
    job.wait(timeout=300)
    assert job.status == "failed" and job.info()["error_type"] == "worker_lost"
    monkeypatch.delenv("SAEKIT_FAULT")
    job.resume()
    ev = job.result(timeout=300)
    cores = [e for e in job.events() if e.get("message", "").startswith("core: fvu=")]
    assert len(cores) == 1, "core ran again after the kill"
    assert set(ev.metrics) == {"core", "sparse_probing"}


def test_ground_truth_of_an_sae_trained_on_synthetic_rows(ws):
    truth = sk.SyntheticFeatures(d_in=32, n_features=128, mean_active=4, parents=8, children=3, correlation=0.3)
    store = truth.store(40_000)
    run = sk.train(store, "synthetic", sk.SAEConfig(arch="topk", d_sae=128, k=4), sk.TrainConfig(total_tokens=200_000),
                   background=False, progress=False)
    ev = sk.evaluate(run, truth=truth, truth_rows=8192, background=False, progress=False).result()
    assert list(ev.metrics) == ["core", "ground_truth"]
    scores = ev.metrics["ground_truth"]
    direct = [sk.recovery(run.result(), truth, 8192, seed=1000 + s) for s in (0, 1, 2)]
    assert scores["mcc"] == pytest.approx(direct[0]["mcc"], rel=1e-5) and scores["mcc_ci"] == pytest.approx(0, abs=1e-6)
    assert scores["f1"] == pytest.approx(np.mean([d["f1"] for d in direct]), rel=1e-6)
    assert scores["mcc"] > 0.5 and "absorption" in scores and scores["f1_ci"] > 0
    again = sk.evaluate(run, truth_rows=8192, seeds=[3, 4, 5], metrics=["ground_truth"],  # the store names its truth
                        background=False, progress=False).result().metrics["ground_truth"]
    for key in ("f1", "precision", "recall"):  # another sample agrees within the reported intervals
        assert abs(again[key] - scores[key]) <= again[f"{key}_ci"] + scores[f"{key}_ci"], key


def test_the_autointerp_summary_reads_scored_explanations(ws):
    from saekit.evals.autointerp import autointerp_summary
    from saekit.features import labels

    rows = [labels.make_row("analyze-x", i, f"latent {i}", "llm", scores={
        "detection_balanced_accuracy": 0.5 + i / 100, "detection_auc": 0.6, "fuzzing_auc": 0.7}) for i in range(20)]
    rows.append(labels.make_row("analyze-x", 99, "mine", "user"))
    labels.write(ws, ws.dir("labels-journal"), rows)
    out = autointerp_summary(ws, "analyze-x", n_latents=10, seed=0)
    chosen = sorted(int(i) for i in out["details"]["latents"])
    assert len(chosen) == 10 and 99 not in chosen
    assert out["metrics"]["autointerp_score"] == pytest.approx(np.mean([0.5 + i / 100 for i in chosen]))
    assert out["metrics"]["detection_auc"] == pytest.approx(0.6) and out["metrics"]["detection_auc_ci"] == pytest.approx(0)
    with pytest.raises(ConfigError, match="no latent of analysis analyze-y has scored explanations"):
        autointerp_summary(ws, "analyze-y", n_latents=10, seed=0)


def test_the_probe_and_the_split():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = x[:, 2] * 3 + 1 > 0
    probe = probing.fit_logistic(x * 10 + 4, y)  # standardised inside, returned in the rows' own space
    assert float((probe(x * 10 + 4) == y).float().mean()) > 0.97
    assert int(probe.direction.abs().argmax()) == 2
    labels = np.array(["a"] * 50 + ["b"] * 200 + ["c"] * 10)
    train, test = probing.balanced_split(labels, "a", seed=0, max_per_class=40)
    assert set(train.tolist()).isdisjoint(test.tolist())
    both = labels[np.concatenate([train.numpy(), test.numpy()])]
    assert (both == "a").sum() == 40 and (both != "a").sum() == 40 and (both == "c").sum() == 10  # even shares
    codes = torch.zeros(6, 4)
    codes[:3, 1] = 1.0
    assert probing.top_latents(codes, torch.tensor([True] * 3 + [False] * 3), 1).tolist() == [1]


def test_the_absorption_formula_on_planted_latents():
    """Probe direction e0. Latent 0 is the main latent; latent 1 (decoder along e0 + e1) absorbs the letter on row 1;
    on row 2 the main latent carries it; row 3 shares it: the absorber writes 2 of its 3 along the probe."""
    decoder = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    codes = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0, 0], [1.0, 2.0, 0]])
    x = codes @ decoder
    fraction, full = absorption.token_absorption(x, codes, torch.tensor([2.0, 0, 0]), decoder, torch.tensor([0]))
    assert fraction.tolist() == pytest.approx([1.0, 0.0, 2 / 3], rel=1e-6)
    assert full.tolist() == [True, False, False]


def test_bad_requests_are_refused_before_a_job_starts(trained, tmp_path):
    run, ws = trained["run"], trained["ws"]
    with pytest.raises(ConfigError, match="no metric family 'cka'"):
        sk.evaluate(run, metrics=["cka"], workspace=ws)
    with pytest.raises(ConfigError, match="metric 'autointerp' needs features="):
        sk.evaluate(run, metrics=["autointerp"], workspace=ws)
    with pytest.raises(ConfigError, match="metric 'ground_truth' needs truth="):
        sk.evaluate(run, metrics=["ground_truth"], workspace=ws)
    bare = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=run.result().d_in, d_sae=16, k=2))
    with pytest.raises(ConfigError, match="metric 'sparse_probing' needs a model"):
        sk.evaluate(bare, trained["acts"].__class__.from_array(torch.randn(100, bare.d_in), workspace=ws),
                    metrics=["sparse_probing"], workspace=ws)
    two = trained["acts"].__class__.from_array({"a": torch.randn(100, bare.d_in), "b": torch.randn(100, bare.d_in)},
                                               workspace=ws)
    with pytest.raises(ConfigError, match="SAE does not say which hook point.*holds.*'a', 'b'.*metadata"):
        sk.evaluate(bare, two, metrics=["core"], workspace=ws)
    with pytest.raises(ConfigError, match="seeds=0"):
        sk.evaluate(run, seeds=0, workspace=ws)
    assert len(sk.jobs(kind="evaluate", workspace=ws, status="failed")) == 0


def test_steering_against_diffmean_and_prompting(trained):
    rows = code_or_prose()
    code = [t for t, c in rows if c == "code"][:12]
    prose = [t for t, c in rows if c == "prose"][:12]
    job = sk.evaluate(trained["run"], metrics=["steering"], concept=(code, prose), steer_prompts=["The", "It is"],
                      steer_coeffs=[0, 1, 4], workspace=trained["ws"], background=False, progress=False)
    ev = job.result()
    m, details = ev.metrics["steering"], ev.details("steering")
    assert set(details["curves"]) == {"sae", "diffmean"}
    for rows_ in details["curves"].values():
        assert [r["coeff"] for r in rows_] == [0, 1, 4]
        assert rows_[0]["concept"] == pytest.approx(m["baseline_concept"])  # coefficient 0 is the unsteered model
    assert 0 <= m["sae_area"] <= 1 and 0 <= m["diffmean_area"] <= 1 and m["sae_area"] >= m["baseline_concept"] - 1e-9
    assert details["winner"] in ("sae", "diffmean") and 0 <= m["feature"] < 128
    if details["winner"] == "diffmean":  # said, not hidden
        assert "DiffMean steered better" in ev.result["results"]["steering"]["warnings"][0]
    printed = repr(ev)
    assert f"SAE feature {details['feature']}  area" in printed and "DiffMean  area" in printed and "prompting" in printed
    widget = ev.widget()
    assert set(widget.steering["series"]) == {f"SAE feature {details['feature']}", "DiffMean"}
    assert "<svg" in widget.snapshot_html() and "prompting: concept" in widget.snapshot_html()
    with pytest.raises(ConfigError, match="concept must be"):
        sk.evaluate(trained["run"], metrics=["steering"], concept=["only one list"], workspace=trained["ws"])
    with pytest.raises(ConfigError, match="metric 'steering' needs concept="):
        sk.evaluate(trained["run"], metrics=["steering"], workspace=trained["ws"])


def test_the_frontier_area():
    points = [(1.5, 0.6), (3.0, 0.9), (0.8, 0.1)]
    assert steering.frontier_area(points, (1.0, 0.2), 1.0) == pytest.approx(0.5 * 0.2 + 0.5 * 0.6)
    assert steering.frontier_area([], (1.0, 0.2), 1.0) == pytest.approx(0.2)


def test_compare_charts_an_evaluation_metric_against_a_setting(ws):
    truth = sk.SyntheticFeatures(d_in=16, n_features=48, mean_active=3, seed=1)
    sweep = sk.train(truth.store(20_000), "synthetic", [sk.SAEConfig(arch="topk", d_sae=48, k=k) for k in (2, 4)],
                     sk.TrainConfig(total_tokens=40_000, batch_size=1024), background=False, progress=False)
    for sae in sweep.result():
        sk.evaluate(sae, metrics=["ground_truth"], truth_rows=2048, seeds=1, background=False, progress=False)
    view = sk.compare([sweep], "ground_truth/l0", by="k")
    assert view.x_label == "k" and list(view.series) == ["ground_truth/l0"]
    points = view.series["ground_truth/l0"]
    assert [x for x, _ in points] == [2.0, 4.0] and points[0][1] <= 2.0 < points[1][1] <= 4.0  # L0 follows k
    assert view.columns == ["run", "status", "ground_truth/l0", "k"] and len(view.rows) == 2
    assert "ground_truth/l0 by k" in view.snapshot_html() and "ground_truth/l0=4" in view.summary()
    with pytest.raises(ConfigError, match="sk.runs\\(\\) has no column 'sparse_probing/sae_test_accuracy'"):
        sk.compare([sweep], "sparse_probing/sae_test_accuracy", by="k")
