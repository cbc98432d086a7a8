"""Helpers of the Stage 3 tests: a fake decoder with a fixed logit table, and pair / window caches
written in the on-disk format (Arrow rows + Zarr arrays + manifest) with their extra columns."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import torch
import zarr

from sgdd.cache import format as fmt
from sgdd.cache.writer import write_encoder_files
from tests.helpers import build_tokenizer, text_vector

V, L, MASK = 20, 16, 4


# --------------------------------------------------------------------------------------------
# a decoder whose logits are a table carried by the condition
# --------------------------------------------------------------------------------------------
class TableModel(torch.nn.Module):
    """A fake decoder whose logits are a fixed table per sequence, carried by the condition.

    z [B, L*V] is the flattened logit table of each sequence; a dropped condition uses
    ``null_table`` [L, V]. Every forward call, condition call and logits call is recorded.
    """

    def __init__(self, length: int = L, null_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg, self.mask_id, self.vocab_size = SimpleNamespace(max_len=length), MASK, V
        self.null_table = torch.zeros(length, V) if null_table is None else null_table
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.conditions: list[tuple[int, torch.Tensor | None]] = []
        self.logit_rows: list[int] = []

    def condition(self, z, drop=None):
        self.conditions.append((z.shape[0], None if drop is None else drop.clone()))
        table = z.view(z.shape[0], self.cfg.max_len, V)
        if drop is not None:
            table = torch.where(drop[:, None, None], self.null_table.expand_as(table), table)
        return [table]

    def forward(self, x_t, t, kv=None, z=None, drop=None):
        self.inputs.append((x_t.clone(), t.clone()))
        if kv is None:
            kv = self.condition(z, drop)
        return kv[0]  # [B, L, V]: "hidden" = the logits

    def logits(self, hidden):
        self.logit_rows.append(hidden.shape[0])
        out = hidden.clone()
        out[..., MASK] = float("-inf")
        return out


def perfect_tables(ref: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Logit tables [B, L*V] with ``strength`` [B, L] on the reference token and 0 elsewhere."""
    table = torch.nn.functional.one_hot(ref, V).float() * strength[..., None]
    return table.flatten(1)


def reference(b: int = 3, seed: int = 0, length: int = L) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ids [b, L] (never the mask token) and distinct per-position strengths in [3, 6)."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, V - 1, (b, length), generator=g)
    ref = ref + (ref >= MASK).long()
    strength = 3 + 3 * torch.stack([torch.randperm(length, generator=g) for _ in range(b)]).float() / length
    return ref, strength


# --------------------------------------------------------------------------------------------
# caches with extra columns, in the on-disk format of sgdd.cache.writer
# --------------------------------------------------------------------------------------------
def _encoder_info(tokenizer, dim: int, embed_dim: int = 24) -> dict:
    return {
        "model": "tiny", "weights_sha256": "0" * 64, "tokenizer_sha256": "1" * 64,
        "vocab_size": len(tokenizer), "embed_dim": embed_dim, "hidden_size": dim,
        "pad_id": tokenizer.pad_token_id, "mask_id": tokenizer.mask_token_id,
        "bos_id": tokenizer.cls_token_id, "eos_id": tokenizer.sep_token_id,
    }


def write_split(split_dir: Path, columns: dict[str, list], schema: pa.Schema, arrays: dict[str, torch.Tensor],
                kind: str, shard_size: int = 8) -> Path:
    """One split in the reader's format: shards of Arrow rows + fp32 Zarr arrays, manifest last."""
    split_dir.mkdir(parents=True, exist_ok=True)
    n = len(columns["id"])
    shards = []
    for index, lo in enumerate(range(0, n, shard_size)):
        hi = min(lo + shard_size, n)
        d = split_dir / fmt.shard_name(index)
        d.mkdir()
        table = pa.Table.from_pydict({k: v[lo:hi] for k, v in columns.items()}, schema=schema)
        with pa.OSFile(str(d / fmt.ROWS_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
            w.write_table(table)
        group = zarr.open_group(str(d / fmt.ARRAYS_DIR), mode="w", zarr_format=3)
        for name, tensor in arrays.items():
            data = fmt.to_storage(tensor[lo:hi], "fp32")
            arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape)
            arr[...] = data
        shards.append({"path": d.name, "rows": hi - lo, "first_row": lo, "sha256": fmt.tree_checksum(d)})
    manifest = {
        "schema_version": fmt.SCHEMA_VERSION, "kind": kind, "split": split_dir.name, "num_rows": n,
        "settings": {"model": "tiny", "split": split_dir.name},
        "arrays": {k: {"row_shape": list(t.shape[1:]), "dtype": "fp32"} for k, t in arrays.items()},
        "columns": schema.names, "encoder_dir": f"../{fmt.ENCODER_DIR}", "shards": shards,
    }
    (split_dir / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return split_dir


PAIR_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("input_ids", pa.list_(pa.int32())), ("length", pa.int32()),
    ("source_text", pa.string()), ("source_ids", pa.list_(pa.int32())), ("source_length", pa.int32()),
])


def build_pair_cache(root: Path, pairs: list[tuple[str, str]], dim: int = 16, split: str = "test",
                     encoder_dir: Path | None = None) -> Path:
    """A paraphrase cache (kind: pairs): rows = targets plus their sources; vectors = the sources'.

    With ``encoder_dir`` (tests.helpers.build_encoder_dir) the cache names that encoder and uses
    its tokenizer and hidden size, so outputs can be re-encoded; vectors stay stand-ins."""
    if encoder_dir is not None:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
        dim = AutoConfig.from_pretrained(str(encoder_dir)).hidden_size
        info = {**_encoder_info(tokenizer, dim), "model": str(encoder_dir), "pooling": "mean"}
    else:
        tokenizer = build_tokenizer([t for pair in pairs for t in pair])
        info = _encoder_info(tokenizer, dim)
    write_encoder_files(root, tokenizer, torch.randn(len(tokenizer), 24) * 0.05, info)
    sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    tgt_ids = [tokenizer(t)["input_ids"] for t in targets]
    src_ids = [tokenizer(s)["input_ids"] for s in sources]
    columns = {"id": [f"{split}-{i}" for i in range(len(pairs))], "text": targets, "input_ids": tgt_ids,
               "length": [len(x) for x in tgt_ids], "source_text": sources, "source_ids": src_ids,
               "source_length": [len(x) for x in src_ids]}
    vectors = torch.stack([text_vector(s, dim) for s in sources]) if pairs else torch.empty(0, dim)
    write_split(root / split, columns, PAIR_SCHEMA, {"vectors": vectors}, kind="pairs")
    return root


WINDOW_SCHEMA = pa.schema([
    ("id", pa.string()), ("sample_id", pa.string()), ("text", pa.string()), ("input_ids", pa.list_(pa.int32())),
    ("length", pa.int32()), ("output_ids", pa.list_(pa.int32())),
])


def build_window_cache(root: Path, rows: list[list[int]], outputs: list[list[int]], sample_size: int,
                       hidden: int = 8, split: str = "test") -> tuple[Path, torch.Tensor]:
    """An LLM window cache (kind: windows) -> (cache dir, hidden [N, sample_size, hidden]).

    ``rows`` are token id lists (each at most ``sample_size``), ``outputs`` the base model's
    next token at every position of each row; the hidden states are random."""
    tokenizer = build_tokenizer()
    write_encoder_files(root, tokenizer, torch.randn(len(tokenizer), 24) * 0.05, _encoder_info(tokenizer, hidden))
    states = torch.randn(len(rows), sample_size, hidden, generator=torch.Generator().manual_seed(5))
    columns = {"id": [f"{split}-{i}" for i in range(len(rows))], "sample_id": [f"doc-{i}" for i in range(len(rows))],
               "text": [" ".join(map(str, r)) for r in rows], "input_ids": rows, "length": [len(r) for r in rows],
               "output_ids": outputs}
    write_split(root / split, columns, WINDOW_SCHEMA, {"hidden": states}, kind="windows")
    return root, states


# --------------------------------------------------------------------------------------------
# a cache collected from the tiny RoBERTa, so that outputs can be re-encoded
# --------------------------------------------------------------------------------------------
def collect_tiny(root: Path, encoder_dir: Path, sentences: list[str] | None = None) -> Path:
    """cache/ collected by the real Stage 1 from ``encoder_dir`` (fp32 compute and storage)."""
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages import collect
    from tests.helpers import SENTENCES

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentences or SENTENCES) + "\n")
    return collect.run(CollectConfig(model=str(encoder_dir), dataset=str(corpus), out=str(root / "cache"),
                                     precision="fp32", dtype="fp32", device="cpu", splits=["train"]))


def nearest_decoder(vectors: torch.Tensor, answers: torch.Tensor):
    """A stand-in for ``decode`` that returns the answer [L] of the nearest (cosine) known vector."""
    from sgdd.decoding.maskgit import Trajectory

    def decode(model, z, **kw):
        sims = torch.nn.functional.normalize(z.float(), dim=-1) @ torch.nn.functional.normalize(vectors, dim=-1).T
        ids = answers[sims.argmax(1)]
        return ids, Trajectory(torch.ones_like(ids), 1, torch.ones(ids.shape[0], dtype=torch.long))

    return decode
