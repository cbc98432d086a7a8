"""Local files: one text per line (.txt) or per row (.jsonl, .csv, .parquet), read as streams.

A row that cannot be read (bad UTF-8, bad JSON, a value that is not text) is counted in
``stats`` and skipped; a missing column is one clear error naming the columns there are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from sgdd.io import file_sha256
from sgdd.errors import SgddError
from sgdd.stages.collect.sources.base import LOCAL_SUFFIXES, Record, Source, count
from sgdd.stages.collect.sources.text import article_lines, clean_text


def as_text(value, stats: dict) -> str | None:
    """A cell -> its text; None (counted as not_text) for numbers, lists, ...; '' for null."""
    if isinstance(value, str):
        return value
    if value is not None:
        count(stats, "not_text")
        return None
    return ""


def _txt_rows(path: Path, stats: dict) -> Iterator[tuple[int, dict | None]]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            try:
                yield i, {"text": raw.decode("utf-8").rstrip("\r\n")}
            except UnicodeDecodeError:
                count(stats, "invalid_utf8")
                yield i, None


def _jsonl_rows(path: Path, stats: dict) -> Iterator[tuple[int, dict | None]]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if not raw.strip():
                count(stats, "empty")
                yield i, None
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                count(stats, "invalid_json_or_utf8")
                yield i, None
                continue
            if not isinstance(row, dict):
                count(stats, "not_an_object")
                yield i, None
                continue
            yield i, row


def _table_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, dict | None]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".csv":
        try:
            batches = pacsv.open_csv(path)
        except Exception as e:  # pyarrow's errors for empty or malformed files
            raise SgddError(f"cannot read {path} as CSV ({str(e).splitlines()[0]})") from None
        names = batches.schema.names
    else:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        batches = pf.iter_batches(batch_size=1024, columns=[f for f in fields if f in names] or None)
    missing = [f for f in fields if f not in names]
    if missing:
        raise SgddError(f"{path} has no column {missing[0]!r} (columns: {', '.join(names)}); "
                        f"pass --{'text' if len(fields) == 1 else 'source/target'}-field")
    i = 0
    for batch in batches:
        for row in batch.select(list(fields)).to_pylist():
            yield i, row
            i += 1


def local_rows(path: Path, fields: tuple[str, ...], stats: dict) -> Iterator[tuple[int, tuple[str, ...] | None]]:
    """(row number, the texts of ``fields``) per row; None for a row that cannot be read
    (counted in ``stats``). A .txt line is the one field."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if len(fields) != 1:
            raise SgddError(f"{path}: a .txt file holds one text per line; pairs need a .jsonl/.csv/.parquet file")
        rows = ((i, None if r is None else {fields[0]: r["text"]}) for i, r in _txt_rows(path, stats))
    elif suffix == ".jsonl":
        rows = _jsonl_rows(path, stats)
    elif suffix in (".csv", ".parquet"):
        rows = _table_rows(path, fields)
    else:
        raise SgddError(f"unsupported file type {suffix!r} for {path} (use {', '.join(LOCAL_SUFFIXES)})")
    for i, row in rows:
        if row is None:
            yield i, None
            continue
        missing = [f for f in fields if f not in row]
        if missing:
            raise SgddError(f"{path}:{i + 1} has no field {missing[0]!r} (has: {', '.join(map(str, row))}); "
                            f"pass --{'text' if len(fields) == 1 else 'source/target'}-field")
        texts = tuple(as_text(row[f], stats) for f in fields)
        yield i, None if any(t is None for t in texts) else texts


def clean_pair(i: int, texts: tuple[str, ...] | None, stats: dict) -> tuple[str, ...] | None:
    """Clean every text of a row; None (counted) when one is unreadable or empty."""
    if texts is None:
        return None
    cleaned = tuple(clean_text(t) for t in texts)
    if not all(cleaned):
        count(stats, "empty")
        return None
    return cleaned


def local_source(path: Path, text_field: str = "text", source_field: str | None = None,
                 target_field: str | None = None) -> Source:
    """A local file as a one-split (train) source of sentences, or of pairs when
    ``source_field`` and ``target_field`` are given."""
    if path.is_dir():
        raise SgddError(f"{path} is a directory; --dataset takes a file ({'/'.join(LOCAL_SUFFIXES)}) or a dataset name")
    if not path.is_file():
        raise SgddError(f"data file {path} does not exist")
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        raise SgddError(f"unsupported file type {path.suffix!r} for {path} (use {', '.join(LOCAL_SUFFIXES)})")
    pairs = source_field is not None
    fields = (source_field, target_field) if pairs else (text_field,)

    def read(split: str, stats: dict) -> Iterator[Record]:
        for i, texts in local_rows(path, fields, stats):
            texts = clean_pair(i, texts, stats)
            if texts is None:
                continue
            if pairs:
                yield Record(f"{path.stem}-{i}", texts[1], source=texts[0])
            else:
                yield Record(f"{path.stem}-{i}", texts[0])

    def documents(split: str, stats: dict) -> Iterator[Record]:
        """Whole texts for a causal LM: each line cleaned, line breaks kept."""
        for i, texts in local_rows(path, fields, stats):
            text = None if texts is None else "\n".join(article_lines(texts[0]))
            if text == "":
                count(stats, "empty")
            if text:
                yield Record(f"{path.stem}-{i}", text)

    fingerprint = {"kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path),
                   "fields": list(fields)}
    return Source(path.stem, ("train",), fingerprint, read, kind="pairs" if pairs else "sentences",
                  document_reader=None if pairs else documents)
