"""Transcoders and skip-transcoders: any architecture encodes one hook point and predicts another.

On synthetic pairs with a known sparse map and a linear part, a skip-transcoder learns both (and beats a plain
transcoder trained on the same batches); the saved model takes raw activations (the input and target scales are
folded in); settings that do not fit are refused before a job starts; a killed run resumes to the same weights as
one that ran through; on a real (tiny) model, a transcoder from ``blocks.1.mlp_in`` to ``blocks.1.mlp_out`` trains
from a store and from the model, reports CE with its prediction spliced in, is analysed at its input, and is
steered at its output."""

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import saekit as sk
from data_for_tests import commits, quick, wait_for
from saekit.errors import ConfigError

IN, OUT = "blocks.1.mlp_in", "blocks.1.mlp_out"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))


def pairs(n: int, d_in: int = 16, d_out: int = 16, atoms: int = 64, active: int = 3, linear: float = 0.5, seed: int = 0):
    """Inputs made of ``active`` of ``atoms`` random unit directions; targets made of each atom's own output direction
    with the same coefficient, plus ``linear`` times a fixed linear map of the input."""
    g = torch.Generator().manual_seed(seed)
    a_in = torch.nn.functional.normalize(torch.randn(atoms, d_in, generator=g), dim=1)
    a_out = torch.nn.functional.normalize(torch.randn(atoms, d_out, generator=g), dim=1)
    chosen = torch.rand(n, atoms, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n, atoms).scatter_(1, chosen, torch.rand(n, active, generator=g) * 2 + 0.5)
    x = codes @ a_in
    lin = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    return x * 3.0, codes @ a_out + linear * x @ lin.T  # the input's scale differs from the target's


def test_a_skip_transcoder_learns_the_map_and_its_linear_part(ws):
    x, y = pairs(40_000)
    store = sk.ActivationStore.from_array({"x": x, "y": y})
    configs = [sk.SAEConfig(arch="topk", d_sae=128, k=3, transcoder=True),
               sk.SAEConfig(arch="topk", d_sae=128, k=3, transcoder=True, skip_connection=True)]
    job = sk.train(store, "x", configs, quick(total_tokens=300_000, batch_size=1000), target_hook="y", progress=False,
                   background=False)
    plain, skip = job.result()
    evals = [s["eval"] for s in job.info()["result"]["saes"]]
    assert skip.d_out == 16 and skip.W_skip.shape == (16, 16) and skip.metadata["target_hook"] == "y"
    # the best linear map alone (least squares on the training rows) leaves 0.61 of the held-out variance
    held_x, held_y = x[-2000:], y[-2000:]
    ones = torch.ones(len(x), 1)
    fit = torch.linalg.lstsq(torch.cat([x, ones], 1)[:-2000], y[:-2000]).solution
    linear = float((torch.cat([held_x, ones[:2000]], 1) @ fit - held_y).pow(2).sum() / (held_y - held_y.mean(0)).pow(2).sum())
    assert evals[1]["fvu"] < 0.6 * linear and evals[1]["fvu"] < 0.85 * evals[0]["fvu"], (linear, evals)
    assert evals[1]["l0"] == pytest.approx(3, abs=0.1)
    # the saved skip-transcoder takes raw inputs and predicts raw targets: its held-out FVU is the job's
    with torch.no_grad():
        err = (skip(held_x) - held_y).pow(2).sum()
    fvu = float(err / (held_y - held_y.mean(0)).pow(2).sum())
    assert fvu == pytest.approx(evals[1]["fvu"], rel=1e-3)
    loaded = sk.SAE.load(job.info()["result"]["saes"][1]["path"])
    torch.testing.assert_close(loaded(held_x), skip(held_x))
    assert "transcoder(s) x -> y" in job.events()[0]["message"]
    assert set(job.metrics().columns) >= {"sae0/fvu", "sae1/fvu", "sae1/eval_fvu"}


def test_transcoder_settings_are_checked_before_a_job_starts(ws):
    x, y = pairs(4_000)
    store = sk.ActivationStore.from_array({"x": x, "y": y})
    with pytest.raises(ConfigError, match="skip_connection=True is a setting of transcoders"):
        sk.SAEConfig(arch="topk", k=3, skip_connection=True)
    with pytest.raises(ConfigError, match="no target_hook was given"):
        sk.train(store, "x", sk.SAEConfig(arch="topk", k=3, transcoder=True), quick(), progress=False)
    with pytest.raises(ConfigError, match="target_hook='z' is not in activation store") as info:
        sk.train(store, "x", sk.SAEConfig(arch="topk", k=3), quick(), target_hook="z", progress=False)
    assert "sk.extract(lm, tokens, ['x', 'z'])" in info.value.suggestion
    with pytest.raises(ConfigError, match="another hook point"):
        sk.train(store, "x", sk.SAEConfig(arch="topk", k=3), quick(), target_hook="x", progress=False)
    with pytest.raises(ConfigError, match="d_out=7 does not match the target's width 16"):
        sk.train(store, "x", sk.SAEConfig(arch="topk", k=3, transcoder=True, d_out=7), quick(), target_hook="y",
                 progress=False)
    with pytest.raises(ConfigError, match="same rows, width and dtype"):
        sk.ActivationStore.from_array({"x": x, "y": y[:100]})  # a store's hook points are as wide, as long
    assert sk.jobs().empty


@pytest.mark.heavy
def test_a_killed_skip_transcoder_resumes_to_the_same_weights(ws):
    x, y = pairs(40_000, seed=3)
    store = sk.ActivationStore.from_array({"x": x, "y": y}, chunk_bytes=2**16)
    args = (store, "x", sk.SAEConfig(arch="batchtopk", d_sae=128, k=3, transcoder=True, skip_connection=True))
    tc = quick(total_tokens=300_000, checkpoint_every=50, log_every=25, dead_after_tokens=20_000)
    job = sk.train(*args, tc, target_hook="y", progress=False)
    wait_for(lambda: commits(ws, job) >= 2, "two checkpoints")
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    wait_for(lambda: job.status == "failed", "the kill to be noticed")
    job.resume(progress=False)
    resumed = job.result(timeout=300)
    expected = sk.train(*args, tc, target_hook="y", background=False, force=True, progress=False).result()
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_saelens_layout_round_trip_keeps_the_prediction(tmp_path):
    torch.manual_seed(0)
    for arch, settings in (("relu", {}), ("jumprelu", {}), ("batchtopk", {"k": 4})):
        sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=16, d_sae=32, transcoder=True, d_out=12,
                                              skip_connection=True, **settings))
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            if arch == "batchtopk":
                sae.threshold.fill_(0.1)
        sae.metadata.update(hook_point=IN, target_hook=OUT)
        back = sk.SAE.from_pretrained(sae.to_saelens(tmp_path / arch))
        x = torch.randn(20, 16)
        torch.testing.assert_close(back(x), sae(x), rtol=1e-5, atol=1e-5)
        assert back.is_transcoder and (back.metadata["hook_point"], back.metadata["target_hook"]) == (IN, OUT)
    topk = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=16, d_sae=32, k=4, transcoder=True))
    with pytest.raises(sk.DataError, match="SAELens has no 'topk_transcoder'") as info:
        topk.to_saelens(tmp_path / "topk")
    assert "to_sparsify" in info.value.suggestion
    back = sk.SAE.from_pretrained(topk.to_sparsify(tmp_path / "sparsify"))
    x = torch.randn(20, 16)
    torch.testing.assert_close(back(x), topk(x))


def test_an_mlp_transcoder_of_a_model_trains_analyses_and_steers(ws, tiny_model_dir, docs_file):
    lm = sk.load_model(tiny_model_dir, device="cpu", dtype="float32")
    toks = sk.tokenize(sk.load_corpus(docs_file), lm, context_length=64, max_documents=300, background=False,
                       progress=False).result()
    store = sk.extract(lm, toks, [IN, OUT], dtype="float32", background=False, progress=False).result()
    tc = quick(total_tokens=40_000, batch_size=1000, ce_eval_tokens=1000)
    config = sk.SAEConfig(arch="topk", d_sae=128, k=8, skip_connection=True, transcoder=True)
    from_store = sk.train(store, IN, config, tc, target_hook=OUT, eval_model=lm, progress=False, background=False)
    from_model = sk.train((lm, toks), IN, config, tc, target_hook=OUT, progress=False, background=False)
    for job in (from_store, from_model):
        evaluation = job.info()["result"]["saes"][0]["eval"]
        assert evaluation["fvu"] < 1 and {"ce_sae", "ce_clean", "kl"} <= set(evaluation), evaluation
    sae = from_store.result()
    feats = sk.analyze(sae, store, progress=False, background=False).result()
    assert feats.meta["hook_point"] == IN and feats.n_latents == 128

    ids = toks.rows(0, 2).input_ids
    clean = lm.run_with_cache(ids, [IN, OUT])
    top = int(sae.encode(clean[IN][0, 3]).argmax())
    unit = sae.W_dec[top] / sae.W_dec[top].norm()
    with sk.steer(lm, sae, {top: 2.0}) as steering:
        steered = lm.run_with_cache(ids, [IN, OUT])
    assert steering.hook_point == OUT
    torch.testing.assert_close(steered[IN], clean[IN])  # the input is read, not changed
    torch.testing.assert_close(steered[OUT], clean[OUT] + 2.0 * unit, rtol=1e-5, atol=1e-5)
    with sk.steer(lm, sae, {top: 0.0}, mode="ablate"):  # its activation, computed from the input, is removed
        ablated = lm.run_with_cache(ids, [OUT])
    with torch.no_grad():
        a = sae.encode(clean[IN])[..., top]
    torch.testing.assert_close(ablated[OUT], clean[OUT] - a[..., None] * sae.W_dec[top], rtol=1e-4, atol=1e-5)


def test_a_transcoder_predicts_a_later_activation_and_needs_an_architecture_that_can(ws):
    import gated_sae  # noqa: F401  a plug-in whose training_forward takes no target

    x, y = pairs(4_000)
    store = sk.ActivationStore.from_array({"blocks.1.mlp_in": x, "blocks.1.mlp_out": y})
    with pytest.raises(ConfigError, match="is computed before 'blocks.1.mlp_out'"):
        sk.train(store, "blocks.1.mlp_out", sk.SAEConfig(arch="topk", k=3), quick(), target_hook="blocks.1.mlp_in",
                 progress=False)
    with pytest.raises(ConfigError, match=r"\['gated'\] cannot train as transcoders"):
        sk.train(store, IN, sk.SAEConfig(arch="gated"), quick(), target_hook=OUT, progress=False)
    assert sk.jobs().empty
