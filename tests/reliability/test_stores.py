"""Stores are never silently wrong: a missing chunk, a cut shape and a damaged chunk are each a
StorageError naming the store, the array and the chunk (they used to read as zeros or raise raw errors)."""

import os
from pathlib import Path

import pytest
import torch
from data_for_tests import dictionary_data, quick

import saekit as sk
from saekit.errors import StorageError


def _store(ws):
    x, _ = dictionary_data(20_000, 16, 64, 3, seed=1)
    return sk.ActivationStore.from_array(x, "toy", chunk_bytes=2**16)


def _chunk(location, array, i):
    path = Path(location) / array / "c" / str(i)
    return path / "0" if path.is_dir() else path


def test_a_missing_chunk_of_an_activation_store_is_named(ws):
    store = _store(ws)
    os.remove(_chunk(store.location, "toy", 3))
    with pytest.raises(StorageError, match=r"chunk 'c/3/0' of array 'toy'.*missing.*read as zeros"):
        sk.ActivationStore(store.location)
    with pytest.raises(StorageError, match="missing"):  # training on it used to complete with fvu 0, l0 0
        sk.train(store.location, "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), background=False)


def test_a_cut_shape_is_refused(ws):
    store = _store(ws)
    import zarr

    array = zarr.open_group(store.location, mode="r+")["toy"]
    array.resize((store.n_tokens - 1000, 16))  # metadata edited: fewer rows than committed
    with pytest.raises(StorageError, match="has 19,000 rows but 20,000 are committed"):
        sk.ActivationStore(store.location)


def test_a_damaged_chunk_is_named_when_read(ws):
    store = _store(ws)
    path = _chunk(store.location, "toy", 5)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the compressed chunk
    path.write_bytes(bytes(data))
    opened = sk.ActivationStore(store.location)  # all chunks are there
    with pytest.raises(StorageError, match=r"chunk 5 \(rows .*\) of array 'toy' is damaged"):
        opened.read("toy")
    with pytest.raises(StorageError, match="chunk 5"):
        for _ in opened.batches("toy", 512, seed=0):
            pass


def test_a_token_store_with_a_missing_chunk_is_refused_before_extraction(ws, tiny_lm, docs_file):
    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=32, background=False,
                         progress=False).result()
    os.remove(_chunk(tokens.path, "input_ids", 0))
    with pytest.raises(StorageError, match=r"token store .*chunk 'c/0/0' of array 'input_ids'"):
        sk.extract(tiny_lm, tokens.id, "blocks.1.resid_post", max_tokens=1000)  # used to extract all-zero token_ids


def test_all_zero_chunks_are_written_and_checked(ws):
    x = torch.zeros(20_000, 16)  # zarr skips chunks equal to the fill value unless told to write them
    x[:10] = 1.0
    store = sk.ActivationStore.from_array(x, "zeros", chunk_bytes=2**16)
    chunks = sorted(os.listdir(Path(store.location) / "zeros" / "c"), key=int)
    assert len(chunks) == -(-20_000 // store["zeros"].chunks[0])
    assert torch.equal(sk.ActivationStore(store.location).read("zeros"), x)
