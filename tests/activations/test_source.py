"""The activation-source seam (saekit.activations.source): a store and a model over the same tokens give the same
rows with the same provenance, in order and held out; a source described at submit is rebuilt from its reference;
bad sources are refused with the fix."""

import numpy as np
import pytest
import torch

import saekit as sk
from saekit.activations.store import Prefetcher
from saekit.activations.source import (
    ModelSource, StoreSource, describe_source, forward_rows, open_source, sae_hook, split_pair,
)
from saekit.errors import ConfigError

HOOK, TARGET = "blocks.1.resid_post", "blocks.2.mlp_out"


@pytest.fixture
def pair(ws, docs_file, tiny_lm):
    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=64, max_documents=120,
                         background=False, progress=False).result()
    store = sk.extract(tiny_lm, tokens, [HOOK, TARGET], dtype="float32", background=False, progress=False).result()
    return tokens, store


def test_a_store_and_the_model_give_the_same_rows_in_order_with_their_provenance(ws, pair, tiny_lm):
    tokens, store = pair
    n = store.n_tokens - 7  # a limit inside a forward pass
    from_store = list(StoreSource(store, HOOK).blocks(100, None, n))
    from_model = list(ModelSource(tiny_lm, tokens, HOOK, sequences_per_forward=3).blocks(100, None, n))
    for name in ("x", "token_ids", "doc_ids", "positions"):
        a = torch.cat([getattr(r, name) for r in from_store])
        b = torch.cat([getattr(r, name) for r in from_model])
        assert len(a) == len(b) == n
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a resumed pass starts where a block said it would
    position = from_model[2].position
    again = next(ModelSource(tiny_lm, tokens, HOOK, sequences_per_forward=3).blocks(100, position, n))
    torch.testing.assert_close(again.x, from_model[3].x)
    assert again.position == from_model[3].position


def test_a_store_read_ahead_on_a_thread_gives_the_same_blocks_and_stops_when_the_reader_does(ws, pair, monkeypatch):
    _, store = pair
    source = StoreSource(store, HOOK)
    inline = list(source.blocks(100, None, store.n_tokens))
    ahead = list(source.blocks(100, None, store.n_tokens, read_ahead=True))
    assert len(ahead) == len(inline) > 3
    for a, b in zip(ahead, inline):
        assert a.position == b.position
        for name in ("x", "token_ids", "doc_ids", "positions"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    blocks = source.blocks(100, inline[0].position, store.n_tokens, read_ahead=True)  # resumed, then left early
    assert next(blocks).position == inline[1].position
    blocks.close()  # the reading thread is told to stop; nothing hangs
    ahead = Prefetcher(iter([1, 2, 3]), depth=1)  # a reader gone with the queue full: the thread still ends
    assert next(ahead) == 1
    ahead.close()
    ahead._thread.join(timeout=5)
    assert not ahead._thread.is_alive()

    def unreadable(*args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(store, "read", unreadable)
    with pytest.raises(OSError, match="the disk went away"):  # a read that fails on the thread reaches the caller
        next(StoreSource(store, HOOK).blocks(100, None, store.n_tokens, read_ahead=True))


def test_held_out_rows_agree_and_a_paired_source_splits_into_input_and_target(ws, pair, tiny_lm):
    tokens, store = pair
    model = ModelSource(tiny_lm, tokens, HOOK, eval_tokens=10**9, target_hook=TARGET)  # a tenth of the sequences
    start, stop = model.eval_sequence_range()
    held = torch.cat(list(model.eval_batches(256)))
    kept = tokens.take(np.arange(start, stop)).kept(tokens.excluded_bos(False)).sum()
    assert held.shape == (kept, 2 * store.d_model)
    x, y = split_pair(held, model.d_in, True)
    rows_before = store.n_tokens - int(kept)  # the same sequences, read from the store's tail
    torch.testing.assert_close(x, store.read(HOOK, rows_before).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, store.read(TARGET, rows_before).float(), rtol=1e-5, atol=1e-5)
    assert split_pair(held, model.d_in, False) is held
    stored = StoreSource(store, HOOK, eval_tokens=50, target_hook=TARGET)
    assert stored.eval_rows == 50 and torch.cat(list(stored.eval_batches(16))).shape == (50, 2 * store.d_model)


def test_forward_rows_keeps_a_range_of_the_real_tokens(ws, pair, tiny_lm):
    tokens, _ = pair
    batch = tokens.rows(0, 4)
    bos = tokens.excluded_bos(False)
    every = forward_rows(tiny_lm, batch, [HOOK, TARGET], bos)
    part = forward_rows(tiny_lm, batch, [HOOK], bos, 5, 40)
    assert len(every[HOOK]) == batch.kept(bos).sum() and set(every) == {HOOK, TARGET}
    torch.testing.assert_close(part[HOOK], every[HOOK][5:40])


def test_a_source_described_at_submit_is_rebuilt_from_its_reference(ws, pair, tiny_lm):
    tokens, store = pair
    described = describe_source(store.id, ws, default_hook=HOOK, target_hook=TARGET)
    assert described.hook_point == HOOK and described.d_in == store.d_model and described.rows() == store.n_tokens
    source, lm = open_source(described.ref, ws, HOOK, eval_tokens=100)
    assert isinstance(source, StoreSource) and lm is None and source.eval_rows == 100
    described = describe_source((tiny_lm, tokens), ws, HOOK)
    assert described.ref == {"model": tiny_lm.ref, "tokens": tokens.reference()}
    assert described.rows() == tokens.tokens_available(False) >= described.training_rows(1000)
    assert described.training_rows(10**9) < described.training_rows(0)  # at most a tenth held out, as the source does
    assert ModelSource(tiny_lm, tokens, HOOK, eval_tokens=10**9).eval_sequences == tokens.n_sequences // 10
    source, lm = open_source(described.ref, ws, HOOK, lm=tiny_lm)
    assert isinstance(source, ModelSource) and lm is tiny_lm


def test_bad_sources_are_refused_with_the_fix(ws, pair, tiny_lm):
    tokens, store = pair
    with pytest.raises(ConfigError, match="which hook point of activation store"):
        describe_source(store, ws)  # two hook points, none chosen
    with pytest.raises(ConfigError, match="holds no blocks.0.resid_post.*hook_point="):
        describe_source(store, ws, default_hook="blocks.0.resid_post")
    with pytest.raises(ConfigError, match="'blocks.0.resid_post' is not in activation store.*sk.extract"):
        describe_source(store, ws, "blocks.0.resid_post")
    with pytest.raises(ConfigError, match="target_hook='blocks.0.mlp_out' is not in"):
        describe_source(store, ws, HOOK, target_hook="blocks.0.mlp_out")
    with pytest.raises(ConfigError, match="which hook point does the SAE read"):
        describe_source((tiny_lm, tokens), ws)
    with pytest.raises(ConfigError, match="got int"):
        describe_source(3, ws)


def test_saelens_hook_names_are_read_once():
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=8, d_sae=16))
    assert sae_hook(sae) is None
    sae.metadata.update(hook_point="blocks.6.hook_mlp_in", target_hook="blocks.6.hook_mlp_out")
    assert sae_hook(sae) == "blocks.6.mlp_in" and sae_hook(sae, "target_hook") == "blocks.6.mlp_out"
    sae.metadata.update(hook_point="blocks.6.ln2.hook_normalized", target_hook="my_hook_a")  # a user's own name
    assert sae_hook(sae) == "blocks.6.mlp_in" and sae_hook(sae, "target_hook") == "my_hook_a"
