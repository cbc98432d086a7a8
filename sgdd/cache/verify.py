"""Check a cache and describe it: `sgdd cache verify` (every shard's checksum, rows and shapes)
and `sgdd cache info`."""

from __future__ import annotations

from pathlib import Path

from sgdd.cache.reader import Cache, CacheSplit
from sgdd.errors import SgddError


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _split_line(split: CacheSplit) -> str:
    """Rows, shards, size, bytes per row and per token (per stored position for windows)."""
    size = _size(split.dir)
    rows = max(split.num_rows, 1)
    tokens = max(sum(split.table.column("length").to_pylist()), 1)
    unit = "position" if split.kind == "windows" else "token"
    arrays = ", ".join(f"{k} {[split.num_rows, *v['row_shape']]} {v['dtype']}" for k, v in split.manifest["arrays"].items())
    return (f"split      {split.name}: {split.num_rows} rows, {len(split.manifest['shards'])} shards, "
            f"{_human(size)} ({size / rows:.0f} B/row, {size / tokens:.0f} B/{unit}); {split.kind}: {arrays}")


def cache_info(path: Path) -> str:
    """Splits, rows, dims, dtypes, size on disk, bytes per row and per token, fingerprints."""
    cache = Cache(path)
    enc = cache.encoder_info
    layer = f", layer {enc['layer']}" if enc.get("layer") is not None else ""
    lines = [
        f"cache      {cache.dir}",
        f"encoder    {enc.get('model')} ({enc.get('kind', 'encoder')}{layer}; weights {enc.get('weights_sha256', '')[:12]}, "
        f"tokenizer {enc.get('tokenizer_sha256', '')[:12]}, vocab {enc.get('vocab_size')}, "
        f"hidden {enc.get('hidden_size')})",
    ]
    sources = {}
    for name in cache.splits:
        split = CacheSplit(cache.dir / name, verify=False)
        lines.append(_split_line(split))
        sources[name] = split.settings.get("source", {})
    for name, src in sources.items():
        lines.append(f"source     {name}: {src}")
    return "\n".join(lines)


def verify_cache(path: Path) -> str:
    """Hash every file of every shard and of ``encoder/``, check row counts, dtypes and array
    shapes shard by shard, with the path rules every reader applies. Raise SgddError naming the
    first bad file or shard; otherwise a one-line summary."""
    cache = Cache(path)
    encoder = cache.check_encoder_files()
    total = 0
    for name in cache.splits:
        split = CacheSplit(cache.dir / name, verify="full")
        n = split.table.num_rows  # row counts per shard
        for array in split.array_names:  # shapes per shard, from metadata (nothing is loaded)
            split.lazy_array(array).check_shapes()
        if n != split.num_rows:
            raise SgddError(f"split {name}: {n} rows, manifest says {split.num_rows}")
        total += n
    tail = ("every file of encoder/ matches its sha256" if encoder else
            "encoder/ NOT checked: this cache predates encoder hashes (recollect it to add them)")
    return f"ok: {len(cache.splits)} splits, {total} rows, every shard matches its checksum; {tail}"
