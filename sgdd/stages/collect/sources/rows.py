"""Records -> the rows a cache stores, as streams: text checks, word-count filter, exact
de-duplication, tokenization in chunks, token-count filter; for a causal LM, token windows.

Every drop is counted in ``stats`` under its reason (reported in the manifest's
``filter_stats``), so no input is lost silently.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

from sgdd.stages.collect.sources.base import Record, count
from sgdd.stages.collect.sources.dedup import SeenHashes, hash64
from sgdd.stages.collect.sources.text import has_control_chars

TOKENIZE_CHUNK = 1024  # records tokenized per call (fast tokenizers batch in Rust)
DOCUMENT_CHUNK = 16  # documents per chunk in windows mode (the unit of --generate)
DOCUMENT_WHITESPACE = "\t\n\r"  # control characters a document may hold


def text_ok(text: str, stats: dict, allowed: str = "") -> bool:
    """False (counted) for text with control characters (NUL, ESC, ...) or lone surrogates."""
    if has_control_chars(text, allowed):
        count(stats, "control_chars")
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        count(stats, "invalid_unicode")
        return False
    return True


def words_ok(text: str, cfg, stats: dict) -> bool:
    if not cfg.min_words <= len(text.split()) <= cfg.max_words:
        count(stats, "word_count")
        return False
    return True


def _unique(records: Iterator[Record], keep: Callable[[Record], bool], key: Callable[[Record], str],
            stats: dict) -> Iterator[Record]:
    seen = SeenHashes()
    for r in records:
        if not keep(r):
            continue
        if not seen.first_seen(hash64(key(r))):
            count(stats, "duplicate")
            continue
        yield r


def _tokenized(records: Iterator[Record], tokenizer, max_tokens: int | None, fields: tuple[str, ...],
               chunk_size: int = TOKENIZE_CHUNK):
    """(record, ids of each field) in chunks; ids are cut at max_tokens + 1 (enough to tell 'too long')."""
    kw = {"truncation": True, "max_length": max_tokens + 1} if max_tokens is not None else {}
    while chunk := list(itertools.islice(records, chunk_size)):
        encoded = [tokenizer([getattr(r, f) for r in chunk], add_special_tokens=True, **kw)["input_ids"]
                   for f in fields]
        yield from zip(chunk, zip(*encoded))


def sentence_rows(records: Iterator[Record], tokenizer, cfg, stats: dict) -> Iterator[dict]:
    """Sentence rows: id, text, input_ids, length."""
    keep = lambda r: text_ok(r.text, stats) and words_ok(r.text, cfg, stats)  # noqa: E731
    for r, (ids,) in _tokenized(_unique(records, keep, lambda r: r.text, stats), tokenizer, cfg.max_tokens, ("text",)):
        if len(ids) > cfg.max_tokens:
            count(stats, "token_count")
            continue
        yield {"id": r.id, "text": r.text, "input_ids": ids, "length": len(ids)}


def pair_rows(records: Iterator[Record], tokenizer, cfg, stats: dict) -> Iterator[dict]:
    """Pair rows: the target sentence as id/text/input_ids/length, the source as source_*.
    Both sentences pass the same filters; identical (source, target) pairs are kept once."""
    def keep(r: Record) -> bool:
        return all(text_ok(t, stats) and words_ok(t, cfg, stats) for t in (r.source, r.text))

    unique = _unique(records, keep, lambda r: f"{r.source}\x00{r.text}", stats)
    for r, (src, tgt) in _tokenized(unique, tokenizer, cfg.max_tokens, ("source", "text")):
        if len(src) > cfg.max_tokens or len(tgt) > cfg.max_tokens:
            count(stats, "token_count")
            continue
        yield {"id": r.id, "text": r.text, "input_ids": tgt, "length": len(tgt),
               "source_text": r.source, "source_ids": src, "source_length": len(src)}


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Starts of the windows over n tokens: 0, stride, 2 stride, ... until one reaches the end."""
    starts = [0]
    while starts[-1] + size < n:
        starts.append(starts[-1] + stride)
    return starts


def document_chunks(docs: Iterator[Record], tokenizer, stats: dict) -> Iterator[list[tuple[Record, list[int]]]]:
    """Checked, de-duplicated, tokenized documents, DOCUMENT_CHUNK at a time (chunk c holds the
    documents c*DOCUMENT_CHUNK ... of the filtered stream: the same on every rank and every run)."""
    keep = lambda r: text_ok(r.text, stats, DOCUMENT_WHITESPACE)  # noqa: E731
    tokenized = _tokenized(_unique(docs, keep, lambda r: r.text, stats), tokenizer, None, ("text",), DOCUMENT_CHUNK)
    def long_enough():
        for r, (ids,) in tokenized:
            if len(ids) < 2:
                count(stats, "too_few_tokens")
                continue
            yield r, list(ids)
    stream = long_enough()
    while chunk := list(itertools.islice(stream, DOCUMENT_CHUNK)):
        yield chunk


def window_rows(chunks: Iterator[list[tuple[Record, list[int]]]], tokenizer, cfg) -> Iterator[dict]:
    """Window rows (id, sample_id, text, input_ids, length) over each document's tokens (with
    --generate, the chunks already hold prompt + the model's continuation). output_ids come from
    the model, later."""
    for chunk in chunks:
        windows = []
        for r, ids in chunk:
            for start in window_starts(len(ids), cfg.sample_size, cfg.stride):
                windows.append((r.id, start, ids[start : start + cfg.sample_size]))
        texts = tokenizer.batch_decode([w for _, _, w in windows], skip_special_tokens=False)
        for (sample_id, start, w), text in zip(windows, texts):
            yield {"id": f"{sample_id}@{start}", "sample_id": sample_id, "text": text, "input_ids": w,
                   "length": len(w)}
