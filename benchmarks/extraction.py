"""Extraction benchmark; prints JSON.

    python benchmarks/extraction.py [--smollm2] [--tokens 200000] [--hook blocks.6.resid_post] [--nproc 2]

In one run, on the same batches: the wall time of ``sk.extract`` (in-process: forward passes, row
selection, bfloat16 conversion, statistics, the writer thread's compression and I/O, commits) over the
wall time of the bare forward passes (``run_with_cache`` at the same hook point, which stops after that
block), alternating, best of ``--repeats``; tokens/s and MB/s written; the peak RSS of extracting N and
10N tokens in fresh processes; and the chunk-size x codec table measured on the extracted activations.
The model is a tiny random Llama (d_model 256) or, with ``--smollm2``, SmolLM2-135M (d_model 576).
``--nproc N`` adds the same extraction under torchrun with N ranks (its wall time from submit to result, its
ratio to one process, and whether its rows equal one process's bitwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _model_dir(folder: Path, smollm2: bool) -> tuple[str, str | None]:
    if smollm2:
        from saekit.models.fetch import SMOLLM2, fetch_model

        return str(fetch_model(workspace=folder / "fetch", progress=False)), SMOLLM2["gguf_file"]
    from saekit.models.tiny import make_tiny_model

    path = folder / "tiny-llama-256"
    if not path.exists():
        make_tiny_model(path, "llama", d_model=256, n_layers=8, n_heads=8)
    return str(path), None


def _corpus(folder: Path, copies: int) -> Path:
    from saekit.models.tiny import stdlib_docstrings

    path = folder / "docs.jsonl"
    if not path.exists():
        docs = stdlib_docstrings()
        path.write_text("".join(json.dumps({"text": f"{c} {d}"}) + "\n" for c in range(copies) for d in docs))
    return path


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(model_dir: str, gguf: str | None, corpus: Path, workspace: Path, n_tokens: int, hook: str,
            repeats: int) -> dict:
    import torch

    import saekit as sk
    sk.set_workspace(workspace)
    lm = sk.load_model(model_dir, gguf_file=gguf, device="cpu")
    store = sk.tokenize(sk.load_corpus(corpus), lm, context_length=128, background=False, progress=False).result()
    batch_size = max(1, 2048 // store.context_length)
    n_seq = min(store.n_sequences, -(-n_tokens // (store.context_length - 8)) + batch_size)

    def bare() -> float:
        reader = store.reader()  # what extraction reads sequences with
        t = time.perf_counter()
        done = 0
        for lo in range(0, n_seq, batch_size):
            rows = reader.rows(lo, min(lo + batch_size, n_seq))
            lm.run_with_cache(rows.input_ids, [hook], attention_mask=rows.mask.astype(np.int64))
            done += int(rows.mask.sum())
            if done >= n_tokens:
                break
        return time.perf_counter() - t

    def extraction() -> tuple[float, object]:
        t = time.perf_counter()
        acts = sk.extract(lm, store, hook, max_tokens=n_tokens, batch_size=batch_size, force=True,
                          background=False, progress=False).result()
        return time.perf_counter() - t, acts

    torch.set_num_threads(torch.get_num_threads())
    bare()  # warm-up
    bare_times, extract_times, acts = [], [], None
    for _ in range(repeats):
        bare_times.append(bare())
        seconds, acts = extraction()
        extract_times.append(seconds)
    written = _du(Path(acts.location))
    best = min(extract_times)
    return {"model": lm.name, "d_model": lm.d_model, "hook_point": hook, "tokens": acts.n_tokens,
            "batch_size": batch_size, "bare_forward_s": [round(t, 3) for t in bare_times],
            "extract_s": [round(t, 3) for t in extract_times],
            "ratio_extract_over_bare": round(best / min(bare_times), 3),
            "tokens_per_s": round(acts.n_tokens / best), "mb_per_s_written": round(written / best / 1e6, 2),
            "bytes_on_disk": written, "compression_ratio": round(acts.n_tokens * lm.d_model * 2 / written, 3),
            "store": acts.location, "token_store": str(store.path), "model_dir": model_dir, "gguf": gguf}


def codec_table(store_location: str, hook: str, rows: int = 65536) -> list[dict]:
    import zarr

    from saekit.activations.store import open_group
    from saekit.activations.writer import compressors

    data = np.asarray(open_group(store_location, "r")[hook][:rows])
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("none", "lz4", "zstd"):
            for chunk_mib in (1, 4, 16):
                chunk_rows = max(1, chunk_mib * 2**20 // (data.shape[1] * data.itemsize))
                path = Path(tmp) / f"{codec}-{chunk_mib}.zarr"
                array = zarr.open_group(str(path), mode="w").create_array(
                    "a", shape=data.shape, chunks=(chunk_rows, data.shape[1]), dtype=data.dtype,
                    compressors=compressors(codec))
                t = time.perf_counter()
                for lo in range(0, len(data), chunk_rows):
                    array[lo:lo + chunk_rows] = data[lo:lo + chunk_rows]
                write = time.perf_counter() - t
                t = time.perf_counter()
                np.asarray(array[:])
                read = time.perf_counter() - t
                table.append({"codec": codec, "chunk_mib": chunk_mib, "write_mib_s": round(data.nbytes / write / 2**20),
                              "read_mib_s": round(data.nbytes / read / 2**20),
                              "ratio": round(data.nbytes / _du(path), 3)})
    return table


def peak_rss(model_dir: str, gguf: str | None, token_store: str, workspace: Path, n_tokens: int, hook: str) -> dict:
    """In a fresh process that only loads the model and extracts (the token store is made beforehand)."""
    import saekit as sk

    sk.set_workspace(workspace)
    lm = sk.load_model(model_dir, gguf_file=gguf, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acts = sk.extract(lm, sk.TokenStore.open(token_store), hook, max_tokens=n_tokens, force=True, background=False,
                      progress=False).result()
    return {"tokens": acts.n_tokens, "rss_after_load_mib": round(before / 1024, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def ranked(single: dict, nproc: int, workspace: Path, n_tokens: int, hook: str) -> dict:
    """The same extraction under torchrun with ``nproc`` ranks (a background job, timed from submit to result,
    so it includes starting the ranks and loading the model in each), and whether its rows equal one process's."""
    import saekit as sk

    store = sk.TokenStore(single["token_store"], workspace)
    lm = sk.load_model(single["model_dir"], gguf_file=single["gguf"], device="cpu")
    t = time.perf_counter()
    acts = sk.extract(lm, store, hook, max_tokens=n_tokens, batch_size=single["batch_size"], force=True,
                      launcher="torchrun", nproc=nproc, progress=False).result(timeout=3600)
    seconds = time.perf_counter() - t
    one = sk.ActivationStore(single["store"], workspace)
    equal = all(np.array_equal(np.asarray(one[n][:]), np.asarray(acts[n][:])) for n in (hook, "token_ids", "positions"))
    return {"nproc": nproc, "seconds": round(seconds, 3), "tokens_per_s": round(acts.n_tokens / seconds),
            "ratio_over_one_process": round(min(single["extract_s"]) / seconds, 3), "rows_bitwise_equal": equal}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per measurement (default 200k tiny, 60k SmolLM2)")
    parser.add_argument("--hook", default=None)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=1,
                        help="also extract with launcher='torchrun' and this many ranks, against one process")
    parser.add_argument("--rss", nargs=5, help=argparse.SUPPRESS)  # internal: one peak-RSS measurement
    opts = parser.parse_args()
    if opts.rss:
        model, gguf, token_store, ws, n = opts.rss
        print(json.dumps(peak_rss(model, None if gguf == "-" else gguf, token_store, Path(ws), int(n),
                                  opts.hook or "blocks.6.resid_post")))
        return
    hook = opts.hook or "blocks.6.resid_post"
    n_tokens = opts.tokens or (60_000 if opts.smollm2 else 200_000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir, gguf = _model_dir(folder, opts.smollm2)
        corpus = _corpus(folder, opts.copies)
        result = measure(model_dir, gguf, corpus, folder / "ws", n_tokens, hook, opts.repeats)
        if opts.nproc > 1:
            result["ranks"] = ranked(result, opts.nproc, folder / "ws", n_tokens, hook)
        result["chunk_codec_table"] = codec_table(result.pop("store"), hook)
        token_store = result.pop("token_store")
        result.pop("model_dir"), result.pop("gguf")
        rss = {}
        for n in (n_tokens // 10, n_tokens):
            out = subprocess.run([sys.executable, __file__, "--hook", hook, "--rss", model_dir, gguf or "-",
                                  token_store, str(folder / f"rss{n}"), str(n)], capture_output=True, text=True, check=True)
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
        small, large = rss[n_tokens // 10], rss[n_tokens]
        result["peak_rss"] = {"runs": list(rss.values()),
                              "growth_10x_tokens": round((large["peak_rss_mib"] - small["peak_rss_mib"]) / small["peak_rss_mib"], 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
