"""Paraphrase pairs (source sentence -> target sentence): QQP, MRPC, Flickr8k captions.

Each reads ``--data-dir DIR`` holding ``<split>.jsonl`` (or ``<split>.parquet``) files, or
streams the Hugging Face copy where there is one (GLUE's qqp and mrpc).

- ``qqp``: DiffuSeq's ``{"src", "trg"}`` rows, or the GLUE schema ``{"question1", "question2",
  "label"}`` (only duplicates, label 1, are paraphrases; the rest are counted and skipped).
- ``mrpc``: ``{"sentence1", "sentence2", "label"}``, positive pairs only.
- ``flickr8k``: ``{"image", "captions": [...]}``: caption k -> caption k+1 (the last -> the
  first), so every caption is a source once and a target once (5 pairs per image).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable, Iterator

from sgdd.errors import SgddError
from sgdd.offline import hub_reachable
from sgdd.stages.collect.sources.base import Record, Source, count
from sgdd.io import file_sha256
from sgdd.stages.collect.sources.text import clean_text

GLUE_HUB = "nyu-mll/glue"
SPLIT_SUFFIXES = (".jsonl", ".parquet")


def _split_files(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(root.iterdir()) if p.suffix in SPLIT_SUFFIXES and p.is_file()}


def _rows_local(path: Path, stats: dict) -> Iterator[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                count(stats, "invalid_json_or_utf8")
                continue
            if isinstance(row, dict):
                yield row
            else:
                count(stats, "not_an_object")


def _rows_hub(config: str, split: str) -> Iterator[dict]:
    import datasets

    yield from datasets.load_dataset(GLUE_HUB, config, split=split, streaming=True)


def _pair(source, target, stats: dict) -> tuple[str, str] | None:
    if not isinstance(source, str) or not isinstance(target, str):
        count(stats, "not_text")
        return None
    source, target = clean_text(source), clean_text(target)
    if not source or not target:
        count(stats, "empty")
        return None
    return source, target


def _is_positive(row: dict, stats: dict) -> bool:
    label = row.get("label", row.get("is_duplicate"))
    if str(label) not in ("1", "True"):
        count(stats, "not_paraphrase")
        return False
    return True


# -- row -> records, one function per schema -------------------------------------------------
def qqp_records(rows: Iterator[dict], split: str, stats: dict) -> Iterator[Record]:
    for i, row in enumerate(rows):
        if "src" in row and "trg" in row:
            pair = _pair(row["src"], row["trg"], stats)
        elif "question1" in row and "question2" in row:
            pair = _pair(row["question1"], row["question2"], stats) if _is_positive(row, stats) else None
        else:
            raise SgddError(f"qqp {split} row {i + 1} has neither src/trg nor question1/question2 "
                            f"(has: {', '.join(row)})")
        if pair:
            yield Record(f"qqp-{split}-{row.get('idx', i)}", pair[1], source=pair[0])


def mrpc_records(rows: Iterator[dict], split: str, stats: dict) -> Iterator[Record]:
    for i, row in enumerate(rows):
        if "sentence1" not in row or "sentence2" not in row:
            raise SgddError(f"mrpc {split} row {i + 1} has no sentence1/sentence2 (has: {', '.join(row)})")
        if not _is_positive(row, stats):
            continue
        pair = _pair(row["sentence1"], row["sentence2"], stats)
        if pair:
            key = f"{row['id1']}-{row['id2']}" if "id1" in row and "id2" in row else str(row.get("idx", i))
            yield Record(f"mrpc-{split}-{key}", pair[1], source=pair[0])


def flickr8k_records(rows: Iterator[dict], split: str, stats: dict) -> Iterator[Record]:
    for i, row in enumerate(rows):
        captions = row.get("captions")
        if not isinstance(captions, list):
            raise SgddError(f"flickr8k {split} row {i + 1} has no captions list (has: {', '.join(row)})")
        if len(captions) < 2:
            count(stats, "fewer_than_2_captions")
            continue
        image = Path(str(row.get("image", i))).stem
        for k, caption in enumerate(captions):
            pair = _pair(caption, captions[(k + 1) % len(captions)], stats)
            if pair:
                yield Record(f"flickr8k-{split}-{image}-{k}", pair[1], source=pair[0])


# -- sources ---------------------------------------------------------------------------------
def pair_dataset(name: str, records: Callable, hub_config: str | None, data_dir: str | None) -> Source:
    """A pair dataset from ``data_dir`` (one file per split) or, without it, from the Hub."""
    if data_dir is not None:
        root = Path(data_dir)
        files = _split_files(root) if root.is_dir() else {}
        if not files:
            raise SgddError(f"--data-dir {root} holds no <split>.jsonl or <split>.parquet file for {name}")
        fingerprint = {"kind": f"{name}-files", "files": {s: file_sha256(p) for s, p in files.items()}}

        def read(split: str, stats: dict) -> Iterator[Record]:
            return records(_rows_local(files[split], stats), split, stats)

        return Source(name, tuple(files), fingerprint, read, kind="pairs")
    if hub_config is None:
        raise SgddError(f"{name} has no Hugging Face copy to stream; pass --data-dir DIR holding <split>.jsonl "
                        f"(for example ../shared/data/{name})")
    if not hub_reachable():
        raise SgddError(f"cannot reach the Hugging Face Hub to stream {GLUE_HUB}/{hub_config}; pass --data-dir DIR "
                        f"holding <split>.jsonl (for example ../shared/data/{name})")

    def read_hub(split: str, stats: dict) -> Iterator[Record]:
        return records(_rows_hub(hub_config, split), split, stats)

    fingerprint = {"kind": "hub", "dataset": GLUE_HUB, "config": hub_config}
    return Source(name, ("train", "validation", "test"), fingerprint, read_hub, kind="pairs")




# -- the phase-2 training mix ------------------------------------------------------------------
QQP_TRAIN_PAIRS = 947  # QQP validation rows [0, 947) train, [947, 1047) validate, [1047, end) test
QQP_VALIDATION_PAIRS = 100


def paraphrase_mix(data_dir: str | None) -> Source:
    """Phase 2's paraphrase mix from one folder holding ``flickr8k/``, ``mrpc/`` and ``qqp/``
    (for example ../shared/data). ``train``: Flickr8k train captions, MRPC train positive pairs
    in both directions, and the first 947 QQP validation pairs in both directions;
    ``validation``: the next 100 QQP pairs; ``test``: the remaining QQP pairs, less any pair
    whose source or target is a sentence of the QQP training part (counted as
    ``qqp_seen_in_train``), so the test pairs are kept out of training."""
    if data_dir is None:
        raise SgddError("paraphrase-mix reads local files: pass --data-dir DIR holding flickr8k/, mrpc/ and qqp/ "
                        "(for example ../shared/data)")
    root = Path(data_dir)
    files = {"flickr8k": root / "flickr8k" / "train.jsonl", "mrpc": root / "mrpc" / "train.jsonl",
             "qqp": root / "qqp" / "validation.jsonl"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SgddError(f"paraphrase-mix: --data-dir {root} lacks {', '.join(missing)}")

    def both_ways(records: Iterator[Record]) -> Iterator[Record]:
        for r in records:
            yield r
            yield Record(f"{r.id}-reverse", r.source, source=r.text)

    def qqp(split: str, stats: dict, lo: int, hi: int | None) -> Iterator[Record]:
        rows = itertools.islice(_rows_local(files["qqp"], stats), lo, hi)
        return qqp_records(rows, split, stats)

    def read(split: str, stats: dict) -> Iterator[Record]:
        if split == "train":
            return itertools.chain(
                flickr8k_records(_rows_local(files["flickr8k"], stats), split, stats),
                both_ways(mrpc_records(_rows_local(files["mrpc"], stats), split, stats)),
                both_ways(qqp(split, stats, 0, QQP_TRAIN_PAIRS)))
        if split == "validation":
            return qqp(split, stats, QQP_TRAIN_PAIRS, QQP_TRAIN_PAIRS + QQP_VALIDATION_PAIRS)
        seen = {s for r in qqp("train", {}, 0, QQP_TRAIN_PAIRS) for s in (r.source.lower(), r.text.lower())}

        def unseen(r: Record) -> bool:
            if r.source.lower() in seen or r.text.lower() in seen:
                count(stats, "qqp_seen_in_train")
                return False
            return True

        return filter(unseen, qqp(split, stats, QQP_TRAIN_PAIRS + QQP_VALIDATION_PAIRS, None))

    fingerprint = {"kind": "paraphrase-mix", "qqp_train_pairs": QQP_TRAIN_PAIRS,
                   "qqp_validation_pairs": QQP_VALIDATION_PAIRS,
                   "files": {name: file_sha256(p) for name, p in files.items()}}
    return Source("paraphrase-mix", ("train", "validation", "test"), fingerprint, read, kind="pairs")


PAIR_DATASETS: dict[str, Callable[[str | None], Source]] = {
    "qqp": lambda data_dir: pair_dataset("qqp", qqp_records, "qqp", data_dir),
    "mrpc": lambda data_dir: pair_dataset("mrpc", mrpc_records, "mrpc", data_dir),
    "flickr8k": lambda data_dir: pair_dataset("flickr8k", flickr8k_records, None, data_dir),
    "paraphrase-mix": paraphrase_mix,
}
