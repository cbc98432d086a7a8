"""The types every source shares: ``Record``, ``Source`` (a named corpus with splits) and the
``count`` of what a reader dropped.

A source is read as a stream: records are produced one at a time, so memory does not grow
with the corpus. Records are sentences (``Record.text``), paraphrase pairs (``Record.source``
-> ``Record.text``, ``Source.kind == "pairs"``) or, through ``Source.documents``, whole
documents for the windows of a causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
