"""Lazy reads of dense arrays: rows, (row, position) pairs and gathers across shards, read straight
from the Zarr shard files, equal to zarr's own reading; corruption caught; other layouts via zarr."""

import pickle

import numpy as np
import pytest
import torch
import zarr

from sgdd.cache import format as fmt
from sgdd.cache.reader import CacheSplit, DirectChunks
from sgdd.cache.writer import SplitWriter
from sgdd.errors import SgddError
from tests.helpers import write_shard

N, S, H = 23, 100, 8


def rows(a, b):
    return {"id": [str(i) for i in range(a, b)], "text": ["x"] * (b - a), "input_ids": [[1]] * (b - a),
            "length": [1] * (b - a)}


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(fmt, "BLOCK_BYTES", 5 * S * H * 4)  # a few rows per Zarr shard file: many edge cases


def write(path, dtype, hidden):
    with SplitWriter(path, {}, {"hidden": ((S, H), dtype)}) as w:
        write_shard(w, rows(0, 17), {"hidden": hidden[:17]})
        write_shard(w, rows(17, N), {"hidden": hidden[17:]})
        w.finalize()
    return CacheSplit(path)


def padded_hidden():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, S, H, generator=g)
    for i, n in enumerate(torch.randint(1, S, (N,), generator=g).tolist()):
        hidden[i, n:] = 0  # padding: whole chunks of it are never written
    return hidden


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_direct_reads_equal_the_stored_values(tmp_path, small_blocks, dtype):
    hidden = padded_hidden()
    split = write(tmp_path / dtype, dtype, hidden)
    ref = hidden.to(fmt.STORED_DTYPES[dtype][1])
    lazy = split.lazy_array("hidden")
    assert all(lazy._chunks(k) is not None for k in range(2))  # the fast path is the one tested
    assert torch.equal(split.array("hidden"), ref) and torch.equal(lazy.rows(3, 20), ref[3:20])
    for i in range(N):
        assert torch.equal(lazy[i], ref[i])
        for p in (0, 63, 64, S - 1, -1):
            assert torch.equal(lazy[i, p], ref[i, p])
    r, p = torch.randint(0, N, (64,)), torch.randint(0, S, (64,))
    assert torch.equal(lazy.gather(r, p), ref[r, p])
    assert torch.equal(lazy[5, 10:70], ref[5, 10:70])  # slices go through zarr
    clone = pickle.loads(pickle.dumps(lazy))  # DataLoader workers
    assert torch.equal(clone.gather(r, p), ref[r, p])
    with pytest.raises(IndexError):
        lazy[0, S]


def test_a_flipped_bit_is_caught_by_the_direct_reader(tmp_path, small_blocks):
    split = write(tmp_path / "c", "fp16", padded_hidden())
    shard_file = next(p for p in sorted((tmp_path / "c" / "shard-00001").rglob("c/*/*/*")) if p.is_file())
    data = bytearray(shard_file.read_bytes())
    data[100] ^= 0x10
    shard_file.write_bytes(bytes(data))
    lazy = split.lazy_array("hidden")
    assert torch.equal(lazy[0], lazy[0])  # shard 0 is intact
    with pytest.raises(SgddError, match="shard-00001 is corrupt.*crc32c"):
        lazy.gather(list(range(17, N)), [0] * (N - 17))


def test_other_layouts_are_read_through_zarr(tmp_path):
    plain = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3).create_array(
        "h", shape=(4, 8, 2), dtype="float32", chunks=(1, 8, 2))
    plain[...] = np.arange(64, dtype="float32").reshape(4, 8, 2)
    assert DirectChunks.open(tmp_path / "g" / "h") is None
    assert DirectChunks.open(tmp_path / "missing") is None
