"""What one task decodes and scores against: the rows of a cache split as ``EvalData``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgdd.cache.reader import CacheSplit
from sgdd.cache.views import KIND_TASK, cache_kind, next_block_view, sentence_view
from sgdd.decoding.maskgit import tokens_to_text
from sgdd.errors import SgddError
from sgdd.models.diffusion import IGNORE_INDEX



@dataclass
class EvalData:
    """The rows of a split as one task sees them."""

    kind: str  # sentences, pairs or windows
    cond: torch.Tensor  # [N, D] float32 condition of each row
    ref_ids: torch.Tensor  # [N, L] reference token ids
    row_ids: list[str]
    refs: list[str]
    sources: list[str] | None  # pairs: the source sentences
    dropped: int  # rows left out (too long, or windows without a full block)
    length: int  # tokens decoded per row

    @property
    def unit(self) -> str:
        return "windows" if self.kind == "windows" else "sentences"

    def __len__(self) -> int:
        return self.ref_ids.shape[0]


def to_texts(ids: torch.Tensor, kind: str, tokenizer, special: dict) -> list[str]:
    """Token ids [N, L] -> texts: sentences are cut at their end token; MTP blocks are decoded as is."""
    if kind == "windows":
        return tokenizer.batch_decode(ids.tolist())
    return tokens_to_text(ids, tokenizer, special)


def load_sentences(split: CacheSplit, kind: str, length: int, special: dict, tokenizer,
                   max_samples: int | None, max_tokens: int | None = None) -> EvalData:
    view = sentence_view(split, length, special["pad_id"], max_samples, max_tokens)
    all_ids = split.column("id")
    rows = view.row_index.tolist()
    sources = None
    if kind == "pairs":
        source_ids = split.column("source_ids")
        sources = tokens_to_text([source_ids[i] for i in rows], tokenizer, special)
    return EvalData(kind, view.vectors, view.ids, [all_ids[i] for i in rows],
                    tokens_to_text(view.ids, tokenizer, special), sources, view.dropped, length)


def load_windows(split: CacheSplit, length: int, tokenizer, max_samples: int | None,
                 consistent: bool = False) -> EvalData:
    """Every position l of the windows whose block of ``length`` base-model tokens is complete;
    ``consistent``: labels after the chain leaves greedy are IGNORE_INDEX (as the run trained)."""
    lengths = torch.tensor(split.table.column("length").to_pylist(), dtype=torch.long)
    if lengths.numel() == 0:
        raise SgddError(f"split {split.dir} is empty")
    per_row = (lengths - length + 1).clamp_min(0).cumsum(0)  # windows in rows <= n
    rows = split.num_rows
    if max_samples is not None and int(per_row[-1]) > max_samples:
        rows = int(torch.searchsorted(per_row, torch.tensor(max_samples))) + 1
    view = next_block_view(split, length, "skip", max_rows=rows, consistent=consistent)
    n = len(view) if max_samples is None else min(len(view), max_samples)
    idx = torch.arange(n)
    batch = view.batch(idx)
    row, pos = view.locate(idx)
    ids = split.column("id")
    return EvalData("windows", batch.cond, batch.x0, [f"{ids[r]}@{p}" for r, p in zip(row.tolist(), pos.tolist())],
                    tokenizer.batch_decode([[t for t in r if t != IGNORE_INDEX] for r in batch.x0.tolist()]),
                    None, view.dropped, length)


def load_eval_data(split: CacheSplit, model, meta: dict, special: dict, tokenizer, max_samples: int | None,
              max_tokens: int | None = None, consistent: bool | None = None) -> EvalData:
    """The rows to decode; ``consistent`` (windows): None = as the run trained (``meta``)."""
    kind = cache_kind(split)
    if kind not in KIND_TASK:
        raise SgddError(f"split {split.dir} has kind {kind!r}; sgdd eval knows {', '.join(KIND_TASK)}")
    if kind == "windows":
        if consistent is None:
            consistent = bool(meta.get("consistent_labels"))
        return load_windows(split, meta.get("block_length") or model.cfg.max_len, tokenizer, max_samples, consistent)
    return load_sentences(split, kind, model.cfg.max_len, special, tokenizer, max_samples, max_tokens)
