"""Matryoshka BatchTopK: its widths, every prefix's reconstruction and gradients from the one sparse code (equal to
the dense computation), training with a metric per prefix, exact resume, and what every SAE does after."""

import os
import signal

import pytest
import torch
from data_for_tests import commits, dictionary_data, quick, wait_for

import saekit as sk
from saekit.errors import ConfigError
from saekit.sae.matryoshka import default_widths
from saekit.sae.model import TrainingState


def test_widths_default_and_refusals():
    assert default_widths(256) == (16, 32, 64, 128, 256)
    assert default_widths(8) == (1, 2, 4, 8)
    config = sk.SAEConfig(arch="matryoshka_batchtopk", d_in=8, d_sae=64, k=2, widths=[8, 32])
    assert config.widths == (8, 32) and config.params.prefixes(64) == (8, 32, 64)  # d_sae is the last prefix
    assert sk.SAEConfig.from_dict(config.to_dict()) == config  # JSON (lists) round trip
    with pytest.raises(ConfigError, match=r"widths=\[32, 8\] must be strictly increasing"):
        sk.SAEConfig(arch="matryoshka_batchtopk", k=2, widths=[32, 8])
    with pytest.raises(ConfigError, match="must be a list of positive numbers"):
        sk.SAEConfig(arch="matryoshka_batchtopk", k=2, widths=[0, 8])
    with pytest.raises(ConfigError, match=r"widths=\[8, 128\] reach past d_sae=64"):
        sk.SAEConfig(arch="matryoshka_batchtopk", d_in=8, d_sae=64, k=2, widths=[8, 128])


def _dense_reference(sae, x, widths):
    """Every prefix's FVU from dense codes (what the sparse path must equal)."""
    pre = torch.nn.functional.linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
    values, _ = pre.flatten().topk(sae.config.k * len(x))
    z = pre.relu() * (pre >= values.min())
    variance = (x - x.mean(0)).pow(2).sum()
    return [((z[:, :w] @ sae.W_dec[:w] + sae.b_dec) - x).pow(2).sum() / variance for w in widths]


def test_every_prefix_and_its_gradients_equal_the_dense_computation():
    torch.manual_seed(0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="matryoshka_batchtopk", d_in=12, d_sae=40, k=3, widths=[5, 10, 20],
                                          encoder_dtype="float32"))
    x = torch.randn(64, 12)
    out = sae.training_forward(x, TrainingState())
    with torch.no_grad():
        fvus = _dense_reference(sae, x, (5, 10, 20, 40))
    assert [float(out.extra[f"fvu_at_{w}"]) for w in (5, 10, 20)] == pytest.approx([float(f) for f in fvus[:3]],
                                                                                   rel=1e-5)
    assert float((out.x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()) == pytest.approx(float(fvus[3]), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(sum(fvus)), rel=1e-5)
    assert float(fvus[0]) > float(fvus[1]) > float(fvus[2]) > float(fvus[3])  # more latents, better
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    sum(_dense_reference(sae, x, (5, 10, 20, 40))).backward()
    for name, param in sae.named_parameters():
        torch.testing.assert_close(sparse[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_it_trains_with_a_metric_per_prefix_and_behaves_as_any_sae(ws, small_store, tmp_path):
    job = sk.train(small_store, "toy", sk.SAEConfig(arch="matryoshka_batchtopk", d_sae=64, k=3, widths=[8, 16, 32]),
                   quick(), background=False, progress=False)
    sae = job.result()
    metrics = job.metrics()
    for name in ("fvu_at_8", "fvu_at_16", "fvu_at_32", "fvu", "l0"):
        assert metrics[name].notna().sum() >= 5, name
    last = metrics.dropna(subset=["fvu_at_8"]).iloc[-1]
    assert last["fvu_at_8"] > last["fvu_at_16"] > last["fvu_at_32"] > last["fvu"]
    assert metrics["fvu_at_8"].dropna().iloc[-1] < metrics["fvu_at_8"].dropna().iloc[0]
    assert sae.arch == "matryoshka_batchtopk" and float(sae.threshold) > 0  # inference is BatchTopK's threshold
    back = sk.SAE.load(ws.path / "saes" / job.id / "final").to("cpu")  # built on meta, then moved: as on a GPU
    x = small_store.read("toy", 0, 100).float()
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    state = TrainingState()
    torch.testing.assert_close(back.training_forward(x, state).loss, sae.training_forward(x, state).loss)
    lens = sk.SAE.from_saelens(sae.to_saelens(tmp_path / "lens", hook_name="toy"))  # SAELens: the JumpReLU it is
    torch.testing.assert_close(lens.encode(x), sae.encode(x), rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_killed_and_resumed_equals_one_go(ws):
    x, _ = dictionary_data(40_000, 16, 64, 3, seed=5)
    store = sk.ActivationStore.from_array(x, "toy", chunk_bytes=2**16)
    args = (store, "toy", sk.SAEConfig(arch="matryoshka_batchtopk", d_sae=128, k=3))
    tc = quick(total_tokens=300_000, checkpoint_every=50, log_every=25, dead_after_tokens=20_000)
    job = sk.train(*args, tc, progress=False)
    wait_for(lambda: commits(ws, job) >= 2, "two checkpoints")
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    wait_for(lambda: job.status == "failed", "the kill to be noticed")
    job.resume(progress=False)
    resumed = job.result(timeout=300)
    expected = sk.train(*args, tc, background=False, force=True, progress=False).result()
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
