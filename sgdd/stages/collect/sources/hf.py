"""Any Hugging Face dataset as a source, streamed (``datasets.load_dataset(streaming=True)``).

``--dataset hf:NAME[:CONFIG]``: NAME is a Hub dataset id (``hf:nyu-mll/glue:qqp``), a local
dataset directory (``hf:/data/mycorpus`` with ``train.jsonl``, ``validation.jsonl``, ...) or a
packaged builder with ``--data-dir`` (``hf:json --data-dir DIR``). ``--text-field`` names the
text column; ``--source-field``/``--target-field`` read paraphrase pairs instead. Nothing is
downloaded ahead: rows arrive one at a time. Offline, a Hub id fails in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from sgdd.errors import SgddError
from sgdd.offline import hub_reachable
from sgdd.stages.collect.sources.base import Record, Source, count
from sgdd.io import file_sha256
from sgdd.stages.collect.sources.local import as_text
from sgdd.stages.collect.sources.text import article_lines, clean_text

PACKAGED_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _is_local(name: str, data_dir: str | None) -> bool:
    return Path(name).exists() or (name in PACKAGED_BUILDERS and data_dir is not None)


def _local_fingerprint(root: Path) -> dict:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))
    return {str(p.relative_to(root)): file_sha256(p) for p in files}


def _open(name: str, config: str | None, data_dir: str | None):
    import datasets

    kwargs = {"data_dir": data_dir} if data_dir else {}
    try:
        return datasets.load_dataset(name, config, streaming=True, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError, ...)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SgddError(f"cannot open Hugging Face dataset {name!r}{f' ({config})' if config else ''}: {first}") from None


def hf_source(spec: str, data_dir: str | None, text_field: str = "text", source_field: str | None = None,
              target_field: str | None = None) -> Source:
    """``spec`` = ``NAME[:CONFIG]`` (what follows ``hf:``)."""
    name, _, config = spec.partition(":")
    if not name:
        raise SgddError("--dataset hf: needs a name: hf:NAME[:CONFIG] (a Hub id or a local dataset directory)")
    local = _is_local(name, data_dir)
    if not local:
        if not hub_reachable():
            raise SgddError(f"cannot reach the Hugging Face Hub to stream {name!r}; pass hf:DIR with a local "
                            "dataset directory, or a local .jsonl/.csv/.parquet file as --dataset")
    streams = _open(name, config or None, data_dir)
    pairs = source_field is not None
    fields = (source_field, target_field) if pairs else (text_field,)
    short = Path(name).name if local else name.replace("/", "_")

    def raw(split: str, stats: dict) -> Iterator[tuple[int, list[str]]]:
        for i, row in enumerate(streams[split]):
            missing = [f for f in fields if f not in row]
            if missing:
                raise SgddError(f"dataset {name!r} has no column {missing[0]!r} (columns: {', '.join(row)}); "
                                f"pass --{'text' if not pairs else 'source/target'}-field")
            texts = [as_text(row[f], stats) for f in fields]
            if all(t is not None for t in texts):
                yield i, texts

    def read(split: str, stats: dict) -> Iterator[Record]:
        for i, texts in raw(split, stats):
            texts = [clean_text(t) for t in texts]
            if not all(texts):
                count(stats, "empty")
                continue
            rid = f"{short}-{split}-{i}"
            yield Record(rid, texts[1], source=texts[0]) if pairs else Record(rid, texts[0])

    def documents(split: str, stats: dict) -> Iterator[Record]:
        """Whole texts for a causal LM: each line cleaned, line breaks kept."""
        for i, (text,) in raw(split, stats):
            text = "\n".join(article_lines(text))
            if not text:
                count(stats, "empty")
                continue
            yield Record(f"{short}-{split}-{i}", text)

    fingerprint = {"kind": "hf", "name": name if not local else str(Path(name).resolve()), "config": config or None,
                   "fields": list(fields)}
    if local:
        root = Path(data_dir) if data_dir else Path(name)
        fingerprint["files"] = _local_fingerprint(root) if root.is_dir() else {root.name: file_sha256(root)}
    return Source(short, tuple(streams.keys()), fingerprint, read, kind="pairs" if pairs else "sentences",
                  document_reader=None if pairs else documents)
