"""Whole chunks written straight to their files (DirectChunks) are the files Zarr writes, byte for byte, and read
back through Zarr as the rows given; what DirectChunks does not write as Zarr would is left to Zarr."""


import numpy as np
import pytest
import zarr

from saekit._rows import RowAppender
from saekit._zarr import DirectChunks, create_checked_array
from saekit.activations.writer import compressors, create_store

@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_direct_chunks_are_the_files_zarr_writes(tmp_path, compression):
    rows = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32).view(np.uint32) >> 16
    rows = rows.astype(np.uint16)
    stores = {}
    for threads in (1, 2):  # one thread: Zarr writes everything; two: whole chunks go direct
        location = tmp_path / f"{compression}-{threads}"
        group = create_store(str(location), ["a"], 24, "bfloat16", 24 * 2 * 64, compression=compression)
        appender = RowAppender(group, ["a", "token_ids"], 64, 0, 1000, threads=threads)
        assert (appender._direct.get("a") is not None) == (threads > 1)
        for lo in range(0, 1000, 150):  # batches that do not line up with the chunks
            appender.add({"a": rows[lo:lo + 150], "token_ids": np.arange(lo, min(lo + 150, 1000), dtype=np.int32)})
        appender.flush()
        appender.trim()
        appender.close()
        stores[threads] = location
        back = zarr.open_group(str(location), mode="r")
        np.testing.assert_array_equal(back["a"][:], rows)
        np.testing.assert_array_equal(back["token_ids"][:], np.arange(1000))
    for name in ("a", "token_ids"):
        zarr_files = sorted((stores[1] / name / "c").rglob("*"))
        direct_files = sorted((stores[2] / name / "c").rglob("*"))
        assert [p.relative_to(stores[1]) for p in zarr_files] == [p.relative_to(stores[2]) for p in direct_files]
        for a, b in zip(zarr_files, direct_files):
            assert a.is_dir() or a.read_bytes() == b.read_bytes(), a

def test_what_direct_chunks_would_not_write_as_zarr_is_left_to_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    columns = create_checked_array(group, "columns", shape=(0, 8), chunks=(4, 4), dtype="uint16")
    blosc = create_checked_array(group, "blosc", shape=(0, 8), chunks=(4, 8), dtype="uint16",
                                 compressors=compressors("lz4"))
    assert DirectChunks.of(columns) is None and DirectChunks.of(blosc) is None
    remote = zarr.open_group("memory://direct-test", mode="w")
    assert DirectChunks.of(create_checked_array(remote, "a", shape=(0, 8), chunks=(4, 8), dtype="uint16")) is None
    direct = DirectChunks.of(create_checked_array(group, "plain", shape=(8, 8), chunks=(4, 8), dtype="uint16"))
    with pytest.raises(ValueError, match="whole chunk"):
        direct.write(0, np.zeros((3, 8), np.uint16))
