"""The cache's on-disk format: file names, schemas, stored dtypes, array layout, checksums and path rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sgdd.io import file_sha256, named_sha256

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
COLLECT_STATE = "collect.json"
SHARD_META = "shard.json"
ROWS_FILE = "rows.arrow"
ARRAYS_DIR = "arrays.zarr"
ENCODER_DIR = "encoder"
ENCODER_META = "encoder.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
LM_HEAD_FILE = "lm_head.safetensors"
BODY_FILE = "body.safetensors"  # an encoder's own weights, to start a decoder body from
BODY_CONFIG = "body.json"  # its Hugging Face config
LOCK_FILE = ".lock"
GENERATED_DIR = "generated"
SPECIAL_KEYS = ("pad_id", "mask_id", "bos_id", "eos_id")  # encoder.json: the special token ids (an id or null)
IGNORE_INDEX = -100  # a view's label that is never masked nor scored (e.g. past the end of a window)

# What a split holds (manifest "kind") -> the Arrow schema of its rows.
#   sentences: one sentence per row; array "vectors" [N, D] (+ optional "hidden" [N, S, H])
#   pairs:     text/input_ids/length = the TARGET sentence, source_* = the SOURCE sentence;
#              "vectors" [N, D] is the SOURCE sentence's vector
#   windows:   token windows of a causal LM; "hidden" [N, S, H] (zeros beyond `length`),
#              output_ids = the model's greedy next-token prediction at every position
SENTENCE_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("input_ids", pa.list_(pa.int32())), ("length", pa.int32())]
)
PAIR_SCHEMA = pa.schema(
    [*SENTENCE_SCHEMA, ("source_text", pa.string()), ("source_ids", pa.list_(pa.int32())),
     ("source_length", pa.int32())]
)
WINDOW_SCHEMA = pa.schema(
    [("id", pa.string()), ("sample_id", pa.string()), ("text", pa.string()), ("input_ids", pa.list_(pa.int32())),
     ("length", pa.int32()), ("output_ids", pa.list_(pa.int32()))]
)
SCHEMAS: dict[str, pa.Schema] = {"sentences": SENTENCE_SCHEMA, "pairs": PAIR_SCHEMA, "windows": WINDOW_SCHEMA}


def schema_for(kind: str) -> pa.Schema:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown cache kind {kind!r} (valid: {', '.join(SCHEMAS)})")
    return SCHEMAS[kind]


# Array layout. Arrays with one value per row ([N, D]) are chunked by rows (~4 MiB chunks).
# Arrays with one vector per position ([N, S, H]) are chunked (1, POSITION_CHUNK, H) so that a
# random read of one (row, position) decompresses at most POSITION_CHUNK * H values, and
# grouped into Zarr shard files of BLOCK_BYTES worth of rows (one file per block, not one per
# chunk). All-zero chunks (padding beyond a row's length) are not written at all.
ROW_CHUNK_BYTES = 4 << 20
POSITION_CHUNK = 64
BLOCK_BYTES = 32 << 20

# Stored dtype name -> (numpy dtype on disk, torch dtype in memory). bf16 has no numpy dtype:
# it is stored as its raw 16 bits (uint16) and viewed back as torch.bfloat16 on read.
STORED_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "fp32": (np.dtype("float32"), torch.float32),
    "fp16": (np.dtype("float16"), torch.float16),
    "bf16": (np.dtype("uint16"), torch.bfloat16),
}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_index(name: str) -> int | None:
    """'shard-00012' -> 12; anything else -> None."""
    head, _, digits = name.partition("-")
    return int(digits) if head == "shard" and len(digits) == 5 and digits.isdigit() else None


def itemsize(dtype: str) -> int:
    return STORED_DTYPES[dtype][0].itemsize


def block_rows(row_shape: tuple[int, ...], dtype: str) -> int | None:
    """Rows per Zarr shard file for a per-position array ([S, H] rows); None for [D] rows."""
    if len(row_shape) < 2:
        return None
    return max(1, BLOCK_BYTES // (int(np.prod(row_shape)) * itemsize(dtype)))


def array_layout(n: int, row_shape: tuple[int, ...], dtype: str) -> dict:
    """Keyword arguments of ``zarr.Group.create_array`` for an array of ``n`` rows."""
    if len(row_shape) < 2:
        chunk = max(1, min(n, ROW_CHUNK_BYTES // max(1, int(np.prod(row_shape)) * itemsize(dtype))))
        return {"chunks": (chunk, *row_shape)}
    positions, rest = row_shape[0], tuple(row_shape[1:])
    c = min(POSITION_CHUNK, positions)
    padded = -(-positions // c) * c  # a Zarr shard must hold whole chunks
    return {"chunks": (1, c, *rest), "shards": (min(n, block_rows(row_shape, dtype)), padded, *rest)}


def to_storage(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A float tensor -> the numpy array stored on disk for ``dtype``."""
    _, torch_dtype = STORED_DTYPES[dtype]
    t = t.detach().to("cpu", torch_dtype).contiguous()
    if dtype == "bf16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    """The numpy array read from disk -> a tensor in the stored precision."""
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def hash_files(paths: list[Path], root: Path) -> str:
    """sha256 over (relative path, content) of ``paths``, in sorted order."""
    rel = sorted((p.relative_to(root).as_posix(), p) for p in paths)
    return named_sha256(rel)


def tree_checksum(root: Path, exclude: tuple[str, ...] = ()) -> str:
    files = [p for p in root.rglob("*") if p.is_file() and p.name not in exclude]
    return hash_files(files, root)


def encoder_hashes(encoder_dir: Path) -> dict[str, str]:
    """sha256 of every file below ``encoder/`` (relative path -> hex digest), recorded in each
    split's manifest so that readers and ``sgdd cache verify`` notice an edited or damaged file."""
    check_links(encoder_dir)
    return {p.relative_to(encoder_dir).as_posix(): file_sha256(p)
            for p in sorted(encoder_dir.rglob("*")) if p.is_file()}


def check_links(root: Path) -> None:
    """Refuse a symbolic link below ``root`` that points outside it (ValueError). The rule every
    reader and ``sgdd cache verify`` apply to a shard and to ``encoder/``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            if p.is_symlink():
                inside(root, p.relative_to(root).as_posix())


def inside(root: Path, rel: str) -> Path:
    """Resolve ``rel`` below ``root``; refuse absolute paths and anything that escapes ``root``."""
    if os.path.isabs(rel):
        raise ValueError(f"path {rel!r} in the cache is absolute; only relative paths are allowed")
    full = (root / rel).resolve()
    if not full.is_relative_to(root.resolve()):
        link = "" if ".." in Path(rel).parts else " through a symbolic link"
        raise ValueError(f"path {rel!r} in the cache points outside {root}{link}")
    return full
