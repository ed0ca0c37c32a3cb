"""Synthetic activations from a known dictionary (Zipf frequencies, a hierarchy, correlated firing) and the recovery
measures: the generator keeps its law, the Hungarian matching is optimal, a perfect decoder scores 1, a random one
does not, and an SAE trained on the rows recovers the dictionary."""

import itertools

import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError
from saekit.evals.ground_truth import absorption, matched_cosines


def test_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="mean_active=0 must be a number of features"):
        sk.SyntheticConfig(mean_active=0)
    with pytest.raises(ConfigError, match="parents=100 with children=4 each need 500 features"):
        sk.SyntheticConfig(n_features=256, parents=100)
    with pytest.raises(ConfigError, match=r"correlation=1.0 must be in \[0, 1\)"):
        sk.SyntheticConfig(correlation=1.0)
    with pytest.raises(ConfigError, match="give a SyntheticConfig or settings, not both"):
        sk.SyntheticFeatures(sk.SyntheticConfig(), d_in=8)


def test_the_rows_follow_the_law():
    truth = sk.SyntheticFeatures(d_in=32, n_features=300, mean_active=5, parents=10, children=3, zipf_exponent=0.7)
    x, codes = truth.sample(40_000)
    fires = codes > 0
    assert x.shape == (40_000, 32) and torch.allclose(x, codes @ truth.dictionary, atol=1e-5)
    assert float(fires.sum(1).float().mean()) == pytest.approx(5, rel=0.03)  # the true L0
    assert float(truth.probability.sum()) == pytest.approx(5)
    measured = fires.float().mean(0).double()
    assert torch.allclose(measured, truth.probability, atol=0.01)  # each feature fires as often as it should
    for parent, children in enumerate(truth.children):
        assert not (fires[:, children].any(1) & ~fires[:, parent]).any()  # a child only with its parent
        assert (fires[:, children].sum(1) <= 1).all()  # and one child at a time
    roots = truth.probability[truth.parent_of < 0]
    assert bool((roots[1:] <= roots[:-1]).all()) and roots[0] > 3 * roots[-1]  # Zipf: by rank
    again, _ = truth.sample(40_000)
    other, _ = truth.sample(40_000, seed=2)
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_correlated_features_fire_together():
    """Features on one factor co-fire more than independence says once ``correlation`` > 0."""
    def excess(correlation):
        truth = sk.SyntheticFeatures(d_in=16, n_features=64, mean_active=8, zipf_exponent=0, factors=2,
                                     correlation=correlation)
        fires = (truth.sample(50_000)[1] > 0).float()
        same = truth._factor[:, None] == truth._factor[None, :]
        joint = fires.t() @ fires / len(fires)
        p = fires.mean(0)
        off = same & ~torch.eye(64, dtype=torch.bool)
        return float((joint - p[:, None] * p[None, :])[off].mean())

    assert abs(excess(0.0)) < 0.002 and excess(0.6) > 0.01


def test_the_matching_is_optimal():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    cos = (torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).t()).abs()
    best = max(sum(float(cos[i, j]) for i, j in enumerate(p)) for p in itertools.permutations(range(5)))
    assert float(matched_cosines(a, b).sum()) == pytest.approx(best)
    assert len(matched_cosines(torch.randn(3, 8), b)) == 3  # as many pairs as the smaller side


def test_a_perfect_decoder_scores_one_and_a_random_one_does_not():
    truth = sk.SyntheticFeatures(d_in=32, n_features=64, mean_active=3, zipf_exponent=0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=32, d_sae=64, k=3))
    scores = sk.recovery(sae, truth, n=4096)
    assert scores["mcc"] < 0.6 and scores["recovered"] < 0.1
    with torch.no_grad():
        order = torch.randperm(64)
        sae.W_dec.copy_(truth.dictionary[order])
        sae.W_enc.copy_(truth.dictionary[order])
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    perfect = sk.recovery(sae, truth, n=4096)
    assert perfect["mcc"] == pytest.approx(1.0) and perfect["uniqueness"] == 1.0 and perfect["recovered"] == 1.0
    assert perfect["true_l0"] == pytest.approx(3, rel=0.05) and perfect["l0"] <= 3.0  # k, less the negatives
    assert min(perfect["precision"], perfect["recall"]) > 0.5 > max(scores["precision"], scores["recall"])


def test_an_sae_trained_on_the_rows_recovers_the_dictionary(ws):
    truth = sk.SyntheticFeatures(d_in=32, n_features=128, mean_active=3, zipf_exponent=0.3, seed=4)
    store = truth.store(200_000)
    assert store.n_tokens == 200_000 and truth.store(200_000).id == store.id  # named by what it holds: made once
    sae = sk.train(store, "synthetic", sk.SAEConfig(arch="topk", d_sae=128, k=3),
                   sk.TrainConfig(total_tokens=600_000, batch_size=1024, lr=3e-3, log_every=100,
                                  dead_after_tokens=20_000, eval_tokens=4096),
                   background=False, progress=False).result()
    scores = sk.recovery(sae, truth)
    assert scores["mcc"] > 0.9 and scores["recovered"] > 0.8, scores
    assert scores["f1"] > 0.6 and scores["dead_fraction"] < 0.05, scores


def test_absorption_sees_a_parent_latent_that_stops_when_a_child_fires():
    truth = sk.SyntheticFeatures(d_in=32, n_features=60, mean_active=4, parents=4, children=3, child_probability=0.5)
    _, codes = truth.sample(20_000)
    true = codes > 0
    parent_latents = torch.arange(4)  # latent p stands for parent p
    faithful = true[:, :4].clone()  # fires wherever its parent does
    child = torch.stack([true[:, truth.children[p]].any(1) for p in range(4)], dim=1)
    absorbed = faithful & ~child  # silent whenever a child fires: the children took its direction
    kept = absorption(faithful, codes, truth, parent_latents)
    lost = absorption(absorbed, codes, truth, parent_latents)
    assert kept["absorption"] == 0.0 and kept["parent_recall_with_child"] == 1.0
    assert lost["absorption"] == 1.0 and lost["parent_recall_alone"] == 1.0 and lost["parent_recall_with_child"] == 0.0
    half = faithful & ~(child & (torch.rand(20_000, 4, generator=torch.Generator().manual_seed(0)) < 0.5))
    assert absorption(half, codes, truth, parent_latents)["absorption"] == pytest.approx(0.5, abs=0.05)


def test_the_store_is_written_a_block_at_a_time_and_keeps_its_world(ws, monkeypatch):
    """Rows are made and written ``block`` at a time (never all of them at once), are the rows ``sample`` gives for
    each block's seed, and the store's attrs name the world; a bad block is refused and leaves no store."""
    truth = sk.SyntheticFeatures(d_in=8, n_features=40, mean_active=3, seed=2)
    largest = []
    sample = truth.sample
    monkeypatch.setattr(truth, "sample", lambda n, seed=1: largest.append(n) or sample(n, seed=seed))
    store = truth.store(10_000, block=3_000)
    assert largest == [3_000, 3_000, 3_000, 1_000]
    expected = torch.cat([sample(n, seed=2 + i)[0] for i, n in enumerate(largest)])
    assert torch.equal(store.read("synthetic", 0, 10_000).float(), expected)
    assert store.attrs["synthetic"] == truth.config.to_dict() and store.id.startswith("array-synthetic-")
    assert truth.store(10_000, block=5_000).id != store.id  # other blocks are other rows
    assert store.id in sk.activation_stores().to_pandas()["id"].tolist()
    from saekit.activations.store import ActivationStore

    with pytest.raises(ConfigError, match=r"the blocks held 5 rows; the store was to hold 6"):
        ActivationStore.from_blocks([torch.zeros(5, 8)], "short", "x", 6, 8)
    with pytest.raises(ConfigError, match=r"block \(5, 7\) after 0 rows does not fit"):
        ActivationStore.from_blocks([torch.zeros(5, 7)], "narrow", "x", 5, 8)
    assert not list((ws.path / "activations").glob("array-short*")) and not list((ws.path / "activations").glob("array-narrow*"))
