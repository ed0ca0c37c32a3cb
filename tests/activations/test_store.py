"""ActivationStore: from_array, reading, and the seeded, restartable batch stream."""

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError


def coded_rows(n, d=8, dtype=torch.float32):
    """Row i holds i // 256 and i % 256 in its first columns (exact even in bfloat16), so a batch tells
    which rows it holds."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n) // 256
    x[:, 1] = torch.arange(n) % 256
    return x.to(dtype)


def ids(batch):
    return (batch[:, 0].float() * 256 + batch[:, 1].float()).round().long().tolist()


def test_from_array_round_trip_and_identity(ws):
    x = torch.randn(1000, 16)
    store = sk.ActivationStore.from_array(x, "custom", chunk_bytes=4096)
    assert store.hook_points == ["custom"] and store.n_tokens == 1000 and store.d_model == 16
    torch.testing.assert_close(store.read("custom"), x)
    assert store.stats("custom")["count"] == 1000
    np.testing.assert_allclose(store.stats("custom")["mean"], x.double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    again = sk.ActivationStore.from_array(x.numpy(), "custom")
    assert again.id == store.id  # named by content: the same data is the same store
    bf16 = sk.ActivationStore.from_array(x.to(torch.bfloat16).reshape(10, 100, 16), "acts")
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16.read("acts"), x.to(torch.bfloat16))
    assert [r["status"] for r in sk.activation_stores().rows] == ["array"] * 2
    with pytest.raises(ConfigError, match="shape"):
        sk.ActivationStore.from_array(torch.zeros(5), "flat")
    with pytest.raises(KeyError, match="'missing' is not an array"):
        store["missing"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batches_cover_each_row_once_per_epoch_in_a_seeded_order(ws, dtype):
    store = sk.ActivationStore.from_array(coded_rows(1000, dtype=dtype), "h", chunk_bytes=64 * 8 * 4)
    batches = list(store.batches("h", 64, seed=3, buffer_bytes=4 * 64 * 8 * 4))
    assert [len(b) for b in batches] == [64] * 15 + [40]
    assert all(b.dtype == dtype for b in batches)
    seen = [i for b in batches for i in ids(b)]
    assert sorted(seen) == list(range(1000)) and seen != list(range(1000))
    assert [ids(b) for b in store.batches("h", 64, seed=3, buffer_bytes=4 * 64 * 8 * 4)] == [ids(b) for b in batches]
    assert [ids(b) for b in store.batches("h", 64, seed=4, buffer_bytes=4 * 64 * 8 * 4)] != [ids(b) for b in batches]
    ordered = [i for b in store.batches("h", 100, shuffle=False) for i in ids(b)]
    assert ordered == list(range(1000))


def test_batches_restart_at_any_step_and_span_epochs(ws):
    store = sk.ActivationStore.from_array(coded_rows(700), "h", chunk_bytes=50 * 8 * 4)
    kw = dict(seed=7, buffer_bytes=3 * 50 * 8 * 4)
    full = [ids(b) for b in store.batches("h", 64, epochs=3, **kw)]
    assert sum(map(len, full)) == 2100 and all(len(b) == 64 for b in full[:-1])
    for step in (0, 1, 5, 10, 11, 20, len(full) - 1):
        assert [ids(b) for b in store.batches("h", 64, epochs=3, start_step=step, **kw)] == full[step:]
    epoch_rows = [i for b in full for i in b]
    assert sorted(epoch_rows[:700]) == sorted(epoch_rows[700:1400]) == list(range(700))
    assert epoch_rows[:700] != epoch_rows[700:1400]  # each epoch has its own order
    forever = store.batches("h", 64, epochs=None, **kw)
    later = store.batches("h", 64, epochs=None, start_step=32, **kw)
    assert [ids(next(forever)) for _ in range(40)] == full[:32] + [ids(next(later)) for _ in range(8)]
    assert list(store.batches("h", 64, epochs=1, start_step=100, **kw)) == []


def test_batches_bad_input(ws):
    store = sk.ActivationStore.from_array(coded_rows(10), "h")
    with pytest.raises(ConfigError, match="'other' is not in activation store"):
        next(store.batches("other", 4))
    with pytest.raises(ConfigError, match="batch_size=0"):
        next(store.batches("h", 0))


@pytest.mark.heavy
def test_preloaded_batches_are_the_streamed_batches(ws):
    """preload=True (data read once, batches gathered in memory) gives the same stream, from any step."""
    for dtype in (torch.float32, torch.bfloat16):
        store = sk.ActivationStore.from_array(torch.randn(10_000, 24).to(dtype), "p", chunk_bytes=2**12)
        for shuffle in (True, False):
            for start in (0, 7):
                kw = dict(shuffle=shuffle, seed=3, start_step=start, epochs=2, rows=9000, buffer_bytes=2**14)
                streamed = list(store.batches("p", 300, **kw))
                preloaded = list(store.batches("p", 300, preload=True, **kw))
                assert len(streamed) == len(preloaded) == 60 - start
                assert all(torch.equal(a, b) for a, b in zip(streamed, preloaded))
