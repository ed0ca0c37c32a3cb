"""What the stores' crc32c chunk checksums cost; prints JSON.

    python benchmarks/checksum.py [--mib 256] [--repeats 3]

Writes and reads an activation-like array (bfloat16 bits as uint16, 4 MiB chunks of 576-wide rows, zstd level 1,
the stores' settings) with and without the crc32c codec saekit adds after compression, alternating, best of
``--repeats``, on /dev/shm when it exists (so the disk does not hide the codec's cost).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    width = 576
    rows_per_chunk = (4 << 20) // (2 * width)
    n = (args.mib << 20) // (2 * width) // rows_per_chunk * rows_per_chunk
    x = torch.randn(n, width).to(torch.bfloat16).view(torch.uint16).numpy()  # real-valued bits, like activations
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    times = {"plain": {"write": [], "read": []}, "crc32c": {"write": [], "read": []}}
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        for _ in range(args.repeats):
            for name in times:
                codecs = [ZstdCodec(level=1)] + ([Crc32cCodec()] if name == "crc32c" else [])
                path = Path(tmp) / f"{name}.zarr"
                array = zarr.create_array(str(path), shape=x.shape, chunks=(rows_per_chunk, width), dtype="uint16",
                                          compressors=codecs, overwrite=True)
                t = time.perf_counter()
                array[:] = x
                times[name]["write"].append(time.perf_counter() - t)
                t = time.perf_counter()
                back = zarr.open_array(str(path))[:]
                times[name]["read"].append(time.perf_counter() - t)
                assert np.array_equal(back, x)
    best = {k: {op: min(v) for op, v in d.items()} for k, d in times.items()}
    mib = x.nbytes / 2**20
    print(json.dumps({"benchmark": "checksum", "mib": round(mib), "chunk_rows": rows_per_chunk,
                      "write_mib_per_s": {k: round(mib / v["write"]) for k, v in best.items()},
                      "read_mib_per_s": {k: round(mib / v["read"]) for k, v in best.items()},
                      "write_cost": round(best["crc32c"]["write"] / best["plain"]["write"] - 1, 3),
                      "read_cost": round(best["crc32c"]["read"] / best["plain"]["read"] - 1, 3)}, indent=2))


if __name__ == "__main__":
    main()
