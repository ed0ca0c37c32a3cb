"""Every job kind that runs on a GPU, on real CUDA, against the same work on the CPU (skipped without a GPU;
`python benchmarks/gpu.py` measures the same paths' speed). Run on a GPU machine with `pytest -m gpu`."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit as sk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
from planted import HOOK, PLANTED, common_token, planted_analysis, planted_sae, tokens  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_lm(tiny_model_dir):
    return sk.load_model(tiny_model_dir, device="cuda", dtype="float32")


def test_extraction_on_cuda_stores_the_rows_of_the_cpu(ws, tiny_lm, cuda_lm, docs_file):
    toks = tokens(tiny_lm, docs_file, n=60)
    hook = "blocks.1.resid_post"
    cpu = sk.extract(tiny_lm, toks, [hook], dtype="float32", background=False, progress=False).result()
    gpu = sk.extract(cuda_lm, toks, [hook], dtype="float32", background=False, progress=False, force=True).result()
    assert gpu.n_tokens == cpu.n_tokens
    a, b = cpu.read(hook, 0, cpu.n_tokens).float(), gpu.read(hook, 0, gpu.n_tokens).float()
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    assert gpu.stats(hook)["nonfinite"] == 0


def test_training_from_the_model_on_cuda(ws, tiny_lm, cuda_lm, docs_file):
    toks = tokens(tiny_lm, docs_file, n=60)
    tc = sk.TrainConfig(total_tokens=6_000, batch_size=500, lr=3e-3, log_every=4, checkpoint_every=6,
                        eval_tokens=1_000, device="cuda")
    job = sk.train((cuda_lm, toks), "blocks.1.resid_post", sk.SAEConfig(arch="topk", d_sae=64, k=4), tc,
                   background=False, progress=False)
    sae = job.result()
    fvu = job.metrics()["fvu"].dropna()
    assert fvu.iloc[-1] < fvu.iloc[0] and job.info()["result"]["saes"][0]["eval"]["fvu"] < 1
    assert sae.W_enc.dtype == torch.float32


@pytest.mark.parametrize("source", ["store", "model"])
def test_analysis_on_cuda_equals_the_cpu_analysis(ws, tiny_lm, cuda_lm, docs_file, source):
    toks = tokens(tiny_lm, docs_file, n=60)
    store = sk.extract(tiny_lm, toks, [HOOK], dtype="float32", background=False, progress=False).result()
    sae = planted_sae(tiny_lm, common_token(toks, tiny_lm))
    cpu = sk.analyze(sae, store, hook_point=HOOK, device="cpu", background=False, progress=False).result()
    gpu_source = store if source == "store" else (cuda_lm, toks)
    gpu = sk.analyze(sae.to("cuda"), gpu_source, hook_point=HOOK, device="cuda", background=False, progress=False,
                     force=True).result()
    a, b = cpu.to_pandas(), gpu.to_pandas()
    assert (a["count"].to_numpy() == b["count"].to_numpy()).all()
    np.testing.assert_allclose(a["max"].to_numpy(), b["max"].to_numpy(), rtol=1e-4, atol=1e-5)
    assert [e.row for e in cpu[PLANTED].examples] == [e.row for e in gpu[PLANTED].examples]


def test_evaluation_on_cuda_equals_the_cpu_evaluation(ws, tiny_lm, docs_file):
    toks = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=300, background=False,
                       progress=False).result()
    hook = tiny_lm.hook_points()[-1]
    store = sk.extract(tiny_lm, toks, [hook], background=False, progress=False).result()
    run = sk.train(store, hook, sk.SAEConfig(arch="topk", d_sae=128, k=8), sk.TrainConfig(total_tokens=30_000,
                   batch_size=1024, device="cpu"), background=False, progress=False)
    kw = dict(metrics=["core", "sparse_probing", "absorption"], absorption_words=300, seeds=1, background=False,
              progress=False)
    cpu = copy.deepcopy(sk.evaluate(run, device="cpu", **kw).result().metrics)
    job = sk.evaluate(run, device="cuda", force=True, **kw)
    gpu = job.result().metrics
    assert job.info()["spec"]["device"] == "cuda"
    for name in ("fvu", "l0", "cossim", "ce_sae", "kl"):
        assert gpu["core"][name] == pytest.approx(cpu["core"][name], rel=1e-3, abs=1e-5), name
    for name in ("llm_test_accuracy", "sae_top_1_test_accuracy", "sae_top_5_test_accuracy"):
        assert gpu["sparse_probing"][name] == pytest.approx(cpu["sparse_probing"][name], abs=0.05), name
    assert gpu["absorption"]["letters_scored"] == cpu["absorption"]["letters_scored"]


def test_explanation_on_cuda_scores_as_on_the_cpu(tmp_path, tiny_model_dir, docs_file, tiny_chat):
    """The chat model and the SAE on the GPU: a generated explanation is scored and labelled; given explanations
    score as on the CPU. Each device in its own workspace, so neither reads the other's cached LLM calls."""
    given = {PLANTED: "the most common word", 1: "punctuation", 2: "the start of a line"}
    tables = {}
    for name, device in (("cpu", "cpu"), ("gpu", "cuda")):
        feats, _ = planted_analysis(sk.Workspace(tmp_path / name), tiny_model_dir, docs_file)
        tables[name] = sk.explain(feats, list(given), explanations=given, scorer=tiny_chat, n_score=4, device=device,
                                  background=False, progress=False).result()
    job = sk.explain(feats, [PLANTED], explainer=tiny_chat, scorer=tiny_chat, n_examples=4, n_score=4, device="cuda",
                     background=False, progress=False)
    assert job.info()["result"]["calls"] > 0 and job.info()["result"]["cache_hits"] == 0
    assert feats[PLANTED].label == job.result().loc[PLANTED, "explanation"]
    cpu, gpu = tables["cpu"], tables["gpu"]
    assert list(cpu.index) == list(gpu.index) and (cpu["explanation"] == gpu["explanation"]).all()
    for column in ("n_activating", "n_non_activating"):
        assert (cpu[column] == gpu[column]).all(), column
    for column in ("detection_auc", "fuzzing_auc"):
        np.testing.assert_allclose(gpu[column].to_numpy(float), cpu[column].to_numpy(float), atol=0.1, err_msg=column)


def test_steering_on_cuda_changes_generation_and_leaves_it_after(cuda_lm):
    sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=cuda_lm.d_model, d_sae=64, k=4)).to("cuda")
    sae.metadata["hook_point"] = "blocks.1.resid_post"
    plain = cuda_lm.generate("The weather", max_new_tokens=8, seed=0, stop_at_eos=False)
    with sk.steer(cuda_lm, sae, {3: 50.0}, mode="add"):
        steered = cuda_lm.generate("The weather", max_new_tokens=8, seed=0, stop_at_eos=False)
    assert steered != plain
    assert cuda_lm.generate("The weather", max_new_tokens=8, seed=0, stop_at_eos=False) == plain


def test_auto_encoder_dtype_selects_in_bf16_only_for_large_saes_on_the_gpu():
    small = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=512, d_sae=8192, k=32), device="cuda")
    large = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=2304, d_sae=8192, k=32), device="cuda")
    assert small.encoder_dtype() == torch.float32 and large.encoder_dtype() == torch.bfloat16
    assert large.to("cpu").encoder_dtype() == torch.float32
