"""Corpora -> streams of records, one stream per split.

A source is read as a stream: records are produced one at a time, so memory does not grow
with the corpus. ``get_source`` picks the source for a dataset name (``DATASETS``), a
Hugging Face dataset (``hf:NAME[:CONFIG]``) or a local file.

Records are sentences (``Record.text``), paraphrase pairs (``Record.source`` -> ``Record.text``,
``Source.kind == "pairs"``) or, through ``Source.documents``, whole documents for the windows
of a causal LM.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sgdd.errors import SgddError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass
class Record:
    id: str
    text: str  # the sentence; for a pair, the TARGET sentence
    source: str | None = None  # for a pair, the SOURCE sentence


@dataclass
class Source:
    """A named corpus with splits. ``records(split, stats)`` yields cleaned candidate sentences
    (or pairs); ``documents(split, stats)`` yields whole documents (the sentences themselves
    where the corpus has no longer unit); ``stats`` counts what was dropped and why."""

    name: str
    splits: tuple[str, ...]
    fingerprint: dict
    reader: Callable[[str, dict], Iterator[Record]] = field(repr=False)
    kind: str = "sentences"  # or "pairs"
    document_reader: Callable[[str, dict], Iterator[Record]] | None = field(default=None, repr=False)

    def _check(self, split: str) -> None:
        if split not in self.splits:
            raise SgddError(f"dataset {self.name!r} has no split {split!r} (has: {', '.join(self.splits)})")

    def records(self, split: str, stats: dict) -> Iterator[Record]:
        self._check(split)
        return self.reader(split, stats)

    def documents(self, split: str, stats: dict) -> Iterator[Record]:
        self._check(split)
        if self.kind == "pairs":
            raise SgddError(f"dataset {self.name!r} holds paraphrase pairs; a causal LM collects windows over "
                            "documents (use a text dataset, or an encoder model for pairs)")
        return (self.document_reader or self.reader)(split, stats)


def count(stats: dict, key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def _wiki(data_dir, text_field, source_field, target_field) -> Source:
    from sgdd.sources.wiki import wiki_source

    return wiki_source(data_dir)


def _pairs(name: str) -> Callable[..., Source]:
    def make(data_dir, text_field, source_field, target_field) -> Source:
        from sgdd.sources.pairs import PAIR_DATASETS

        return PAIR_DATASETS[name](data_dir)

    return make


DATASETS: dict[str, Callable[..., Source]] = {
    "wiki": _wiki,
    "qqp": _pairs("qqp"),
    "mrpc": _pairs("mrpc"),
    "flickr8k": _pairs("flickr8k"),
    "paraphrase-mix": _pairs("paraphrase-mix"),
}
HF_PREFIX = "hf:"


def get_source(dataset: str, data_dir: str | None = None, text_field: str = "text",
               source_field: str | None = None, target_field: str | None = None) -> Source:
    """A dataset by name, a Hugging Face dataset (``hf:NAME[:CONFIG]``), or a local file by path.
    ``source_field``/``target_field`` read paraphrase pairs from a local file or hf: dataset."""
    if dataset in DATASETS:
        return DATASETS[dataset](data_dir, text_field, source_field, target_field)
    if dataset.startswith(HF_PREFIX):
        from sgdd.sources.hf import hf_source

        return hf_source(dataset[len(HF_PREFIX):], data_dir, text_field, source_field, target_field)
    path = Path(dataset)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        from sgdd.sources.local import local_source

        return local_source(path, text_field, source_field, target_field)
    close = difflib.get_close_matches(dataset, list(DATASETS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SgddError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASETS)}, hf:NAME[:CONFIG], or a local "
                    f"{'/'.join(LOCAL_SUFFIXES)} file){hint}")
