"""What a run carries so that it decodes without its cache: the tokenizer, the encoder's identity
and the special ids, copied from the cache into ``<run>/encoder/`` when training starts.

``<run>/encoder/`` (and the same folder of a saved run) holds::

    encoder.json       the cache's encoder.json: model id or path (for invert), weights and
                       tokenizer sha256, pooling, layer, special ids, sizes
    tokenizer files    tokenizer.json, tokenizer_config.json, ... (AutoTokenizer loads the folder)
    cache.json         where the data came from: cache path, its splits with row counts and kinds,
                       the dtype the vectors were stored in (invert rounds through it)

The embedding matrix and a causal LM's LM head are not copied: training starts from them,
decoding never reads them. Runs trained before this folder existed fall back to the cache
named in their ``model.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sgdd.cache import format as fmt
from sgdd.errors import SgddError
from sgdd.io import publish_dir, write_json_atomic

ASSETS_DIR = "encoder"
CACHE_INFO = "cache.json"
NOT_COPIED = (fmt.EMBEDDINGS_FILE, fmt.LM_HEAD_FILE, fmt.BODY_FILE)


def cache_summary(cache) -> dict:
    """Where a run's data came from: path, splits (rows, kind, source) and the vectors' dtype."""
    splits, dtype = {}, None
    for name in cache.splits:
        manifest = cache.split(name, verify=False).manifest
        splits[name] = {"rows": manifest.get("num_rows"), "kind": manifest.get("kind", "sentences")}
        source = manifest.get("settings", {}).get("source")
        if source is not None:
            splits[name]["source"] = source
        vectors = manifest.get("arrays", {}).get("vectors")
        if vectors is not None and dtype is None:
            dtype = vectors["dtype"]
    return {"cache": str(Path(cache.dir).resolve()), "splits": splits, "vectors_dtype": dtype}


def copy_encoder_files(cache, run_dir: Path) -> Path:
    """``<run_dir>/encoder/`` from the cache's encoder folder (all but the weight matrices) plus
    cache.json; replaced whole (written under a temporary name, then renamed)."""
    target = run_dir / ASSETS_DIR
    tmp = run_dir / f".{ASSETS_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for p in cache.encoder_dir.iterdir():
        if p.is_file() and p.name not in NOT_COPIED:
            shutil.copy2(p, tmp / p.name)
    write_json_atomic(tmp / CACHE_INFO, cache_summary(cache))
    publish_dir(tmp, target, replace=True)
    return target


@dataclass
class RunAssets:
    """The encoder files a decoder needs (from the run, a saved run or, for older runs, the cache)."""

    dir: Path  # the folder holding encoder.json and the tokenizer files
    cache_info: dict  # cache.json ({} when read from a cache directly)
    cache_dir: Path | None = None  # the cache they were read from (None: the run's own copy)

    @cached_property
    def encoder_info(self) -> dict:
        path = self.dir / fmt.ENCODER_META
        if not path.is_file():
            raise SgddError(f"{self.dir} has no {fmt.ENCODER_META}")
        return json.loads(path.read_text())

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.dir))

    @property
    def vectors_dtype(self) -> str | None:
        return self.cache_info.get("vectors_dtype")


def find_assets(roots: list[Path], meta: dict, shards: str | None = None) -> RunAssets:
    """The encoder files: ``shards``'s when given, else the first ``<root>/encoder/`` of ``roots``
    (a checkpoint, its run, a saved run), else those of the cache named in ``meta``."""
    if shards is None:
        for root in roots:
            d = root / ASSETS_DIR
            if (d / fmt.ENCODER_META).is_file():
                info = json.loads((d / CACHE_INFO).read_text()) if (d / CACHE_INFO).is_file() else {}
                return RunAssets(d, info)
    from sgdd.cache.reader import open_cache

    source = shards or meta.get("cache")
    if not source or not Path(source).is_dir():
        raise SgddError(f"{roots[0]} carries no {ASSETS_DIR}/ folder and its cache {source} is gone; "
                        "pass --shards CACHE (the cache it was trained on)")
    cache = open_cache(source)
    return RunAssets(cache.encoder_dir, cache_summary(cache), cache.dir)
