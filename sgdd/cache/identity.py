"""Which encoder produced a cache's vectors: the identity a run records and every later reader
(eval, invert, train --resume, --init-from) compares with the cache it is given.

Vectors of another encoder (other weights, tokenizer, pooling or layer), stored in another dtype
or computed in another precision are not what a decoder learned from; using them gives numbers
that look normal and mean nothing. So a difference is refused, listing every field, unless the
user asks for it (``--allow-foreign-cache``).
"""

from __future__ import annotations

import sys

from sgdd.cache.reader import Cache
from sgdd.errors import SgddError

# model, weights, tokenizer and kind come from the encoder's fingerprint; pooling and layer from
# how the split was collected; dtype is the stored dtype of the conditioning array; precision is
# the compute precision of the encoder at collect time.
IDENTITY_KEYS = ("model", "weights_sha256", "tokenizer_sha256", "kind", "pooling", "layer", "dtype", "precision")
ALLOW_FLAG = "--allow-foreign-cache"


def encoder_identity(cache: Cache, split: str | None = None) -> dict:
    """The identity of the encoder behind ``split`` (default: the first split) of ``cache``,
    from its manifest (settings, arrays) and ``encoder/encoder.json``. Fields a cache does not
    record are None."""
    manifests = cache.manifests()
    name = split if split is not None else next(iter(manifests))
    if name not in manifests:
        raise SgddError(f"cache {cache.dir} has no split {name!r} (has: {', '.join(manifests)})")
    manifest, info = manifests[name], cache.encoder_info
    settings = manifest.get("settings", {})
    fingerprint = settings.get("encoder") or {}
    for key in ("model", "weights_sha256", "tokenizer_sha256"):
        if key in fingerprint and key in info and fingerprint[key] != info[key]:
            raise SgddError(f"cache {cache.dir} is inconsistent: {name}/manifest.json records {key} "
                            f"{_short(fingerprint[key])}, encoder/encoder.json {_short(info[key])}; recollect it")
    arrays = manifest.get("arrays", {})
    cond = arrays.get("vectors") or arrays.get("hidden") or {}
    return {
        "model": fingerprint.get("model", info.get("model")),
        "weights_sha256": fingerprint.get("weights_sha256", info.get("weights_sha256")),
        "tokenizer_sha256": fingerprint.get("tokenizer_sha256", info.get("tokenizer_sha256")),
        "kind": info.get("kind", "encoder"),
        "pooling": settings.get("pooling", info.get("pooling")),
        "layer": settings.get("layer", info.get("layer")),
        "dtype": cond.get("dtype", settings.get("dtype")),
        "precision": settings.get("precision"),
    }


def _short(value) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else repr(value)


def identity_diff(recorded: dict, now: dict) -> list[str]:
    """``key: recorded -> now`` for every identity field that differs."""
    return [f"{k}: {_short(recorded.get(k))} -> {_short(now.get(k))}" for k in IDENTITY_KEYS
            if k in recorded and recorded.get(k) != now.get(k)]


def check_identity(meta: dict, now: dict, cache_dir, what: str, allow: bool = False) -> list[str]:
    """Refuse a cache whose encoder identity differs from the one recorded in checkpoint ``meta``
    (``what`` names the run). With ``allow``, say what differs and go on. A checkpoint written
    before identities were recorded is accepted with a note (its size and tokenizer checks
    still apply). Returns the differences."""
    recorded = meta.get("encoder")
    if recorded is None:
        print(f"sgdd: note: {what} records no encoder identity (written by an older sgdd); only sizes and "
              "the tokenizer are checked against the cache", file=sys.stderr)
        return []
    diff = identity_diff(recorded, now)
    if diff and not allow:
        raise SgddError(f"cache {cache_dir} was not made by the encoder {what} was trained on "
                        f"({'; '.join(diff)}); pass {ALLOW_FLAG} to use it anyway")
    if diff:
        print(f"sgdd: note: {ALLOW_FLAG}: cache {cache_dir} differs from {what} ({'; '.join(diff)})", file=sys.stderr)
    return diff
