"""The activation writer without a model in front of it; prints JSON.

    python benchmarks/writer.py [--tiny] [--rows 65536] [--hook blocks.15.resid_post] [--mb 512]

On a GPU the forward pass outruns one writer thread (zstd + crc32c + Zarr I/O), so the writer is the job. This
measures what the writer can do, on real activations: SmolLM2-135M's (``--tiny``: a random tiny Llama's, whose
ratios mean nothing), extracted once in bfloat16 as ``sk.extract`` stores them.

- ``codecs``: each candidate codec on the 4 MiB chunks of those rows, one core: compress and decompress MB/s and
  the compression ratio (the crc32c every chunk carries is measured alone, ``crc32c_mb_s``);
- ``pipeline``: ``ChunkWriter`` fed as fast as a stub forward can (batches of 2048 rows taken from the rows
  above, committed every 64 batches) into a store on disk, for each store codec and 1 or all writer threads:
  MB/s end to end, and per thread.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK_BYTES = 4 * 2**20


def activations(folder: Path, tiny: bool, rows: int, hook: str) -> tuple[np.ndarray, str]:
    """``rows`` bfloat16 activations (as uint16 bits) of ``hook`` over the standard-library docstrings."""
    import saekit as sk
    from saekit.models.tiny import stdlib_docstrings

    sk.set_workspace(folder / "ws")
    if tiny:
        from saekit.models.tiny import make_tiny_model

        lm = sk.load_model(make_tiny_model(folder / "tiny", "llama", d_model=256, n_layers=8, n_heads=8), device="cpu")
        hook = "blocks.6.resid_post"
    else:
        from saekit.models.fetch import SMOLLM2, fetch_model

        lm = sk.load_model(fetch_model(progress=False), gguf_file=SMOLLM2["gguf_file"], device="cpu")
    import datasets

    corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": stdlib_docstrings() * 4}))
    toks = sk.tokenize(corpus, lm, context_length=256, background=False, progress=False).result()
    store = sk.extract(lm, toks, [hook], max_tokens=rows, background=False, progress=False).result()
    return np.asarray(store.group[hook][:]), f"{lm.name} {hook}"


def codec_table(data: np.ndarray) -> list[dict]:
    import google_crc32c
    import numcodecs

    numcodecs.blosc.set_nthreads(1)
    rows = CHUNK_BYTES // (data.shape[1] * data.itemsize)
    chunks = [np.ascontiguousarray(data[lo:lo + rows]) for lo in range(0, len(data) - rows + 1, rows)]
    size = sum(c.nbytes for c in chunks)
    candidates = {
        "none": None,
        "zstd-1": numcodecs.Zstd(level=1),
        "zstd-3": numcodecs.Zstd(level=3),
        "blosc-lz4-byteshuffle": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
        "blosc-lz4-bitshuffle": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.BITSHUFFLE),
        "blosc-zstd1-byteshuffle": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.SHUFFLE),
        "blosc-zstd1-bitshuffle": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.BITSHUFFLE),
    }
    table = []
    for name, codec in candidates.items():
        if codec is None:
            table.append({"codec": name, "ratio": 1.0, "compress_mb_s": None, "decompress_mb_s": None})
            continue
        t = time.perf_counter()
        encoded = [codec.encode(c) for c in chunks]
        compress = time.perf_counter() - t
        t = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        decompress = time.perf_counter() - t
        table.append({"codec": name, "ratio": round(size / sum(len(e) for e in encoded), 3),
                      "compress_mb_s": round(size / compress / 1e6), "decompress_mb_s": round(size / decompress / 1e6)})
    t = time.perf_counter()
    for c in chunks:
        google_crc32c.value(c.tobytes())
    return table, round(size / (time.perf_counter() - t) / 1e6)


def pipeline(data: np.ndarray, folder: Path, compression: str, threads: int, megabytes: int,
             direct: bool = True) -> dict:
    """``direct=False``: every chunk through Zarr's own write path (as before DirectChunks), for the ratio."""
    from unittest import mock

    if not direct:
        with mock.patch("saekit._rows.DirectChunks.of", lambda array: None):
            return {**pipeline(data, folder, compression, threads, megabytes), "path": "zarr"}
    from saekit.activations.stats import RunningStats, batch_stats
    from saekit.activations.writer import ChunkWriter, create_store

    location = str(folder / f"{compression}-{threads}-{direct}-{time.perf_counter_ns()}.zarr")
    group = create_store(location, ["a"], data.shape[1], "bfloat16", CHUNK_BYTES, sources=False,
                         compression=compression)
    batch = 2048
    n_batches = max(1, megabytes * 10**6 // (batch * data.shape[1] * data.itemsize))
    stats = batch_stats(np.zeros((1, data.shape[1]), np.float32))
    writer = ChunkWriter(group, location, ["a"], ["a"], 0, {"a": RunningStats(data.shape[1])}, lambda *a: None,
                         expected_rows=n_batches * batch, threads=threads)
    starts = np.arange(0, len(data) - batch + 1, batch)
    t = time.perf_counter()
    for i in range(n_batches):
        lo = starts[i % len(starts)]
        writer.put({"a": data[lo:lo + batch]}, {"a": stats})
        if (i + 1) % 64 == 0:
            writer.commit({"batches": i + 1})
    writer.close({"batches": n_batches})
    seconds = time.perf_counter() - t
    written = n_batches * batch * data.shape[1] * data.itemsize
    from saekit._zarr import DirectChunks

    direct_used = threads > 1 and DirectChunks.of(group["a"]) is not None
    return {"compression": compression, "threads": threads, "path": "direct" if direct_used else "zarr",
            "mb": round(written / 1e6), "mb_s": round(written / seconds / 1e6), "mb_s_per_thread": round(written / seconds / 1e6 / threads)}


def beside_python(data: np.ndarray, folder: Path, threads: int, megabytes: int, direct: bool) -> dict:
    """The writer (zstd) while a Python thread spins, as a model's forward pass does on a GPU (it launches kernels
    from Python): how much interpreter time the writer leaves it. ``python_loops_per_mb``: the spinning
    thread's loops per second (its share of the interpreter) beside the writer's MB/s: a writer that holds the
    interpreter lock less leaves more of either."""
    import threading

    stop, loops = threading.Event(), [0]

    def spin():
        while not stop.is_set():
            sum(range(200))
            loops[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        result = pipeline(data, folder, "zstd", threads, megabytes, direct=direct)
    finally:
        stop.set()
        spinner.join()
    result["python_loops_per_s"] = round(loops[0] * result["mb_s"] / result["mb"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a random tiny Llama instead of SmolLM2-135M")
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--hook", default="blocks.15.resid_post")
    parser.add_argument("--mb", type=int, default=512, help="megabytes each pipeline run writes")
    opts = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, what = activations(folder, opts.tiny, opts.rows, opts.hook)
        codecs, crc = codec_table(data)
        runs = []
        for c in ("none", "lz4", "zstd"):
            runs.append(pipeline(data, folder, c, 1, opts.mb))
            threads = max(2, min(16, cores))
            runs.append(pipeline(data, folder, c, threads, opts.mb, direct=False))
            runs.append(pipeline(data, folder, c, threads, opts.mb))
        beside = [beside_python(data, folder, max(2, min(16, cores)), opts.mb, direct) for direct in (False, True)]
    print(json.dumps({"activations": what, "rows": int(data.shape[0]), "d_model": int(data.shape[1]),
                      "dtype": "bfloat16", "cores": cores, "chunk_mib": CHUNK_BYTES / 2**20, "codecs": codecs,
                      "crc32c_mb_s": crc, "pipeline": runs, "beside_a_python_thread": beside}, indent=2))


if __name__ == "__main__":
    main()
