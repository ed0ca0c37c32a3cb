"""Bad input is a named saekit error before anything runs, never a job that fails as `unknown` or a
result that is quietly wrong."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from data_for_tests import quick, toy_store

import saekit as sk
from saekit.errors import ConfigError, DataError, HookPointError, JobNotFoundError, SaekitError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))  # planted.py


@pytest.mark.parametrize("make", [
    lambda lm, c: sk.tokenize(c, lm, context_length=True),
    lambda lm, c: sk.tokenize(c, lm, max_documents=True),
    lambda lm, c: sk.extract(lm, "x", "blocks.1.resid_post", max_tokens=True),
    lambda lm, c: sk.extract(lm, "x", "blocks.1.resid_post", batch_size=True),
    lambda lm, c: sk.TrainConfig(total_tokens=True),
    lambda lm, c: sk.TrainConfig(lr_warmup=float("nan")),
    lambda lm, c: sk.TrainConfig(lr=float("inf")),
    lambda lm, c: sk.TrainConfig(eval_tokens=1.5),
    lambda lm, c: sk.SAEConfig(arch="relu", l1_coefficient=float("nan")),
    lambda lm, c: sk.SAEConfig(arch="topk", k=True),
    lambda lm, c: sk.extract(lm, "x", "blocks.1.resid_post", compression="gzip"),
], ids=["context_length=True", "max_documents=True", "max_tokens=True", "batch_size=True", "total_tokens=True",
        "lr_warmup=nan", "lr=inf", "eval_tokens=1.5", "l1=nan", "k=True", "gzip"])
def test_bools_and_non_finite_numbers_are_refused_by_name(ws, tiny_lm, make):
    with pytest.raises(ConfigError):  # True passed integer checks; NaN passed number checks
        make(tiny_lm, None)


def test_templates_refuse_nan_and_malformed_documents(ws):
    doc = {"format": "saekit-templates/1", "templates": [
        {"name": "t", "sae_config": {"arch": "relu", "l1_coefficient": float("nan")}, "train_config": {}}]}
    with pytest.raises(ConfigError, match="l1_coefficient=nan"):
        sk.templates.import_json(json.dumps(doc))
    for bad in ('{"format": "saekit-templates/1"}', '{"format": "saekit-templates/1", "templates": [{}]}',
                '{"format": "saekit-templates/1", "templates": [{"name": "x", "sae_config": 3}]}', "[]"):
        with pytest.raises(ConfigError):
            sk.templates.import_json(bad)
    assert not len(sk.templates.list())  # nothing half-imported


def test_from_array_refuses_non_finite_rows_and_bad_names(ws):
    x = torch.randn(100, 8)
    x[17, 3] = float("nan")
    with pytest.raises(DataError, match="1 of 100 rows hold NaN or infinity.*row 17"):
        sk.ActivationStore.from_array(x, "custom")
    with pytest.raises(ConfigError, match="not a usable array name"):
        sk.ActivationStore.from_array(torch.randn(10, 4), "../x")
    assert not [p for p in (ws.path / "activations").iterdir()] if (ws.path / "activations").exists() else True


def test_stats_count_non_finite_rows_and_keep_the_rest_true():
    from saekit.activations.stats import RunningStats

    x = torch.randn(1000, 8)
    x[5] = float("inf")
    x[6, 2] = float("nan")
    stats = RunningStats(8)
    stats.update(x)
    finite = torch.cat([x[:5], x[7:]])
    assert stats.nonfinite == 2 and stats.count == 998
    assert stats.max_abs == pytest.approx(float(finite.abs().max()))  # it reported 0.0 with a NaN mean norm
    assert math.isfinite(stats.summary()["mean_norm"])


def test_a_token_store_of_another_tokenizer_or_too_long_is_refused(ws, tiny_lm, docs, tmp_path):
    from saekit.models.tiny import make_tiny_model

    other_dir = make_tiny_model(tmp_path / "other", "gpt2", texts=docs[:300], vocab_size=300, max_positions=32)
    other = sk.load_model(other_dir, device="cpu")
    corpus = sk.load_corpus(__import__("datasets").Dataset.from_dict({"text": docs[:200]}))
    tokens = sk.tokenize(corpus, tiny_lm, context_length=64, background=False, progress=False).result()
    with pytest.raises(DataError, match="made by another tokenizer"):
        sk.extract(other, tokens, "blocks.1.resid_post")
    with pytest.raises(DataError, match="made by another tokenizer"):
        sk.train((other, tokens), "blocks.1.resid_post", sk.SAEConfig(k=2), quick())
    long_for_gpt2 = sk.tokenize(corpus, other, context_length=32, background=False, progress=False).result()
    assert long_for_gpt2.context_length == 32
    with pytest.raises(ConfigError, match="longer than"):
        sk.tokenize(corpus, other, context_length=64)


def test_empty_corpora_and_non_text_columns_are_refused(ws, tiny_lm, tmp_path):
    import datasets

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        sk.load_corpus(empty)  # was "StopIteration: "
    with pytest.raises(DataError, match="text column 'text' holds int64"):
        sk.load_corpus(datasets.Dataset.from_dict({"text": [1, 2, 3]}))
    blank = sk.load_corpus(datasets.Dataset.from_dict({"text": ["", "", ""]}))
    job = sk.tokenize(blank, tiny_lm, add_special_tokens=False, background=False, progress=False)
    assert job.status == "failed" and job.info()["error_type"] == "data"
    assert "no tokens" in job.info()["error_message"]


def test_a_real_cpu_out_of_memory_is_classified_oom():
    from saekit.jobs.failures import classify

    error = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 85899345920 bytes. Error code 12 (Cannot allocate memory)")
    error_type, _, suggestion = classify(error)
    assert error_type == "oom" and "batch_size" in suggestion


def test_other_errors_are_saekit_errors(ws, tiny_lm):
    with pytest.raises(JobNotFoundError, match="empty"):
        sk.job("")  # an empty prefix matched every job
    with pytest.raises(HookPointError) as caught:
        tiny_lm.parse_hook_point("blocks.40.resid_post")
    assert str(caught.value).startswith("'blocks.40.resid_post' is not a hook point")  # no extra quotes
    with pytest.raises(ConfigError, match="nproc=0 must be a positive number"):
        sk.train(toy_store(), "toy", sk.SAEConfig(k=2), quick(), nproc=0)
    with pytest.raises(SaekitError):
        sk.SAE.from_pretrained(ws.path / "nothing-here")


def test_ce_recovered_outside_its_range_is_flagged():
    from saekit.sae.evaluation import ce_warnings

    assert ce_warnings({"ce_clean": 3.0, "ce_sae": 3.2, "ce_zero": 8.0, "ce_recovered": 0.96}) == []
    lowered = ce_warnings({"ce_clean": 3.0, "ce_sae": 2.9, "ce_zero": 2.5, "ce_recovered": 1.26})
    assert lowered and "does not raise the loss" in lowered[0]
    above = ce_warnings({"ce_clean": 3.0, "ce_sae": 2.9, "ce_zero": 8.0, "ce_recovered": 1.02})
    assert above and "outside [0, 1]" in above[0]


# -- issue 24, items 13 and 14: the rest of the adversarial battery ---------------------------------------------

def test_a_damaged_registry_is_a_corrupt_registry_error_for_reads_and_writes(ws):
    from saekit import registry
    from saekit.errors import RegistryCorruptError

    for n in range(4):
        sk.submit("count", {"n": n + 1}, background=False, progress=False)
    with registry.transaction(ws, write=True) as tx:
        tx.execute("CHECKPOINT")
    data = ws.registry_path.read_bytes()
    for cut in (4096, len(data) // 8, len(data) // 3, len(data) // 2):  # raw IOException and "Corrupt database file"
        ws.registry_path.write_bytes(data[:cut])
        for call in (sk.jobs, lambda: sk.submit("count", {"n": 99}, background=False, progress=False)):
            try:
                call()
            except RegistryCorruptError as exc:
                assert "saekit gc --rebuild" in str(exc)
            except SaekitError as exc:  # pragma: no cover - what it is must be a registry error
                raise AssertionError(f"cut at {cut}: {type(exc).__name__}: {exc}") from exc


def test_prompts_features_and_coefficients_are_checked_by_what_they_are(tiny_lm):
    import numpy as np

    from planted import planted_sae

    for prompt, match in (([], "the prompt is empty"), (None, "prompt=None"), ([10**7], "not in .* vocabulary"),
                          ([[1.5, 2.5]], "not text or token ids"), (object(), "neither text nor token ids")):
        with pytest.raises(ConfigError, match=match):
            tiny_lm.generate(prompt, max_new_tokens=2)
    with pytest.raises(ConfigError, match="more than the 256 positions"):
        tiny_lm.generate("hello", max_new_tokens=10**7)
    sae = planted_sae(tiny_lm, 5)
    sae.metadata["hook_point"] = "blocks.0.resid_pre"
    with sk.steer(tiny_lm, sae, {np.int64(3): torch.tensor(2.0)}) as steering:  # a NumPy id, a 0-d tensor
        assert steering.features == {3: 2.0}
        tiny_lm.generate("hello", max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"feature 1\.5 \(float\) is not a feature of this SAE"):
        sk.steer(tiny_lm, sae, {1.5: 2.0})
    with pytest.raises(ConfigError, match="must be one finite number"):
        sk.steer(tiny_lm, sae, {3: torch.tensor([1.0, 2.0])})


def test_an_endpoints_bad_settings_and_garbage_answers_are_named(ws):
    from saekit.errors import ModelLoadError

    for bad in ({"timeout": -1}, {"timeout": "x"}, {"max_retries": -3}, {"max_retries": 1.5}, {"api_key_env": ""}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            sk.OpenAIChat("m", "http://127.0.0.1:9/v1", **bad)

    from json_server import json_server

    routes = {"/v1/models": (200, b"<html>not json</html>"), "/v1/chat/completions": (200, {"choices": []})}
    with json_server(routes) as url:
        remote = sk.OpenAIChat("m", url, max_retries=0)
        with pytest.raises(ModelLoadError, match="model list"):
            remote.check()
        with pytest.raises(DataError, match="answered without a message"):
            remote.complete([{"role": "user", "content": "hi"}])


def test_a_feature_set_missing_a_table_or_deleted_says_so(ws, tiny_model_dir, docs_file, tmp_path):
    import shutil

    from planted import planted_analysis

    feats, _ = planted_analysis(ws, tiny_model_dir, docs_file)
    partial = tmp_path / "partial"
    shutil.copytree(feats.folder, partial)
    (partial / "latents.parquet").unlink()
    with pytest.raises(DataError, match="latents.parquet .* is damaged \\(the file is missing\\)"):
        sk.FeatureSet(partial, workspace=ws)
    (partial / "examples.parquet").unlink()
    shutil.copy(feats.folder / "latents.parquet", partial / "latents.parquet")
    with pytest.raises(DataError, match="examples.parquet"):
        sk.FeatureSet(partial, workspace=ws)[0]
    sk.job(feats.id).delete()
    with pytest.raises(DataError, match="was deleted"):
        feats.label(1, "too late")
