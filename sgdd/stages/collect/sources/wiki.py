"""Wikipedia articles (the ``wikimedia/wikipedia`` schema: id, url, title, text), from local
parquet files or streamed from the Hub; split into cleaned sentences, or kept whole as
documents for a causal LM."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from sgdd.errors import SgddError
from sgdd.offline import hub_reachable
from sgdd.stages.collect.sources.base import Record, Source, count
from sgdd.io import bytes_sha256, file_sha256
from sgdd.stages.collect.sources.text import article_lines, article_sentences

WIKI_HUB = ("wikimedia/wikipedia", "20231101.en")
WIKI_SPLITS = ("train", "validation", "test")


def _articles_local(data_dir: Path, split: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(data_dir / f"{split}.parquet")
    for batch in pf.iter_batches(batch_size=256, columns=["id", "text"]):
        yield from batch.to_pylist()


def wiki_split_of(article_id: str) -> str:
    """The Hub dataset has only a train split: hold out articles by a hash of their id."""
    bucket = int(bytes_sha256(article_id.encode())[:8], 16) % 1000
    return "validation" if bucket < 5 else "test" if bucket < 10 else "train"


def _articles_hub(split: str) -> Iterator[dict]:
    import datasets

    stream = datasets.load_dataset(*WIKI_HUB, split="train", streaming=True)
    for article in stream:
        if wiki_split_of(str(article["id"])) == split:
            yield article


def wiki_source(data_dir: str | None) -> Source:
    if data_dir is not None:
        root = Path(data_dir)
        missing = [f"{s}.parquet" for s in WIKI_SPLITS if not (root / f"{s}.parquet").is_file()]
        if not root.is_dir() or len(missing) == len(WIKI_SPLITS):
            raise SgddError(f"--data-dir {root} holds none of {', '.join(s + '.parquet' for s in WIKI_SPLITS)}")
        splits = tuple(s for s in WIKI_SPLITS if (root / f"{s}.parquet").is_file())
        fingerprint = {"kind": "wiki-parquet", "files": {s: file_sha256(root / f"{s}.parquet") for s in splits}}
        articles = lambda split: _articles_local(root, split)  # noqa: E731
    else:
        if not hub_reachable():
            raise SgddError(f"cannot reach the Hugging Face Hub to stream {WIKI_HUB[0]}; pass --data-dir DIR "
                            "holding {train,validation,test}.parquet (for example ../shared/data/wiki)")
        splits = WIKI_SPLITS
        fingerprint = {"kind": "hub", "dataset": WIKI_HUB[0], "config": WIKI_HUB[1]}
        articles = _articles_hub

    def sentences(split: str, stats: dict) -> Iterator[Record]:
        for article in articles(split):
            found, titles = article_sentences(article["text"] or "")
            count(stats, "articles")
            count(stats, "title_lines_dropped", titles)
            for k, sentence in enumerate(found):
                yield Record(f"{article['id']}-{k}", sentence)

    def documents(split: str, stats: dict) -> Iterator[Record]:
        for article in articles(split):
            count(stats, "articles")
            text = "\n".join(article_lines(article["text"] or ""))
            if not text:
                count(stats, "empty")
                continue
            yield Record(str(article["id"]), text)

    return Source("wiki", splits, fingerprint, sentences, document_reader=documents)
