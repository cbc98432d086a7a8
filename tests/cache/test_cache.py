"""The cache contract: exact round trips, atomic shards, manifest, lock, corruption, path safety."""

import json
import shutil

import pytest
import torch

from sgdd.cache import SplitWriter, open_cache
from sgdd.cache import format as fmt
from sgdd.cache.reader import CacheSplit
from sgdd.cache.verify import cache_info, verify_cache
from sgdd.errors import SgddError
from tests.helpers import build_cache, write_shard


def rows(start, n):
    return {"id": [f"r{i}" for i in range(start, start + n)], "text": [f"text {i}" for i in range(start, start + n)],
            "input_ids": [[0, i, i + 1, 2] for i in range(start, start + n)], "length": [4] * n}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_round_trip_is_exact_in_stored_dtype(tmp_path, dtype):
    torch.manual_seed(0)
    vec = torch.randn(10, 6)
    hid = torch.randn(10, 5, 3)
    with SplitWriter(tmp_path / "train", {"a": 1}, {"vectors": ((6,), dtype), "hidden": ((5, 3), dtype)}) as w:
        write_shard(w, rows(0, 4), {"vectors": vec[:4], "hidden": hid[:4]})
        write_shard(w, rows(4, 6), {"vectors": vec[4:], "hidden": hid[4:]})
        w.finalize()
    split = CacheSplit(tmp_path / "train")
    torch_dtype = fmt.STORED_DTYPES[dtype][1]
    assert split.array("vectors").dtype == torch_dtype
    assert torch.equal(split.array("vectors"), vec.to(torch_dtype))
    assert torch.equal(split.array("hidden"), hid.to(torch_dtype))
    assert split.column("id") == [f"r{i}" for i in range(10)]
    assert split.column("input_ids")[7] == [0, 7, 8, 2]
    assert split.num_rows == 10 and [s["first_row"] for s in split.manifest["shards"]] == [0, 4]


def test_rows_read_by_datasets_from_file(tmp_path):
    """The rows file is the Arrow stream format that `datasets.Dataset.from_file` reads."""
    datasets = pytest.importorskip("datasets")
    with SplitWriter(tmp_path / "s", {}, {"vectors": ((2,), "fp32")}) as w:
        write_shard(w, rows(0, 3), {"vectors": torch.zeros(3, 2)})
        w.finalize()
    ds = datasets.Dataset.from_file(str(tmp_path / "s" / "shard-00000" / fmt.ROWS_FILE))
    assert ds["text"] == ["text 0", "text 1", "text 2"]


def test_manifest_lists_only_committed_shards(tmp_path):
    d = tmp_path / "train"
    with SplitWriter(d, {"a": 1}, {"vectors": ((2,), "fp32")}) as w:
        write_shard(w, rows(0, 3), {"vectors": torch.zeros(3, 2)})
        with pytest.raises(SgddError):
            CacheSplit(d)  # no manifest yet: the split does not exist for readers
        (d / ".shard-00001.tmp-99").mkdir()  # a half-written shard of a crashed writer
        w.finalize()
    manifest = json.loads((d / fmt.MANIFEST).read_text())
    assert [s["path"] for s in manifest["shards"]] == ["shard-00000"]
    assert CacheSplit(d).num_rows == 3


def test_resume_keeps_committed_shards_and_drops_partial_ones(tmp_path):
    d = tmp_path / "train"
    with SplitWriter(d, {"a": 1}, {"vectors": ((2,), "fp32")}) as w:
        write_shard(w, rows(0, 3), {"vectors": torch.ones(3, 2)})
    (d / ".shard-00001.tmp-12345").mkdir()
    with SplitWriter(d, {"a": 1}, {"vectors": ((2,), "fp32")}) as w:
        assert w.committed_rows == 3 and not w.complete
        assert not (d / ".shard-00001.tmp-12345").exists()
        write_shard(w, rows(3, 2), {"vectors": torch.ones(2, 2)})
        w.finalize()
    assert CacheSplit(d).column("id") == [f"r{i}" for i in range(5)]


def test_other_settings_are_refused_with_the_differences(tmp_path):
    d = tmp_path / "train"
    with SplitWriter(d, {"model": "a", "dtype": "fp16"}, {"vectors": ((2,), "fp32")}) as w:
        write_shard(w, rows(0, 1), {"vectors": torch.zeros(1, 2)})
    with pytest.raises(SgddError, match=r"dtype: 'fp16' -> 'fp32'.*--overwrite"):
        SplitWriter(d, {"model": "a", "dtype": "fp32"}, {"vectors": ((2,), "fp32")})
    with SplitWriter(d, {"model": "a", "dtype": "fp32"}, {"vectors": ((2,), "fp32")}, overwrite=True) as w:
        assert w.committed_rows == 0


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    d = tmp_path / "train"
    first = SplitWriter(d, {}, {"vectors": ((2,), "fp32")})
    with pytest.raises(SgddError, match="being written by pid"):
        SplitWriter(d, {}, {"vectors": ((2,), "fp32")})
    first.close()
    SplitWriter(d, {}, {"vectors": ((2,), "fp32")}).close()  # released: no stale lock


def _array_chunk(root, shard="shard-00001"):
    return next(p for p in sorted((root / "train" / shard / fmt.ARRAYS_DIR).rglob("*"))
                if p.is_file() and p.name != "zarr.json")


def test_bit_flip_is_detected_by_reader_and_verify(tmp_path):
    """A flipped bit in an array chunk fails its crc32c when read, and the full checksum in verify."""
    root = build_cache(tmp_path / "c")
    chunk = _array_chunk(root)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    split = CacheSplit(root / "train")  # opening checks sizes: a flip does not change them
    with pytest.raises(SgddError, match="shard-00001 is corrupt"):
        split.array("vectors")
    assert torch.equal(split.lazy_array("vectors")[0], split.lazy_array("vectors")[0])  # shard 0 still reads
    with pytest.raises(SgddError, match="shard-00001 is corrupt"):
        verify_cache(root)


def test_bit_flip_in_rows_is_detected_on_open(tmp_path):
    root = build_cache(tmp_path / "c")
    rows = root / "train" / "shard-00002" / fmt.ROWS_FILE
    data = bytearray(rows.read_bytes())
    data[-40] ^= 0x04
    rows.write_bytes(bytes(data))
    with pytest.raises(SgddError, match="shard-00002 is corrupt"):
        CacheSplit(root / "train")


def test_truncated_shard_is_detected_on_open_and_by_verify(tmp_path):
    root = build_cache(tmp_path / "c")
    chunk = _array_chunk(root)
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(SgddError, match=r"shard-00001 is corrupt: .* bytes, expected"):
        CacheSplit(root / "train")
    with pytest.raises(SgddError, match="shard-00001"):
        verify_cache(root)


def test_shard_path_outside_the_cache_is_refused(tmp_path):
    root = build_cache(tmp_path / "c")
    m = json.loads((root / "train" / fmt.MANIFEST).read_text())
    m["shards"][0]["path"] = "../../../etc"
    (root / "train" / fmt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SgddError, match="outside"):
        CacheSplit(root / "train")


def test_file_entries_outside_the_shard_are_refused(tmp_path):
    root = build_cache(tmp_path / "c")
    m = json.loads((root / "train" / fmt.MANIFEST).read_text())
    m["shards"][0]["files"] = {"../../../etc/passwd": 10}
    (root / "train" / fmt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SgddError, match="outside"):
        CacheSplit(root / "train")


def test_missing_shard_is_reported(tmp_path):
    root = build_cache(tmp_path / "c")
    shutil.rmtree(root / "validation" / "shard-00000")
    with pytest.raises(SgddError, match="missing"):
        CacheSplit(root / "validation")


def test_info_and_verify_describe_a_good_cache(tiny_cache):
    info = cache_info(tiny_cache)
    assert "train: 24 rows, 3 shards" in info and "B/row" in info and "B/token" in info
    assert "sentences: vectors [24, 16] fp32" in info
    assert verify_cache(tiny_cache).startswith("ok: 3 splits, 32 rows")
    cache = open_cache(tiny_cache)
    assert cache.embeddings().shape == (cache.encoder_info["vocab_size"], 24)
