"""The streaming accumulator against brute force: every activation of a small fixture in memory, top-k by
value then row, windows read off the dense codes, quantile edges from numpy, histograms by counting; the
same result whatever the block size, and after a checkpoint and a restore."""

import math

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.features.accumulate import Accumulator, hist_edges
from saekit.features.analysis import _Pass
from saekit.activations.source import Rows
from saekit.features.tables import quantile_edges

D_IN, D_SAE, N = 8, 24, 3000
BEFORE, AFTER = 3, 2


@pytest.fixture(autouse=True, params=["sparse", "dense", "listed codes"])
def code_path(request, monkeypatch):
    """Every test on both ways of finding a block's candidates: sorting them all, and each latent's best of
    them on a dense matrix first (what many candidates get, as a dense code's first block offers); and with
    the block's codes only listed (as a TopK SAE gives them: no dense matrix, their order checked)."""
    import saekit.features.accumulate as accumulate
    import saekit.features.analysis as analysis

    monkeypatch.setattr(accumulate, "_many", lambda *a: request.param == "dense")
    if request.param == "listed codes":
        codes = analysis._codes
        monkeypatch.setattr(analysis, "_codes", lambda sae, x: (*codes(sae, x)[:3], None))
    return request.param


def fixture(seed=0, distinct=None):
    """An SAE, its inputs (``distinct`` different rows repeated, so activations tie), and the rows' sources:
    documents of 1..40 tokens."""
    g = torch.Generator().manual_seed(seed)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_SAE, D_IN, generator=g))
        sae.b_enc.copy_(-1.5 * torch.rand(D_SAE, generator=g))
    if distinct:
        base = torch.randn(distinct, D_IN, generator=g)
        x = base[torch.randint(0, distinct, (N,), generator=g)]
    else:
        x = torch.randn(N, D_IN, generator=g)
    lengths = torch.randint(1, 41, (N,), generator=g)
    doc_ids = torch.repeat_interleave(torch.arange(N), lengths)[:N]
    positions = torch.cat([torch.arange(n) for n in lengths])[:N]
    token_ids = torch.randint(0, 500, (N,), generator=g)
    return sae, x, token_ids, doc_ids, positions


def run(sae, x, token_ids, doc_ids, positions, *, block, feed, top_k=5, reservoir=N, stop_at=None, state=None):
    acc = Accumulator(D_SAE, top_k=top_k, reservoir=reservoir, context=(BEFORE, AFTER), seed=3)
    stream = _Pass(sae, acc, BEFORE, AFTER, block, "cpu")
    start = 0
    if state is not None:
        stream.load(*state)
        start = state[1]["row"]
    for lo in range(start, N, feed):
        hi = min(lo + feed, N)
        stream.feed(Rows(x[lo:hi], token_ids[lo:hi], doc_ids[lo:hi], positions[lo:hi], {"row": hi}))
        if stop_at is not None and hi >= stop_at:
            return stream.state(), {"row": hi}
    stream.finish()
    return acc


def brute(sae, x, token_ids, doc_ids, positions, top_k):
    with torch.no_grad():
        z = sae.encode(x).numpy()
    out = {}
    for j in range(D_SAE):
        rows = np.nonzero(z[:, j])[0]
        order = sorted(rows, key=lambda r: (-z[r, j], r))[:top_k]
        windows = []
        for r in order:
            vals, toks = [], []
            for o in range(-BEFORE, AFTER + 1):
                s = r + o
                ok = 0 <= s < N and doc_ids[s] == doc_ids[r] and positions[s] == positions[r] + o
                vals.append(z[s, j] if ok else 0.0)
                toks.append(int(token_ids[s]) if ok else -1)
            windows.append((vals, toks))
        out[j] = {"rows": list(order), "values": [z[r, j] for r in order], "windows": windows, "all": z[rows, j],
                  "count": len(rows), "max": z[rows, j].max() if len(rows) else 0.0}
    return out


@pytest.mark.parametrize("distinct", [None, 7])  # 7 distinct inputs: every activation ties with hundreds
def test_exact_top_k_windows_counts_and_histograms(distinct):
    data = fixture(distinct=distinct)
    acc = run(*data, block=256, feed=100)
    truth = brute(*data, top_k=5)
    edges = np.array(hist_edges())
    for j in range(D_SAE):
        t = truth[j]
        assert int(acc.count[j]) == t["count"]
        assert float(acc.max[j]) == pytest.approx(float(t["max"]), rel=1e-6)
        assert float(acc.total[j]) == pytest.approx(float(t["all"].astype(np.float64).sum()), rel=1e-6)
        top = {name: tensor[j] for name, tensor in acc.top.sorted().items()}
        kept = top["rows"][top["rows"] >= 0].tolist()
        assert kept == t["rows"], f"latent {j}"  # ties go to the earlier row
        np.testing.assert_allclose(top["values"][:len(kept)].numpy(), t["values"], rtol=1e-6)
        for slot, (vals, toks) in enumerate(t["windows"]):
            np.testing.assert_allclose(top["window_values"][slot].float().numpy(), vals, rtol=1e-3, atol=1e-3)
            assert top["window_tokens"][slot].tolist() == toks
        counts, _ = np.histogram(t["all"], bins=np.r_[edges[:-1], np.finfo(np.float64).max])
        np.testing.assert_array_equal(acc.hist[j].numpy(), counts)


def test_quantile_edges_are_numpys():
    data = fixture(seed=4)
    acc = run(*data, block=300, feed=77)  # the reservoir holds every activation (reservoir = N)
    truth = brute(*data, top_k=1)
    edges = quantile_edges(acc.sample.values, acc.sample.rows >= 0, 10).numpy()
    for j in range(D_SAE):
        if truth[j]["count"]:
            expected = np.quantile(truth[j]["all"].astype(np.float64), np.linspace(0, 1, 11))
            np.testing.assert_allclose(edges[j], expected, rtol=1e-12)
        else:
            assert np.isnan(edges[j]).all()


def test_quantile_edges_match_numpy_on_awkward_counts():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(6, 9, generator=g)
    valid = torch.arange(9)[None, :] < torch.tensor([1, 2, 3, 5, 8, 9])[:, None]
    edges = quantile_edges(values, valid, 4).numpy()
    for i in range(6):
        np.testing.assert_allclose(edges[i], np.quantile(values[i][valid[i]].double().numpy(), np.linspace(0, 1, 5)),
                                   rtol=1e-12)


def ordered(acc):
    """The accumulator's state with each buffer's entries best first (slots are kept in no order)."""
    state = {k: v for k, v in acc.state().items() if not k.startswith(("top.", "sample."))}
    for name in ("top", "sample"):
        state.update({f"{name}.{k}": v for k, v in getattr(acc, name).sorted().items()})
    return state


def test_the_result_does_not_depend_on_block_or_read_size():
    data = fixture(seed=2, distinct=11)
    a = run(*data, block=64, feed=1000, reservoir=40)
    b = run(*data, block=1000, feed=33, reservoir=40)
    for name, tensor in ordered(a).items():
        torch.testing.assert_close(tensor, ordered(b)[name], rtol=0, atol=0, msg=name)


def test_dense_and_sparse_blocks_keep_the_same_entries(monkeypatch):
    import saekit.features.accumulate as accumulate

    data = fixture(seed=2, distinct=11)
    results = []
    for dense in (False, True):
        monkeypatch.setattr(accumulate, "_many", lambda *a, dense=dense: dense)
        results.append(ordered(run(*data, block=100, feed=1000, reservoir=40)))
    for name, tensor in results[0].items():
        torch.testing.assert_close(tensor, results[1][name], rtol=0, atol=0, msg=name)


def test_a_checkpoint_and_restore_continue_exactly():
    data = fixture(seed=5)
    straight = run(*data, block=128, feed=90, reservoir=30)
    state = run(*data, block=128, feed=90, reservoir=30, stop_at=1500)
    resumed = run(*data, block=128, feed=90, reservoir=30, state=state)
    for name, tensor in straight.state().items():  # the same blocks: even the slots agree
        torch.testing.assert_close(tensor, resumed.state()[name], rtol=0, atol=0, msg=name)


def test_the_reservoir_is_a_uniform_sample():
    """A latent that fires on every row: its reservoir holds rows spread over the whole stream."""
    n, reservoir = 20_000, 200
    acc = Accumulator(1, top_k=1, reservoir=reservoir, context=(0, 0), seed=0)
    from saekit.features.accumulate import Block

    block = 10_000
    for start in range(0, n, block):
        rows = torch.arange(block)
        acc.add(Block(start, block, 0, rows, torch.zeros(block, dtype=torch.int64), torch.ones(block), rows,
                      torch.zeros(block, dtype=torch.int64), rows + start))
    kept = np.sort(acc.sample.rows[0].numpy())
    assert len(set(kept.tolist())) == reservoir
    quarters = np.histogram(kept, bins=4, range=(0, n))[0]
    assert quarters.min() > reservoir / 4 * 0.6  # each quarter of the stream holds about a quarter of the sample


def _one_block(acc, rows, latents, values):
    from saekit.features.accumulate import Block

    n = int(max(rows)) + 1
    rows, latents = torch.tensor(rows), torch.tensor(latents)
    acc.add(Block(0, n, 0, rows, latents, torch.tensor(values), torch.arange(n), torch.zeros(n, dtype=torch.int64),
                  torch.arange(n)))
    return {j: sorted(r for r in acc.top.rows[j].tolist() if r >= 0) for j in range(acc.d_sae)}


def test_odd_activations_enter_the_top_as_their_keys_say():
    """A key holds the bits of the activation clamped at 0: -inf (clamped to 0) enters an empty slot, a value
    whose sign bit is set (-0.0, a negative NaN as inf - inf gives) never enters, nor displaces anything."""
    negative_nan = -torch.tensor(float("nan"))
    acc = Accumulator(2, top_k=2, reservoir=2, context=(1, 1))
    assert _one_block(acc, [0, 1], [0, 0], [-math.inf, 1.0])[0] == [0, 1]
    acc = Accumulator(2, top_k=2, reservoir=2, context=(0, 0))
    assert _one_block(acc, [0, 1, 2], [1, 1, 1], [3.0, 2.0, float(negative_nan)])[1] == [0, 1]
    acc = Accumulator(4, top_k=3, reservoir=2, context=(0, 0))
    kept = _one_block(acc, [0, 1, 2], [0, 1, 1], [-0.0, 2.0, -1.0])
    assert kept[0] == [] and kept[1] == [1, 2]
    assert acc.hist.sum(1).tolist() == acc.count.tolist() == [1, 2, 0, 0]  # every entry in one bin


def test_infinite_and_nan_activations_fall_in_the_end_bins():
    from saekit.features.accumulate import HIST_BINS, _hist_cells

    cells = _hist_cells(torch.tensor([math.inf, -math.inf, math.nan, 0.0, 0.5]), torch.zeros(5, dtype=torch.int64))
    assert cells.tolist()[:4] == [HIST_BINS - 1, 0, 0, 0] and 0 < cells[4] < HIST_BINS - 1


def test_windows_read_off_a_given_dense_code_hold_no_negative_zero():
    """A JumpReLU code is ``pre * (pre > threshold)``: -0.0 wherever pre < 0. The windows read off that matrix
    store 0.0, as they do off the listed codes."""
    sae = sk.SAE.from_config(sk.SAEConfig(arch="jumprelu", d_in=D_IN, d_sae=D_SAE))
    data = fixture(seed=6)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(1)))
        assert bool(torch.signbit(sae.encode(data[1][:50])).any())  # the code has its -0.0s
    acc = run(sae, *data[1:], block=256, feed=500)
    for buffer in (acc.top, acc.sample):
        window = buffer.window_values.float()
        assert not bool((torch.signbit(window) & (window == 0)).any())


def brute_cooccurrence(sae, x, n_rows, n):
    """Per latent the ``n`` latents that fired with it most often on the first ``n_rows`` rows (ties by id)."""
    with torch.no_grad():
        fired = (sae.encode(x[:n_rows]) > 0).long().numpy()
    together = fired.T @ fired
    np.fill_diagonal(together, 0)
    out = {}
    for j in range(D_SAE):
        order = sorted((i for i in range(D_SAE) if together[j, i]), key=lambda i: (-together[j, i], i))[:n]
        out[j] = [(i, together[j, i] / max(fired[:, j].sum(), 1)) for i in order]
    return out


@pytest.mark.parametrize("counting", ["product", "pair matrix", "pair list"])
def test_cooccurrence_is_counted_on_the_rows_that_fit_the_pair_budget(monkeypatch, counting):
    """A dense code (about half the latents on every row, as a ReLU SAE has early on) makes ~L0**2 pairs a
    row: the sample stops at the last row that fits the pair budget, whatever the block size or a resume,
    and the pairs are counted to the brute-force counts: by a product of the 0/1 codes, or listed in chunks
    (summed where a pair spans chunks) into a matrix or a sorted list."""
    import saekit.features.accumulate as accumulate

    data = fixture(seed=6)
    sae = data[0]
    with torch.no_grad():
        sae.b_enc.zero_()  # half the latents fire on a random row
    per_row = (sae.encode(data[1]) > 0).sum(1)
    pairs = torch.cumsum(per_row * (per_row - 1), 0)
    budget = int(pairs[700]) + 1  # row 700 fits, row 701 does not
    monkeypatch.setattr(accumulate, "COOCCURRENCE_PAIRS", budget)
    real_pairs = accumulate._pairs
    monkeypatch.setattr(accumulate, "_pairs", lambda rows, latents: real_pairs(rows, latents, chunk=20_000))
    monkeypatch.setattr(accumulate, "PRODUCT_PER_PAIR", 10**9 if counting == "product" else 0)
    if counting == "pair list":
        monkeypatch.setattr(accumulate, "COOCCURRENCE_MATRIX", 0)
    results = [run(*data, block=block, feed=feed, reservoir=4) for block, feed in ((64, 1000), (1000, 33))]
    state = run(*data, block=128, feed=90, reservoir=4, stop_at=300)
    results.append(run(*data, block=128, feed=90, reservoir=4, state=state))
    truth = brute_cooccurrence(sae, data[1], 701, 4)
    for acc in results:
        assert acc.sampled_pairs == int(pairs[700]) and acc.sample_full
        ids, share = acc.cooccurrence(4)
        for j in range(D_SAE):
            got = [(int(i), float(s)) for i, s in zip(ids[j], share[j]) if i >= 0]
            assert [i for i, _ in got] == [i for i, _ in truth[j]], j
            np.testing.assert_allclose([s for _, s in got], [s for _, s in truth[j]], rtol=1e-6)


def test_bins_of_a_latent_that_fired_more_than_the_reservoir_holds_span_all_its_activations():
    """The quantile bins agree with the top contexts: past the reservoir's size the edges come from the
    histogram of every activation (the first and last the exact minimum and maximum, the others within one
    histogram bin of numpy's quantile), and each sample shown lies in its bin."""
    from saekit.features.tables import bin_edges, quantile_samples

    data = fixture(seed=4)
    acc = run(*data, block=300, feed=77, reservoir=30)
    truth = brute(*data, top_k=1)
    edges = bin_edges(acc, 10).numpy()
    ratio = 10 ** (1 / 8)
    beyond = 0
    for j in range(D_SAE):
        values = truth[j]["all"].astype(np.float64)
        if len(values) <= 30:
            continue
        beyond += 1
        assert edges[j][0] == np.float32(values.min()) and edges[j][-1] == np.float32(values.max())
        assert np.all(np.diff(edges[j]) >= 0)
        expected = np.quantile(values, np.linspace(0, 1, 11))
        assert np.all(edges[j] <= expected * ratio * (1 + 1e-6)) and np.all(edges[j] >= expected / ratio / (1 + 1e-6))
    assert beyond > D_SAE // 2
    latents, bins, slots = quantile_samples(acc, torch.from_numpy(edges), 3)
    values = acc.sample.values[latents, slots].double().numpy()
    assert len(values) and np.all(values >= edges[latents.numpy(), bins.numpy()] - 1e-6)
    assert np.all(values <= edges[latents.numpy(), bins.numpy() + 1] + 1e-6)


def test_bins_past_the_reservoir_follow_numpys_rule_across_gaps():
    """Activations with gaps (0.1, 0.5, 3, 1e5): each edge is numpy's interpolation between two order statistics,
    each placed within its histogram bin, so the 0.75 edge is near 25,000 (not 3.16, the top of a bin)."""
    from types import SimpleNamespace

    from saekit.features.accumulate import HIST_BINS, HIST_LOG10_MIN, HIST_PER_DECADE
    from saekit.features.tables import bin_edges

    values = torch.tensor([0.1, 0.5, 3.0, 1e5])
    bins = ((torch.log10(values) - HIST_LOG10_MIN) * HIST_PER_DECADE).floor().long() + 1
    hist = torch.zeros(HIST_BINS, dtype=torch.int64).index_add_(0, bins.clamp(0, HIST_BINS - 1), torch.ones(4, dtype=torch.int64))[None]
    sample = SimpleNamespace(values=values[None, :3], rows=torch.zeros((1, 3), dtype=torch.int64))  # holds 3 of 4
    acc = SimpleNamespace(sample=sample, count=torch.tensor([4]), hist=hist, min=values[:1], max=values[3:])
    edges = bin_edges(acc, 4)[0].numpy()
    expected = np.quantile(values.double().numpy(), np.linspace(0, 1, 5))
    assert edges[0] == expected[0] and edges[-1] == expected[-1]
    ratio = 10 ** (1 / 8)
    for got, want, (lo, hi) in zip(edges[1:-1], expected[1:-1], [(0.1, 0.5), (0.5, 3.0), (3.0, 1e5)]):
        assert lo / ratio <= got <= hi * ratio and abs(got - want) <= 0.5 * (hi - lo), (got, want)
    assert 2e4 < edges[3] < 3e4


def test_a_buffer_of_more_than_two_to_the_nineteen_latents_keeps_each_latents_own_entries():
    """(latent << ORDER_BITS) | order overflows int64 past 2**18 latents (latent 2**19 had latent 0's key): the
    merge then sorts in two passes."""
    from saekit.features.accumulate import Buffer

    d_sae = 2**19 + 2
    buffer = Buffer(d_sae, 1, 1, largest=True, device="cpu")
    latents = torch.tensor([2**19, 0, 2**19, 2**19 + 1])  # latent 0's entry ranks between latent 2**19's two
    keys = torch.tensor([9, 8, 7, 6])

    def windows(index):
        n = len(index)
        return keys[index].float(), index, torch.zeros((n, 1)), torch.zeros((n, 1), dtype=torch.int64)

    buffer.merge(latents, keys, (1 << 40) - keys, windows)
    assert buffer.keys[0, 0] == 8 and buffer.keys[2**19, 0] == 9 and buffer.keys[2**19 + 1, 0] == 6
