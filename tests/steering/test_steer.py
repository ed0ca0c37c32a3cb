"""sk.steer on a tiny model: exact by construction (coefficient 0 is bitwise the unsteered model; clamp and
ablate change the hook's output by exactly (a' - a) * W_dec[i]), the planted direction raises its token's
probability monotonically, cached and uncached generation are steered identically, hooks never outlive the
block, and bad input is refused before any hook is installed."""

import io
import math
import sys

import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError

HOOK = "blocks.1.resid_post"
D_SAE = 16


def hooks_left(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def tied_sae(lm, seed=0) -> sk.SAE:
    """A ReLU SAE whose encoder rows are its decoder rows, orthonormal, no biases: encoding ``x - a_i d_i``
    gives exactly ``a_i - a_i = 0`` for feature i (up to rounding), so an ablation can be read back."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lm.d_model, D_SAE, generator=g))
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.copy_(q.T)
        sae.W_dec.copy_(q.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata["hook_point"] = HOOK
    return sae


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return sk.load_model(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ids(lm):
    return lm.tokenizer("Return the first element of the list, or raise an error", return_tensors="pt")["input_ids"]


def logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def at_hook(lm, ids, name=HOOK):
    """The hook point's output as later hooks (and the rest of the model) see it."""
    seen = {}
    with lm.hooks({name: lambda x: seen.__setitem__("x", x.detach().clone())}), torch.no_grad():
        lm.model(input_ids=ids)
    return seen["x"]


def test_coefficient_zero_and_no_features_are_bitwise_the_unsteered_model(lm, ids):
    sae = tied_sae(lm)
    base = logits(lm, ids)
    for features in ({}, {3: 0.0}, {3: 0.0, 7: 0.0}):
        with sk.steer(lm, sae, features, mode="add"):
            assert torch.equal(logits(lm, ids), base), features
    with sk.steer(lm, sae, {3: 5.0}, mode="add"):
        assert not torch.equal(logits(lm, ids), base)


@pytest.mark.parametrize("mode,coeff", [("clamp", 3.5), ("clamp", 0.0), ("ablate", 0.0)])
def test_clamp_and_ablate_change_the_hook_output_by_exactly_the_feature_change(lm, ids, mode, coeff):
    sae = tied_sae(lm)
    x = at_hook(lm, ids)
    before = sae.encode(x[0]).detach()
    with sk.steer(lm, sae, {2: coeff, 9: coeff + 1}, mode=mode):
        steered = at_hook(lm, ids)
    target = {2: coeff, 9: coeff + 1} if mode == "clamp" else {2: 0.0, 9: 0.0}
    expected = x[0].clone()
    for i, c in target.items():
        expected += (c - before[:, i])[:, None] * sae.W_dec[i]
    torch.testing.assert_close(steered[0], expected, rtol=0, atol=1e-5)
    after = sae.encode(steered[0]).detach()  # re-encoded: the features read back as set where they were active (where
    for i, c in target.items():     # a ReLU cut a negative pre-activation, it stays below the value set)
        active = before[:, i] > 0
        assert active.any()
        torch.testing.assert_close(after[active, i], torch.full_like(after[active, i], c), rtol=0, atol=1e-4)
        if c == 0:
            assert float(after[:, i].abs().max()) < 1e-4  # an ablated feature reads back as 0 everywhere
    others = [j for j in range(D_SAE) if j not in target]
    torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=1e-4)


def test_cap_limits_the_projection_and_add_adds_the_unit_direction(lm, ids):
    sae = tied_sae(lm)
    x = at_hook(lm, ids)[0]
    unit = (sae.W_dec[4] / sae.W_dec[4].norm()).detach()
    with sk.steer(lm, sae, {4: 0.1}, mode="cap"):
        capped = at_hook(lm, ids)[0]
    assert float((capped @ unit).max()) <= 0.1 + 1e-5
    untouched = (x @ unit) <= 0.1
    assert torch.equal(capped[untouched], x[untouched])
    with sk.steer(lm, sae, {4: 2.5}, mode="add"):
        added = at_hook(lm, ids)[0]
    torch.testing.assert_close(added - x, (2.5 * unit).expand_as(x), rtol=0, atol=1e-5)


def test_adding_a_tokens_unembedding_raises_its_probability_monotonically(lm, ids):
    last = f"blocks.{lm.n_layers - 1}.resid_post"
    unembedding, scale = lm.unembedding()
    token = lm.tokenizer(" list")["input_ids"][-1]
    direction = unembedding[token].float() / (scale if scale is not None else 1)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_dec[0] = direction / direction.norm()
    probs = []
    for coeff in (0, 1, 2, 4, 8, 16, 32):
        with sk.steer(lm, sae, {0: float(coeff)}, hook_point=last):
            probs.append(float(logits(lm, ids)[0, -1].softmax(-1)[token]))
    assert all(b > a for a, b in zip(probs, probs[1:])), probs
    assert probs[-1] > 3 * probs[0], probs  # (the tiny model's logits span a small range: P saturates early)


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_cached_generation_is_steered_exactly_as_uncached_generation(lm, positions):
    sae = tied_sae(lm)
    prompt = "Return the"
    plain = lm.generate(prompt, max_new_tokens=12, stop_at_eos=False)
    outs = {}
    for cache in (True, False):
        with sk.steer(lm, sae, {1: 40.0, 5: -30.0}, mode="add", positions=positions):
            outs[cache] = lm.generate(prompt, max_new_tokens=12, use_cache=cache, stop_at_eos=False)
    assert outs[True].ids == outs[False].ids
    assert outs[True].ids != plain.ids  # the steering did something
    if positions == "generated":  # the prompt is not steered: the first new token is the unsteered one
        assert outs[True].ids[0] == plain.ids[0]


def test_prompt_and_generated_positions_split_a_forward_pass_where_the_prompt_ends(lm, ids):
    sae = tied_sae(lm)
    x = at_hook(lm, ids)
    with sk.steer(lm, sae, {1: 3.0}, positions="prompt"):
        prompt_only = at_hook(lm, ids)
    assert not torch.equal(prompt_only, x)  # a plain forward pass is all prompt
    with sk.steer(lm, sae, {1: 3.0}, positions="generated"):
        assert torch.equal(at_hook(lm, ids), x)


def test_hooks_are_removed_after_the_block_and_after_an_error(lm, ids):
    sae = tied_sae(lm)
    assert hooks_left(lm) == 0
    with sk.steer(lm, sae, {1: 1.0}):
        assert hooks_left(lm) == 2  # the hook point and the position tracker
    assert hooks_left(lm) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with sk.steer(lm, sae, {1: 1.0}, mode="clamp"):
            logits(lm, ids)
            raise RuntimeError("boom")
    assert hooks_left(lm) == 0
    steering = sk.steer(lm, sae, {1: 1.0})
    with steering:
        with pytest.raises(ConfigError, match="already active"):
            steering.__enter__()
    assert hooks_left(lm) == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"features": {16: 1.0}}, "not a feature of this SAE"),
    ({"features": {-1: 1.0}}, "not a feature of this SAE"),
    ({"features": {True: 1.0}}, "not a feature of this SAE"),
    ({"features": {1: math.nan}}, "finite number"),
    ({"features": {1: math.inf}}, "finite number"),
    ({"features": [1, 2]}, "must be a dict"),
    ({"mode": "multiply"}, "mode='multiply'"),
    ({"positions": "last"}, "positions='last'"),
    ({"hook_point": "blocks.0.resid_post"}, "trained on blocks.1.resid_post"),
    ({"hook_point": None, "untagged": True}, "which hook point"),
    ({"relative_to": "feats"}, "relative_to must be a FeatureSet"),
])
def test_bad_input_is_refused_before_any_hook_is_installed(lm, kwargs, message):
    sae = tied_sae(lm)
    if kwargs.pop("untagged", False):
        sae.metadata = {}
    args = {"features": {1: 1.0}, **kwargs}
    with pytest.raises(ConfigError, match=message):
        sk.steer(lm, sae, args.pop("features"), **args)
    assert hooks_left(lm) == 0


def test_an_sae_of_another_width_is_refused(lm):
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model + 1, d_sae=D_SAE))
    with pytest.raises(ConfigError, match="wide"):
        sk.steer(lm, sae, {1: 1.0}, hook_point=HOOK)
    assert hooks_left(lm) == 0


def test_compare_steering_shows_each_coefficient_beside_the_unsteered_output(lm):
    sae = tied_sae(lm)
    result = sk.compare_steering(lm, sae, "Return the", [1], coeffs=[0, 40], max_new_tokens=8, seed=0)
    rows = result.rows
    assert [r["coeff"] for r in rows] == [None, 0.0, 40.0]
    assert rows[1]["scored"].ids == rows[0]["scored"].ids and not any(rows[1]["differs"])  # add 0 == unsteered
    assert any(rows[2]["differs"])
    # the numbers are the unsteered model's: a re-read of the same tokens gives the same log-probability
    again = sk.steering.compare.score(lm, sae, HOOK, rows[2]["scored"].ids[:0] + lm.tokenizer("Return the")["input_ids"],
                                      rows[2]["scored"].ids, [1])
    assert again.logprob == pytest.approx(rows[2]["scored"].logprob)
    assert rows[2]["scored"].logprob < 0 and rows[2]["scored"].activation.keys() == {1}
    table = result.to_pandas()
    assert list(table["coeff"].fillna(-1)) == [-1, 0, 40] and "activation_1" in table
    bundle = result._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "unsteered" in data["text/plain"] and "log-prob" in data["text/html"]
    assert "background:#fde68a" in data["text/html"]  # changed tokens marked in the static view
    assert "Return the" in str(result)


def aligned_sae(lm, text=" list"):
    """A ReLU SAE at the last block whose feature 0 reads and writes the direction of ``text``'s unembedding."""
    last = f"blocks.{lm.n_layers - 1}.resid_post"
    unembedding, scale = lm.unembedding()
    token = lm.tokenizer(text)["input_ids"][-1]
    direction = unembedding[token].float() / (scale if scale is not None else 1)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_dec[0] = sae.W_enc[0] = direction / direction.norm()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata["hook_point"] = last
    return sae, token


def test_a_sweep_measures_concept_fluency_and_kl_for_each_coefficient(lm):
    sae, token = aligned_sae(lm)
    prompts = ["Return the", "The list"]
    sweep = sk.steering_sweep(lm, sae, [0], coeffs=[0, 4, 16], prompts=prompts, max_new_tokens=6, target_tokens=[" list"])
    table = sweep.table
    assert list(table["coeff"]) == [0, 4, 16]
    assert table["kl"][0] == pytest.approx(0, abs=1e-6) and table["kl"][2] > table["kl"][1] > 0
    assert table["target_probability"][2] > table["target_probability"][1] > table["target_probability"][0]
    plain = [lm.generate(p, max_new_tokens=6, seed=0) for p in prompts]  # coefficient 0: the unsteered outputs
    scored = [sk.steering.compare.score(lm, sae, sae.metadata["hook_point"], g.prompt_ids, g.ids, [0]) for g in plain]
    assert table["concept"][0] == pytest.approx(sum(s.activation[0] for s in scored) / 2)
    assert table["perplexity"][0] == pytest.approx(math.exp(-sum(s.logprob for s in scored) / sum(len(s.ids) for s in scored)))
    assert (table["perplexity"] > 1).all() and table["target_probability"].between(0, 1).all()
    assert len(sweep.samples) == 6
    bundle = sweep._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "<svg" in data["text/html"] and "perplexity" in data["text/plain"]
    with pytest.raises(ConfigError, match="2 tokens|tokens for this tokenizer"):
        sk.steering_sweep(lm, sae, [1], target_tokens=["Returning listings"])
    with pytest.raises(ConfigError, match="finite"):
        sk.steering_sweep(lm, sae, [1], coeffs=[0, float("nan")])
    with pytest.raises(ConfigError, match="not a feature"):
        sk.compare_steering(lm, sae, "x", [99])


def test_each_feature_can_have_its_own_coefficient(lm):
    """{feature: weight}: each feature is steered at the coefficient times its weight, which is what steering
    with those coefficients directly generates; the views name the weights."""
    sae = tied_sae(lm)
    result = sk.compare_steering(lm, sae, "Return the", {1: 1.0, 2: -0.5}, coeffs=[40], max_new_tokens=8, seed=0)
    with sk.steer(lm, sae, {1: 40.0, 2: -20.0}):
        direct = lm.generate("Return the", max_new_tokens=8, seed=0)
    assert result.rows[1]["scored"].ids == direct.ids and result.features == [1, 2]
    assert "#2 ×-0.5" in str(result) and "activation_2" in result.to_pandas()
    sweep = sk.steering_sweep(lm, sae, {1: 2.0}, coeffs=[0, 20], prompts=["Return the"], max_new_tokens=4)
    with sk.steer(lm, sae, {1: 40.0}):
        direct = lm.generate("Return the", max_new_tokens=4, seed=0)
    assert sweep.samples[1]["text"] == lm.tokenizer.decode(direct.ids, skip_special_tokens=True)
    assert sweep.to_dict()["weights"] == {"1": 2.0}
    with pytest.raises(ConfigError, match="weight"):
        sk.compare_steering(lm, sae, "x", {1: float("inf")})


def test_ids_and_coefficients_computed_with_numpy_or_torch_are_taken_as_sk_steer_takes_them(lm):
    """A researcher's ids come from argsort and coefficients from linspace: arrays, tensors, NumPy scalars."""
    import numpy as np

    sae = tied_sae(lm)
    plain = sk.compare_steering(lm, sae, "Return the", [1, 2], coeffs=[0.0, 20.0], max_new_tokens=4, seed=0,
                                progress=False)
    for features, coeffs in ((np.array([1, 2]), np.linspace(0, 20, 2)),
                             (torch.tensor([1, 2]), torch.tensor([0.0, 20.0])),
                             ({np.int64(1): np.float32(1), np.int32(2): 1}, [np.float32(0), np.float64(20)])):
        result = sk.compare_steering(lm, sae, "Return the", features, coeffs=coeffs, max_new_tokens=4, seed=0,
                                     progress=False)
        assert [r["scored"].ids for r in result.rows] == [r["scored"].ids for r in plain.rows]
        assert result.features == [1, 2] and [r["coeff"] for r in result.rows] == [None, 0.0, 20.0]
    with pytest.raises(ConfigError, match="finite"):
        sk.steering_sweep(lm, sae, np.array([1]), coeffs=np.array([0.0, np.nan]))
    with pytest.raises(ConfigError, match="not a feature"):
        sk.compare_steering(lm, sae, "x", np.array([True]))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_comparison_and_a_sweep_count_their_generations_while_they_run(lm, monkeypatch):
    sae = tied_sae(lm)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    sk.compare_steering(lm, sae, "Return the", [1], coeffs=[0, 40], max_new_tokens=4)
    shown = terminal.getvalue()
    assert "steering comparison: generations: 0/3" in shown and "3/3 · coefficient 40" in shown
    widest = max(len(line) for line in shown.split("\r"))
    assert shown.endswith("\r" + " " * widest + "\r")  # the line, the widest it was, is gone when the result comes
    terminal.seek(0)
    terminal.truncate()
    sk.steering_sweep(lm, sae, [1], coeffs=[0, 4], prompts=["Return the", "The list"], max_new_tokens=3)
    assert "steering sweep: generations: 4/4 · coefficient 4" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    sk.compare_steering(lm, sae, "Return the", [1], coeffs=[4], max_new_tokens=2, progress=False)
    assert terminal.getvalue() == ""


def test_in_a_notebook_the_count_is_one_output_updated_in_place_then_emptied(monkeypatch):
    from saekit import _steps

    shown = []

    class Handle:
        def update(self, body):
            shown.append(("update", body.data))

    def display(body, display_id=False):
        assert display_id is True
        shown.append(("display", body.data))
        return Handle()

    import IPython.display

    monkeypatch.setattr(_steps, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    with _steps.Steps(2, "work") as steps:
        steps.advance("a <b>")
        steps.advance()
    assert [kind for kind, _ in shown] == ["display", "update", "update", "update"]
    assert "work: 1/2 · a &lt;b&gt;" in shown[1][1] and "value='2'" in shown[2][1] and shown[3][1] == ""
