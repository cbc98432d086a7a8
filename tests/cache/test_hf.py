"""Caches the ecosystem opens: datasets.load_dataset(<cache>) through the dataset card collect
writes, a split as a datasets.Dataset with its vectors, and bf16 Zarr arrays read with plain zarr."""

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import sgdd
from sgdd.cache import open_cache
from sgdd.cache.hf import zarr_values
from sgdd.cli import cli
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.stages import collect
from tests.helpers import SENTENCES, build_cache


@pytest.fixture(scope="module")
def bf16_cache(tmp_path_factory, tiny_encoder_dir) -> Path:
    """Collected by the real Stage 1 in bf16, in shards of 10 rows (32 sentences: 4 shards)."""
    root = tmp_path_factory.mktemp("hf")
    (root / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    return collect.run(CollectConfig(model=str(tiny_encoder_dir), dataset=str(root / "corpus.txt"),
                                     out=str(root / "cache"), precision="fp32", dtype="bf16", device="cpu",
                                     splits=["train"], shard_size=10))


def test_load_dataset_opens_a_collected_cache(bf16_cache, tmp_path):
    import datasets

    assert (bf16_cache / "README.md").is_file()
    ds = datasets.load_dataset(str(bf16_cache), cache_dir=str(tmp_path / "hf"))
    split = open_cache(bf16_cache).split("train")
    assert list(ds) == ["train"] and ds["train"].num_rows == split.num_rows == len(SENTENCES)
    assert ds["train"]["text"] == split.column("text") and ds["train"]["input_ids"] == split.column("input_ids")


def test_load_dataset_gives_every_split_after_a_card_is_added(tmp_path):
    import datasets

    cache = build_cache(tmp_path / "tiny")
    assert not (cache / "README.md").exists()  # written through the bare writer: no card yet
    r = CliRunner().invoke(cli, ["cache", "card", str(cache)])
    assert r.exit_code == 0, r.output
    ds = datasets.load_dataset(str(cache), cache_dir=str(tmp_path / "hf"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 24, "validation": 4, "test": 4}
    assert ds["validation"]["id"] == [f"validation-{i}" for i in range(4)]
    # a shard left on disk but not in the manifest does not exist for datasets either (the card
    # lists the manifest's files), and a new card is refused as the readers refuse the split
    (cache / "test" / "shard-00009").mkdir()
    (cache / "test" / "shard-00009" / "rows.arrow").write_bytes((cache / "test/shard-00000/rows.arrow").read_bytes())
    assert datasets.load_dataset(str(cache), cache_dir=str(tmp_path / "hf2"))["test"].num_rows == 4
    with pytest.raises(SgddError, match="does not list shard-00009"):
        sgdd.write_dataset_card(cache)


def test_a_foreign_readme_is_left_alone(tmp_path):
    cache = build_cache(tmp_path / "tiny", {"train": SENTENCES[:3]})
    (cache / "README.md").write_text("my notes\n")
    with pytest.raises(SgddError, match="not written by sgdd"):
        sgdd.write_dataset_card(cache)
    assert (cache / "README.md").read_text() == "my notes\n"


def test_cache_dataset_joins_the_vectors(bf16_cache):
    ds = sgdd.cache_dataset(bf16_cache, "train")
    split = open_cache(bf16_cache).split("train")
    vectors = split.array("vectors").float()  # [N, D] bf16 -> float32
    assert ds.num_rows == vectors.shape[0] and ds.column_names == [*split.table.column_names, "vectors"]
    got = torch.tensor(np.asarray(ds.with_format("numpy")["vectors"]))
    assert got.dtype == torch.float32 and torch.equal(got, vectors)
    assert ds[3]["text"] == split.column("text")[3] and ds[3]["id"] == split.column("id")[3]
    with pytest.raises(SgddError, match="no array 'hidden'"):
        sgdd.cache_dataset(bf16_cache, "train", arrays=["hidden"])


def test_plain_zarr_reads_real_bf16_values(bf16_cache):
    split = open_cache(bf16_cache).split("train")
    first = split.shard_dirs[0] / "arrays.zarr"
    array = zarr.open_array(str(first), path="vectors", mode="r")
    assert array.dtype == np.uint16 and array.attrs["sgdd_dtype"] == "bf16"  # what plain zarr shows
    values = zarr_values(array)
    expected = split.array("vectors")[: array.shape[0]].float().numpy()
    assert values.dtype == np.float32 and np.array_equal(values, expected)
    assert np.abs(values).max() > 0  # real numbers, not zeros
    assert np.array_equal(zarr_values(zarr.open_array(str(first), path="vectors", mode="r"), "fp32"), np.asarray(array[...]))
