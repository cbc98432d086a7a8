"""A cache as the Hugging Face and Zarr ecosystems open it.

- ``datasets.load_dataset(<cache>)`` reads every split's rows: collect writes ``<cache>/README.md``,
  a dataset card whose ``configs:`` lists, per split, exactly the rows files of the shards in its
  manifest (``write_dataset_card`` adds one to an existing cache). ``datasets``' Arrow builder
  reads the IPC *stream* files the cache holds.
- ``cache_dataset(<cache>, split)`` gives one split as a ``datasets.Dataset`` with the dense
  per-row arrays (the sentence ``vectors`` [N, D]) joined as columns.
- Zarr arrays: bf16 has no numpy dtype, so bf16 arrays hold the raw bfloat16 bits as ``uint16``;
  every array's attribute ``sgdd_dtype`` names the real dtype (fp32, fp16 or bf16).
  ``zarr_values(zarr.open_array(...))`` returns real float32 values for any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from sgdd.cache import format as fmt
from sgdd.errors import SgddError
from sgdd.io import write_text_atomic

CARD_FILE = "README.md"
CARD_MARK = "<!-- written by sgdd collect: rewritten whenever a split is collected -->"


def rows_files(split_dir: Path, manifest: dict) -> list[str]:
    """The rows files of a split's committed shards, relative to the cache directory."""
    return [f"{split_dir.name}/{s['path']}/{fmt.ROWS_FILE}" for s in manifest["shards"]]


def dataset_card(cache) -> str:
    """README.md text: a ``configs:`` header (one data_files entry per split) and a description."""
    files = []
    lines = ["", "# sgdd embedding cache", "", CARD_MARK, "",
             "Rows of each split (Arrow IPC stream files, one per shard). Dense arrays (sentence vectors, "
             "hidden states) are in each shard's `arrays.zarr`; `sgdd.cache_dataset(path, split)` joins the "
             "vectors as a column.", "", "| split | kind | rows | arrays |", "| --- | --- | --- | --- |"]
    for name in cache.splits:
        split = cache.split(name, verify=False)
        files.append({"split": name, "path": rows_files(split.dir, split.manifest)})
        arrays = ", ".join(f"{k} {v['row_shape']} {v['dtype']}" for k, v in split.manifest["arrays"].items())
        lines.append(f"| {name} | {split.kind} | {split.num_rows} | {arrays} |")
    info = cache.encoder_info if (cache.encoder_dir / fmt.ENCODER_META).is_file() else {}
    if info.get("model"):
        lines += ["", f"Encoder: `{info['model']}` (pooling `{info.get('pooling')}`)."]
    head = {"configs": [{"config_name": "default", "data_files": files}], "tags": ["sgdd", "embeddings"]}
    return "---\n" + yaml.safe_dump(head, sort_keys=False) + "---\n" + "\n".join(lines) + "\n"


def write_dataset_card(path: str | Path) -> Path:
    """Write (or refresh) ``<cache>/README.md`` so that ``datasets.load_dataset(path)`` opens the
    cache; an existing README.md that sgdd did not write is left alone (SgddError)."""
    from sgdd.cache.reader import open_cache

    cache = open_cache(path)
    card = cache.dir / CARD_FILE
    if card.is_file() and CARD_MARK not in card.read_text(errors="replace"):
        raise SgddError(f"{card} exists and was not written by sgdd; move it away to add a dataset card")
    write_text_atomic(card, dataset_card(cache))
    return card


def cache_dataset(path: str | Path, split: str, arrays: Sequence[str] | None = None):
    """Split ``split`` of a cache as a ``datasets.Dataset``: its rows plus one column per array in
    ``arrays`` (default: every array with one vector per row, i.e. ``vectors``), as float32
    lists (fp16 arrays stay float16). Per-position arrays ([N, S, H]) are joined only when named."""
    import torch
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from sgdd.cache.reader import open_cache

    s = open_cache(path).split(split)
    names = [k for k, v in s.manifest["arrays"].items() if len(v["row_shape"]) == 1] if arrays is None else list(arrays)
    table = s.table
    for name in names:
        if name not in s.manifest["arrays"]:
            raise SgddError(f"split {s.dir} has no array {name!r} (has: {', '.join(s.manifest['arrays']) or 'none'})")
        if name in table.column_names:
            raise SgddError(f"array {name!r} has the name of a row column of {s.dir}")
        values = s.array(name)  # [N, *row_shape] in the stored dtype
        values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()
        table = table.append_column(name, _nested(values))
    return Dataset(InMemoryTable(table))


def _nested(values: np.ndarray):
    """[N, *shape] -> an Arrow column of fixed-size lists (nested once per dimension)."""
    import pyarrow as pa

    column = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def zarr_values(array, dtype: str | None = None) -> np.ndarray:
    """Real values (float32, or the stored float dtype) of a cache's Zarr array opened with plain
    ``zarr``: bf16 arrays hold raw bfloat16 bits as uint16 (attribute ``sgdd_dtype: bf16``); their
    bits become the upper half of float32s. ``dtype`` overrides the attribute."""
    dtype = dtype or dict(array.attrs).get("sgdd_dtype")
    raw = np.asarray(array[...])
    if dtype == "bf16":
        if raw.dtype != np.uint16:
            raise SgddError(f"array of dtype {raw.dtype} said to hold bf16 bits (expected uint16)")
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw
