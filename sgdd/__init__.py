"""sgdd: conditional masked-diffusion text decoders trained from a precomputed embedding cache.

The public API (imported on first use, so ``import sgdd`` stays cheap)::

    sgdd.load_run(path_or_hub_id)   a trained run: .decode(vectors), .invert(texts), .encode(texts),
                                    .save_pretrained(dir), .push_to_hub(repo_id)
    sgdd.open_cache(path)           a cache directory: splits, rows, arrays, encoder files
    sgdd.cache_dataset(path, split) a split as a datasets.Dataset with the vectors as a column
    sgdd.collect(cfg) / sgdd.train(cfg) / sgdd.evaluate(cfg)
                                    the three stages, taking the CLI's config dataclasses
    sgdd.CollectConfig, sgdd.TrainConfig, sgdd.EvalConfig
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_run": "sgdd.api",
    "Run": "sgdd.api",
    "collect": "sgdd.api",
    "train": "sgdd.api",
    "evaluate": "sgdd.api",
    "open_cache": "sgdd.cache.reader",
    "cache_dataset": "sgdd.cache.hf",
    "write_dataset_card": "sgdd.cache.hf",
    "CollectConfig": "sgdd.stages.collect.config",
    "TrainConfig": "sgdd.stages.train.config",
    "EvalConfig": "sgdd.stages.evaluate.config",
    "SgddError": "sgdd.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sgdd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
