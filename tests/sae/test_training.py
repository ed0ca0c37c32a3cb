"""sk.train: learning a known dictionary, metrics, sweeps, checkpoints and exact resume, bad input, numerics."""

import os
import signal

import numpy as np
import pytest
import torch
from data_for_tests import commits, dictionary_data, quick, wait_for

import saekit as sk
from saekit.errors import ConfigError, HookPointError, JobFailedError
from saekit.activations.source import StoreSource


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_recovers_a_known_dictionary(ws, arch):
    """Tokens made of 4 of 256 random atoms in 64 dims: > 90% of atoms found (best decoder cosine > 0.9)
    and < 1% dead latents."""
    x, atoms = dictionary_data(300_000, 64, 256, 4)
    store = sk.ActivationStore.from_array(x, "dictionary")
    job = sk.train(store, "dictionary", sk.SAEConfig(arch=arch, d_sae=256, k=4),
                   sk.TrainConfig(total_tokens=1_500_000, batch_size=1024, lr=3e-3, log_every=100,
                                  checkpoint_every=10_000, dead_after_tokens=20_000, eval_tokens=8192),
                   background=False, progress=False)
    sae = job.result()
    cosines = torch.nn.functional.normalize(sae.W_dec, dim=1) @ atoms.t()
    recovered = float((cosines.max(0).values > 0.9).float().mean())
    evaluation = job.info()["result"]["saes"][0]["eval"]
    assert recovered > 0.9, (recovered, evaluation)
    assert evaluation["dead_fraction"] < 0.01
    assert evaluation["fvu"] < 0.2 and evaluation["l0"] == pytest.approx(4, abs=0.25)


def test_metrics_schedule_and_result(ws, small_store):
    job = sk.train(small_store, "toy", sk.SAEConfig(arch="topk", expansion_factor=4, k=3),
                   quick(lr_warmup=5, lr_decay="linear", lr_decay_fraction=0.5), background=False, progress=False)
    sae = job.result()
    assert isinstance(sae, sk.SAE) and sae.d_in == 16 and sae.d_sae == 64
    metrics = job.metrics()
    for name in ("loss", "mse", "fvu", "l0", "l1", "dead_fraction", "lr", "tokens_per_s"):
        assert metrics[name].notna().sum() >= 7, name
    assert metrics.index.max() == 40 and (metrics["l0"].dropna() <= 3 + 1e-6).all()
    lr = metrics["lr"].dropna()
    assert lr.loc[5] == pytest.approx(3e-3) and lr.loc[40] == pytest.approx(0.0, abs=1e-12)  # warmed up, decayed
    assert lr.loc[30] == pytest.approx(3e-3 * 0.5)
    assert metrics["fvu"].dropna().iloc[-1] < metrics["fvu"].dropna().iloc[0]
    result = job.info()["result"]
    evaluation = result["saes"][0]["eval"]
    assert evaluation["eval_tokens"] == 2_000 and 0 <= evaluation["fvu"] < 1
    assert result["tokens"] == 20_000 and result["steps"] == 40
    assert sae.metadata["hook_point"] == "toy" and sae.metadata["eval"]["fvu"] == evaluation["fvu"]
    assert metrics["eval_fvu"].dropna().iloc[0] == pytest.approx(evaluation["fvu"])
    folder = ws.path / "saes" / job.id
    assert (folder / "final" / "sae.safetensors").exists() and not list(folder.glob("step_*"))
    again = sk.train(small_store, "toy", sk.SAEConfig(arch="topk", expansion_factor=4, k=3),
                     quick(lr_warmup=5, lr_decay="linear", lr_decay_fraction=0.5), background=False, progress=False)
    assert again.id == job.id  # a finished spec is returned, not trained again
    job.delete()
    assert not folder.exists()


def test_sweep_trains_several_saes_on_one_read(ws, small_store):
    configs = [sk.SAEConfig(arch="topk", d_sae=32, k=2), sk.SAEConfig(arch="topk", d_sae=64, k=4),
               sk.SAEConfig(arch="relu", d_sae=32, l1_coefficient=0.1)]
    job = sk.train(small_store, "toy", configs, quick(), background=False, progress=False)
    saes = job.result()
    assert [s.d_sae for s in saes] == [32, 64, 32] and [s.arch for s in saes] == ["topk", "topk", "relu"]
    metrics = job.metrics()
    assert metrics["sae0/l0"].dropna().max() <= 2 + 1e-6 and metrics["sae1/l0"].dropna().max() <= 4 + 1e-6
    assert "sae2/l1" in metrics and "loss" not in metrics
    assert len(job.info()["result"]["saes"]) == 3


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_dense_architectures_learn(ws, small_store, arch):
    settings = {"relu": {"l1_coefficient": 0.05},
                "jumprelu": {"l0_coefficient": 0.01, "jumprelu_init_threshold": 0.05, "jumprelu_bandwidth": 0.05}}
    config = sk.SAEConfig(arch=arch, d_sae=64, **settings[arch])
    job = sk.train(small_store, "toy", config, quick(total_tokens=60_000, lr=3e-3), background=False, progress=False)
    sae = job.result()
    metrics = job.metrics()
    assert metrics["mse"].dropna().iloc[-1] < 0.5 * metrics["mse"].dropna().iloc[0]
    evaluation = job.info()["result"]["saes"][0]["eval"]
    assert evaluation["fvu"] < 0.5 and 0 < evaluation["l0"] < 64
    if arch == "jumprelu":
        assert not torch.allclose(sae.threshold, torch.full((64,), 0.05))  # thresholds learned


@pytest.mark.heavy
def test_killed_cancelled_and_resumed_equals_one_go(ws):
    """kill -9 mid-run, resume, cancel, resume: the final weights equal an uninterrupted run's."""
    x, _ = dictionary_data(40_000, 16, 64, 3, seed=5)
    store = sk.ActivationStore.from_array(x, "toy", chunk_bytes=2**16)
    args = (store, "toy", sk.SAEConfig(arch="batchtopk", d_sae=256, k=3))
    tc = quick(total_tokens=600_000, checkpoint_every=50, log_every=25, dead_after_tokens=20_000)
    job = sk.train(*args, tc, progress=False)
    wait_for(lambda: commits(ws, job) >= 2, "two checkpoints")
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    wait_for(lambda: job.status == "failed", "the kill to be noticed")
    assert job.info()["error_type"] == "worker_lost"
    job.resume(progress=False)
    before = commits(ws, job)
    wait_for(lambda: commits(ws, job) >= before + 2, "checkpoints after the resume")
    job.cancel().wait(timeout=60)
    assert job.status == "cancelled"
    job.resume(progress=False)
    resumed = job.result(timeout=300)
    messages = [e["message"] for e in job.events()]
    assert sum("resuming from the checkpoint" in m for m in messages) == 2 and job.attempt == 3
    straight = sk.train(*args, tc, background=False, force=True, progress=False)
    assert straight.id != job.id
    expected = straight.result()
    pd_resumed, pd_straight = job.metrics(), straight.metrics()
    differ = {name: float((resumed.state_dict()[name] - value).abs().max())
              for name, value in expected.state_dict().items()}
    if max(differ.values()) > 1e-6:  # say where the runs parted: the first logged step whose loss differs
        both = pd_resumed["loss"].dropna().to_frame("resumed").join(pd_straight["loss"].dropna().rename("straight"))
        parted = both.index[both["resumed"] != both["straight"]]
        resumes = [e["message"] for e in job.events() if "resuming from the checkpoint" in e["message"]]
        pytest.fail(f"largest differences {differ}; the logged losses first differ at step "
                    f"{parted[0] if len(parted) else None}; {resumes}")
    np.testing.assert_allclose(pd_resumed["loss"].dropna().to_numpy()[-5:], pd_straight["loss"].dropna().to_numpy()[-5:],
                               rtol=1e-5)


def test_bad_input_is_refused_before_anything_starts(ws, small_store):
    with pytest.raises(ConfigError, match="d_in=32 does not match the data's width 16"):
        sk.train(small_store, "toy", sk.SAEConfig(d_in=32, k=4), quick())
    with pytest.raises(ConfigError, match="k=20 must be smaller than d_sae=16"):
        sk.train(small_store, "toy", sk.SAEConfig(d_sae=16, k=20), quick())
    with pytest.raises(ConfigError, match="batch_size=19000 is larger than the 18,000 training rows"):
        sk.train(small_store, "toy", sk.SAEConfig(k=4), quick(batch_size=19_000, total_tokens=50_000))
    with pytest.raises(ConfigError, match="'blocks.0.resid_post' is not in activation store"):
        sk.train(small_store, "blocks.0.resid_post", sk.SAEConfig(k=4), quick())
    with pytest.raises(ConfigError, match="source must be"):
        sk.train([1, 2, 3], "toy", sk.SAEConfig(k=4), quick())
    with pytest.raises(ConfigError, match="divide evenly over nproc=3"):
        sk.train(small_store, "toy", sk.SAEConfig(k=4), quick(), launcher="torchrun", nproc=3)
    with pytest.raises(ConfigError, match="no template named 'nope'"):
        sk.train(small_store, "toy", template="nope")
    assert len(sk.jobs()) == 0  # nothing was submitted


def test_non_finite_loss_fails_as_numerics_and_keeps_the_last_checkpoint(ws):
    x, _ = dictionary_data(20_000, 16, 64, 3, seed=2)
    tc = quick(checkpoint_every=2, log_every=1)
    source = StoreSource(sk.ActivationStore.from_array(x, "clean", chunk_bytes=2**16), "clean", tc.eval_tokens)
    first = next(source.batches(tc.batch_size, tc.seed, 6, torch.device("cpu")))  # the batch of step 6 (the 7th)
    bad_row = int(np.flatnonzero((x.numpy() == first[0].numpy()).all(1))[0])
    import zarr

    store = sk.ActivationStore.from_array(x, "clean", chunk_bytes=2**16)
    zarr.open_group(store.location, mode="r+")["clean"][bad_row, 0] = float("inf")  # damage from_array would refuse
    job = sk.train(store, "clean", sk.SAEConfig(k=3, d_sae=32), tc, background=False, progress=False)
    with pytest.raises(JobFailedError) as failure:
        job.result()
    # the data is the cause, and it says so (it used to suggest a lower learning rate)
    assert failure.value.error_type == "data" and "not the learning rate" in failure.value.suggestion
    assert "hold NaN or infinity (1 of the 500 rows of the batch at step 7)" in str(failure.value)
    assert "last good checkpoint (step 6)" in str(failure.value)
    kept = sorted(p.name for p in (ws.path / "saes" / job.id).glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]
    assert all(torch.isfinite(p).all() for p in sk.SAE.load(ws.path / "saes" / job.id / "step_00000006" / "sae0").parameters())


def test_templates_feed_train(ws, small_store):
    sk.templates.save("tiny-topk", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), description="for tests")
    job = sk.train(small_store, "toy", template="tiny-topk", background=False, progress=False)
    sae = job.result()
    assert sae.config.k == 2 and sae.d_sae == 32
    override = sk.train(small_store, "toy", sk.SAEConfig(arch="topk", d_sae=48, k=2), template="tiny-topk",
                        background=False, progress=False).result()
    assert override.d_sae == 48


def test_train_on_model_activations_with_downstream_evaluation(ws, docs_file, tiny_lm):
    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=300,
                         background=False, progress=False).result()
    hook = "blocks.1.resid_post"
    job = sk.train((tiny_lm, tokens), hook, sk.SAEConfig(arch="topk", d_sae=256, k=8),
                   sk.TrainConfig(total_tokens=20_000, batch_size=1000, lr=1e-3, log_every=5, checkpoint_every=100,
                                  eval_tokens=2048), background=False, progress=False)
    sae = job.result()
    evaluation = job.info()["result"]["saes"][0]["eval"]
    assert sae.d_in == tiny_lm.d_model and evaluation["fvu"] < 1
    assert evaluation["kl"] >= 0 and evaluation["ce_tokens"] > 1000
    gap = evaluation["ce_zero"] - evaluation["ce_clean"]
    assert evaluation["ce_recovered"] == pytest.approx((evaluation["ce_zero"] - evaluation["ce_sae"]) / gap)
    # the splice itself: a perfect reconstruction recovers everything, a zero one nothing
    from saekit.sae.evaluation import downstream_metrics

    sequences = range(tokens.n_sequences - 8, tokens.n_sequences)
    perfect = downstream_metrics(lambda a: a, tiny_lm, tokens, hook, sequences)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-6) and perfect["kl"] == pytest.approx(0, abs=1e-6)
    assert perfect["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    zero = downstream_metrics(torch.zeros_like, tiny_lm, tokens, hook, sequences)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero"], abs=1e-6) and zero["ce_recovered"] == pytest.approx(0, abs=1e-4)
    assert zero["ce_clean"] == pytest.approx(perfect["ce_clean"])
    acts = sk.extract(tiny_lm, tokens, hook, dtype="float32", background=False, progress=False).result()
    from_store = sk.train(acts, hook, sk.SAEConfig(arch="topk", d_sae=256, k=8),
                          sk.TrainConfig(total_tokens=10_000, batch_size=1000, lr=1e-3, eval_tokens=2048),
                          eval_model=tiny_lm, background=False, progress=False)
    from_store.result()
    assert "ce_recovered" in from_store.info()["result"]["saes"][0]["eval"]
    with pytest.raises(HookPointError):
        sk.train((tiny_lm, tokens), "blocks.9.resid_post", sk.SAEConfig(k=8), quick())


def test_model_stream_restarts_exactly_from_its_state(docs_file, tiny_lm, ws):
    from saekit.activations.source import ModelSource

    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=100,
                         background=False, progress=False).result()
    source = ModelSource(tiny_lm, tokens, "blocks.0.resid_post", eval_tokens=512, sequences_per_forward=3)
    stream = source.batches(100, 7, 0, torch.device("cpu"))
    seen = [next(stream) for _ in range(12)]
    state = source.state()
    later = [next(stream) for _ in range(4)]
    again = ModelSource(tiny_lm, tokens, "blocks.0.resid_post", eval_tokens=512, sequences_per_forward=3)
    restarted = again.batches(100, 7, 12, torch.device("cpu"), state)
    for expected in later:
        torch.testing.assert_close(next(restarted), expected, rtol=0, atol=0)
    assert all(len(b) == 100 for b in seen) and source.train_sequences + source.eval_sequences == tokens.n_sequences
    # a checkpoint from before positions (the cursor after the last forward pass, its rows left over) restarts there
    assert state["skip"] > 0  # the 12th batch ended inside a sequence
    left = int(source._counts(7, state["cursor"], state["cursor"] + 1)[0]) - state["skip"]
    old = {"cursor": state["cursor"] + 1, "leftover": torch.zeros(left, tiny_lm.d_model)}
    assert again._position(7, old) == (state["cursor"], state["skip"])


def test_each_rank_runs_the_model_over_its_slice_of_the_model_stream_only(ws, docs_file, tiny_lm):
    """Two ranks' slices of each global batch join into the one-process batch, bitwise, and each rank
    runs the model over little more than half the rows; a rank restarts exactly from its state."""
    from saekit.activations.source import ModelSource

    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=200,
                         background=False, progress=False).result()

    def stream(rank, world, n, state=None):
        source = ModelSource(tiny_lm, tokens, "blocks.0.resid_post", eval_tokens=512, sequences_per_forward=4)
        batches = source.batches(1000, 3, 0, torch.device("cpu"), state, rank=rank, world=world)
        return [next(batches) for _ in range(n)], source

    whole, one = stream(0, 1, 8)
    first, rank0 = stream(0, 2, 8)
    second, rank1 = stream(1, 2, 8)
    for a, b, both in zip(first, second, whole):
        assert len(a) == len(b) == 500
        torch.testing.assert_close(torch.cat([a, b]), both, rtol=0, atol=0)
    assert 8000 <= one.rows_computed < 8000 + 64  # one process: each row once (and the rest of the last sequence)
    for rank in (rank0, rank1):  # a slice of ~8 sequences of 64 rows computes at most its two boundary ones again
        assert 4000 <= rank.rows_computed <= 4000 + 8 * 2 * 64, rank.rows_computed
    part, source = stream(1, 2, 5)
    again, _ = stream(1, 2, 3, source.state())
    for expected, got in zip(second[5:], again):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_preloading_the_store_trains_the_same_sae(ws, small_store):
    config = sk.SAEConfig(arch="topk", d_sae=32, k=2)
    streamed = sk.train(small_store, "toy", config, quick(preload=False), background=False, progress=False).result()
    preloaded = sk.train(small_store, "toy", config, quick(preload=True), background=False, progress=False).result()
    for name, value in streamed.state_dict().items():
        torch.testing.assert_close(preloaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_tf32_holds_while_a_cuda_job_runs_and_is_restored_after():
    """The flag is process-wide and a foreground job runs in the caller's process: the job sets it for its own
    time only (the flag is a plain setting, so this runs without a GPU), and never on the CPU."""
    from saekit.sae.training import _matmul_precision

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        with _matmul_precision(torch.device("cuda"), True):
            assert matmul.allow_tf32 is True
        assert matmul.allow_tf32 is False
        with pytest.raises(RuntimeError), _matmul_precision(torch.device("cuda"), True):
            raise RuntimeError("the job failed")
        assert matmul.allow_tf32 is False
        with _matmul_precision(torch.device("cpu"), True):
            assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before


def test_a_resumed_run_keeps_the_learning_rate_it_started_with():
    """The rate is in the checkpoint; a checkpoint without it (saekit before the TopK rate became 8e-4 at 2**14) was
    written when lr=None meant 2e-4 at 2**14, and a run resumed from it keeps that rate."""
    from saekit.sae.training import _Run

    tc = sk.TrainConfig(total_tokens=10_000, batch_size=100, device="cpu")
    run = _Run(0, sk.SAEConfig(arch="topk", d_in=8, d_sae=64, k=2), tc, torch.device("cpu"))
    assert run.lr == pytest.approx(8e-4 / (64 / 2**14) ** 0.5)
    state = run.state()
    again = _Run(0, sk.SAEConfig(arch="topk", d_in=8, d_sae=64, k=2), tc, torch.device("cpu"))
    again.restore(state, tc)
    assert again.lr == run.lr
    old = {k: v for k, v in state.items() if k != "lr"}
    again.restore(old, tc)
    assert again.lr == pytest.approx(2e-4 / (64 / 2**14) ** 0.5)


def test_the_default_log_schedule_gives_any_run_a_curve(ws, small_store):
    """log_every=None: every step of a run under 200 steps, about a hundredth of a longer one, at most every 50."""
    assert [sk.TrainConfig(total_tokens=n * 100, batch_size=100).log_interval for n in (1, 50, 199, 200, 1_000, 10**6)] \
        == [1, 1, 1, 2, 10, 50]
    assert sk.TrainConfig(log_every=7).log_interval == 7
    with pytest.raises(ConfigError, match="log_every"):
        sk.TrainConfig(log_every=0)
    job = sk.train(small_store, "toy", sk.SAEConfig(arch="topk", expansion_factor=4, k=3),
                   quick(total_tokens=25_000, log_every=None), background=False, progress=False)
    assert job.metrics()["fvu"].notna().sum() == 50  # a 50-step run: 50 points, not the one a fixed 50 gave


def test_the_trainer_asks_the_device_for_dead_latents_only_when_one_can_be_dead():
    """A latent's silence grows by one batch a step at most, so after one read of the longest silence the host
    knows for how many steps no latent can be dead, and passes ``dead=None`` without reading (on a GPU each read
    makes the host wait; issue 25). The latents passed are those dead at every step, read or not."""
    from types import SimpleNamespace

    from simulated_cuda import counting_syncs

    from saekit.sae.training import _Trainer

    tc = SimpleNamespace(dead_after=100, batch_size=4)
    run = SimpleNamespace(since_fired=torch.zeros(6, dtype=torch.long), none_dead_before=0,
                          sae=SimpleNamespace(uses_dead_latents=True))
    trainer = SimpleNamespace(tc=tc, step=0)
    g = torch.Generator().manual_seed(0)
    reads, dead_steps = [], 0
    for step in range(300):
        trainer.step = step
        with counting_syncs() as seen:
            dead = _Trainer._dead(trainer, run)
        reads.append(len(seen))
        expected = run.since_fired >= tc.dead_after
        if bool(expected.any()):
            dead_steps += 1
            assert torch.equal(dead, expected), step
        else:
            assert dead is None, step
        rate = 0.9 if step < 100 else (0.0 if step < 200 else 0.5)  # all fire; then latent 5 goes silent; then some
        fired = torch.rand(6, generator=g) < rate
        fired[:5] |= step < 200
        run.since_fired.add_(tc.batch_size).masked_fill_(fired, 0)
    assert dead_steps > 50
    assert sum(reads[:100]) <= 6  # every ~24 steps while every latent fires, not at every step
    assert sum(reads) < 300
    # an architecture whose loss has no use for dead latents (ReLU, JumpReLU) gets the mask, and nothing is read
    run.sae.uses_dead_latents = False
    with counting_syncs() as seen:
        dead = _Trainer._dead(trainer, run)
    assert not seen and torch.equal(dead, run.since_fired >= tc.dead_after)
    assert not sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=4, d_sae=8)).uses_dead_latents
    assert sk.SAE.from_config(sk.SAEConfig(arch="matryoshka_batchtopk", d_in=4, d_sae=8, k=2)).uses_dead_latents
