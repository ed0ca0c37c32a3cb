"""Zarr sharding versus one object per chunk, for activation stores on object storage; prints JSON.

    python benchmarks/sharding.py [--rows 131072] [--d-model 512] [--chunk-rows 1024] [--shard-chunks 16]

Extraction across ranks needs each rank to write its rows without touching another rank's objects. Two layouts
were candidates (issue 17): saekit's pre-sized arrays with one object per chunk (each rank owns whole chunks), or
Zarr v3 sharding (many chunks in one object). For each layout, on local disk and on a loopback S3 server (moto's
server mode), in one run, this measures:

- the objects a store of ``--rows`` x ``--d-model`` bfloat16 rows takes and the write throughput (MB/s of raw
  data), one chunk-row block written at a time as extraction does;
- reading one chunk's rows at a random place (what a training read does) in ms;
- two processes writing alternate chunks of the same rows at once (as two ranks with chunk-aligned ranges that
  share a shard would): how many of the chunks they wrote read back as written. A sharded write is a
  read-modify-write of the whole shard, so ranks sharing a shard lose each other's chunks.

The chunk size is the same in both layouts (``--chunk-rows``); a shard holds ``--shard-chunks`` chunks.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _opened(location: str):
    from saekit._zarr import open_group

    return open_group(location, "r+")["acts"]


def _array(location: str, args, sharded: bool):
    from zarr.codecs import ZstdCodec

    from saekit._zarr import open_group

    group = open_group(location, "w")
    chunk = (args.chunk_rows, args.d_model)
    layout = {"shards": (args.chunk_rows * args.shard_chunks, args.d_model), "chunks": chunk} if sharded else {"chunks": chunk}
    return group.create_array("acts", shape=(args.rows, args.d_model), dtype="uint16", compressors=[ZstdCodec(level=1)],
                              config={"write_empty_chunks": True}, **layout)


def _objects(location: str) -> int:
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    return len(fs.find(root.rstrip("/") + "/acts/c"))


def _write_alternate(location: str, args, parity: int, data: np.ndarray) -> None:
    """One 'rank': every other chunk of the first shard's rows, starting at ``parity``."""
    array = _opened(location)  # its stored metadata says whether it is sharded
    rows = args.chunk_rows
    for c in range(parity, args.shard_chunks, 2):
        array[c * rows:(c + 1) * rows] = data[c * rows:(c + 1) * rows]


def measure(location: str, args, sharded: bool, data: np.ndarray) -> dict:
    array = _array(location, args, sharded)
    start = time.perf_counter()
    for lo in range(0, args.rows, args.chunk_rows):
        array[lo:lo + args.chunk_rows] = data[lo:lo + args.chunk_rows]
    write = time.perf_counter() - start
    rng = np.random.default_rng(0)
    reads = []
    for c in rng.integers(0, args.rows // args.chunk_rows, 20):
        t = time.perf_counter()
        got = array[int(c) * args.chunk_rows:(int(c) + 1) * args.chunk_rows]
        reads.append(time.perf_counter() - t)
        assert np.array_equal(got, data[int(c) * args.chunk_rows:(int(c) + 1) * args.chunk_rows])
    # two writers at once on the first shard's rows (or the same chunks unsharded), fresh data
    fresh = (data[:args.chunk_rows * args.shard_chunks] + 1).astype(np.uint16)
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_write_alternate, args=(location, args, parity, fresh)) for parity in (0, 1)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    back = _opened(location)[:len(fresh)]
    kept = sum(np.array_equal(back[c * args.chunk_rows:(c + 1) * args.chunk_rows],
                              fresh[c * args.chunk_rows:(c + 1) * args.chunk_rows]) for c in range(args.shard_chunks))
    return {"objects": _objects(location), "write_MBps": round(data.nbytes / write / 2**20, 1),
            "read_chunk_ms_p50": round(float(np.median(reads)) * 1000, 2),
            "two_writers_chunks_kept": f"{kept}/{args.shard_chunks}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=1024)
    parser.add_argument("--shard-chunks", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((args.rows, args.d_model), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import s3_server  # moto's server on loopback, reached through the standard AWS environment

    server, previous = s3_server.start()
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)  # nor a line for a writer process hanging up
    s3_server.make_bucket("bench")
    out = {"rows": args.rows, "d_model": args.d_model, "dtype": "bfloat16 (as uint16)",
           "chunk_MiB": round(args.chunk_rows * args.d_model * 2 / 2**20, 2), "shard_chunks": args.shard_chunks}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for sharded in (False, True):
                name = "sharded" if sharded else "chunk_per_object"
                out[f"disk_{name}"] = measure(os.path.join(folder, f"{name}.zarr"), args, sharded, data)
                out[f"s3_{name}"] = measure(f"s3://bench/{name}.zarr", args, sharded, data)
    finally:
        s3_server.stop(server, previous)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
