"""Corpora -> streams of records, one stream per split: the registry of sources.

``get_source`` picks the source for a dataset name (``DATASETS``), a Hugging Face dataset
(``hf:NAME[:CONFIG]``) or a local file. The record and source types live in ``base``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from sgdd.errors import SgddError
from sgdd.stages.collect.sources.base import LOCAL_SUFFIXES, Source
from sgdd.stages.collect.sources.hf import hf_source
from sgdd.stages.collect.sources.local import local_source
from sgdd.stages.collect.sources.pairs import PAIR_DATASETS
from sgdd.stages.collect.sources.wiki import wiki_source


def _wiki(data_dir, text_field, source_field, target_field) -> Source:
    return wiki_source(data_dir)


def _pairs(name: str) -> Callable[..., Source]:
    def make(data_dir, text_field, source_field, target_field) -> Source:
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
        return hf_source(dataset[len(HF_PREFIX):], data_dir, text_field, source_field, target_field)
    path = Path(dataset)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        return local_source(path, text_field, source_field, target_field)
    close = difflib.get_close_matches(dataset, list(DATASETS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SgddError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASETS)}, hf:NAME[:CONFIG], or a local "
                    f"{'/'.join(LOCAL_SUFFIXES)} file){hint}")
