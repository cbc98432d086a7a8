"""Reading a cache: manifests, verified shards, rows and dense arrays (whole or lazily)."""

from __future__ import annotations

import bisect
import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Sequence

import google_crc32c
import numpy as np
import pyarrow as pa
import torch
import zarr
from numcodecs.zstd import Zstd
from safetensors import SafetensorError
from safetensors.torch import load_file

from sgdd.cache import format as fmt
from sgdd.errors import SgddError


class CacheSplit:
    """One split of a cache, as listed by its manifest.

    Opening checks every shard cheaply (``verify=True``): its files exist with the sizes the
    manifest records (a truncated file is caught here) and the rows file matches its sha256.
    Array chunks carry a crc32c each, checked on every read, so a flipped bit is reported when
    the data is read, never returned. ``verify="full"`` also hashes every file of every shard
    (what ``sgdd cache verify`` does); ``verify=False`` checks only that the shards exist.
    """

    def __init__(self, path: str | Path, verify: bool | str = True):
        self.dir = Path(path)
        manifest_path = self.dir / fmt.MANIFEST
        if not manifest_path.is_file():
            state = " (collect has not finished: rerun it to resume)" if (self.dir / fmt.COLLECT_STATE).exists() else ""
            raise SgddError(f"{self.dir} is not a cache split: no {fmt.MANIFEST}{state}")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise SgddError(f"{manifest_path} is not valid JSON ({e})") from None
        if self.manifest.get("schema_version") != fmt.SCHEMA_VERSION:
            raise SgddError(f"{manifest_path} has schema version {self.manifest.get('schema_version')!r}; "
                            f"this sgdd reads version {fmt.SCHEMA_VERSION}")
        self.shard_dirs = []
        for s in self.manifest["shards"]:
            try:
                self.shard_dirs.append(fmt.inside(self.dir, s["path"]))
            except ValueError as e:
                raise SgddError(f"{manifest_path}: {e}") from None
        self._check_shard_list()
        for meta, d in zip(self.manifest["shards"], self.shard_dirs):
            self._check_shard(meta, d, verify)

    def _check_shard_list(self) -> None:
        """The manifest's shards against each other and the directory: rows add up to num_rows,
        shards follow each other without a gap, and every committed shard on disk is listed."""
        where = self.dir / fmt.MANIFEST
        row = 0
        for meta in self.manifest["shards"]:
            if meta["first_row"] != row:
                raise SgddError(f"{where}: shard {meta['path']} starts at row {meta['first_row']}, expected {row} "
                                "(a shard entry is missing or edited; recollect the split)")
            row += meta["rows"]
        if row != self.manifest["num_rows"]:
            raise SgddError(f"{where} says num_rows={self.manifest['num_rows']} but its shards hold {row} rows "
                            "(edited manifest? recollect the split)")
        listed = {d.name for d in self.shard_dirs}
        on_disk = sorted(p.name for p in self.dir.iterdir() if fmt.shard_index(p.name) is not None and p.is_dir())
        unlisted = [name for name in on_disk if name not in listed]
        if unlisted:
            raise SgddError(f"{where} does not list {', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''} "
                            "found beside it (a shard entry was removed? recollect the split)")

    def _check_shard(self, meta: dict, d: Path, verify: bool | str) -> None:
        """The same path rules at every level: listed files stay inside the shard, no symbolic
        link leads out of it. The shard's own shard.json and its arrays' Zarr metadata must agree
        with the manifest (cheap: small JSON files). Then, with ``verify``, sizes and the rows
        file's sha256; with ``verify="full"``, the sha256 of every file."""
        if not d.is_dir():
            raise SgddError(f"shard {d} listed in the manifest is missing")
        try:
            fmt.check_links(d)
            paths = {rel: fmt.inside(d, rel) for rel in meta.get("files", {})}
        except ValueError as e:
            raise SgddError(f"shard {d}: {e}") from None
        self._check_shard_meta(meta, d)
        for name, info in self.manifest["arrays"].items():
            self._check_array_meta(d, name, info, meta["rows"])
        if not verify:
            return
        if verify == "full" or "files" not in meta:
            got = fmt.tree_checksum(d, exclude=(fmt.SHARD_META,))
            if got != meta["sha256"]:
                raise SgddError(f"shard {d} is corrupt: checksum {got[:12]}... != {meta['sha256'][:12]}... "
                                "(recollect the split)")
            if "files" not in meta:
                return
        for rel, size in meta["files"].items():
            path = paths[rel]
            if not path.is_file() or path.stat().st_size != size:
                got = path.stat().st_size if path.is_file() else "missing"
                raise SgddError(f"shard {d} is corrupt: {rel} is {got} bytes, expected {size} "
                                "(truncated? recollect the split)")
        rows = d / fmt.ROWS_FILE
        if fmt.hash_files([rows], d) != meta["rows_sha256"]:
            raise SgddError(f"shard {d} is corrupt: {fmt.ROWS_FILE} does not match its checksum (recollect the split)")

    def _check_shard_meta(self, meta: dict, d: Path) -> None:
        """The manifest's entry for shard ``d`` against the shard.json committed with it."""
        path = d / fmt.SHARD_META
        try:
            own = json.loads(path.read_text())
        except FileNotFoundError:
            return  # shards of early caches carry no shard.json; the checksums still apply
        except (OSError, ValueError) as e:
            raise SgddError(f"{path} is unreadable ({type(e).__name__}); recollect the split") from None
        differ = [k for k in ("rows", "first_row", "sha256", "rows_sha256", "files") if k in own and own[k] != meta.get(k)]
        if differ:
            raise SgddError(f"{self.dir / fmt.MANIFEST}: the entry of {d.name} differs from its {fmt.SHARD_META} in "
                            f"{', '.join(differ)} (edited manifest? recollect the split)")

    def _check_array_meta(self, d: Path, name: str, info: dict, rows: int) -> None:
        """The manifest's dtype and shape of array ``name`` against the Zarr metadata in shard ``d``."""
        path = d / fmt.ARRAYS_DIR / name / "zarr.json"
        try:
            zmeta = json.loads(path.read_text())
        except FileNotFoundError:
            raise SgddError(f"shard {d} has no array {name!r} (the manifest lists it); recollect the split") from None
        except (OSError, ValueError) as e:
            raise SgddError(f"{path} is unreadable ({type(e).__name__}); recollect the split") from None
        dtype = info.get("dtype")
        if dtype not in fmt.STORED_DTYPES:
            raise SgddError(f"{self.dir / fmt.MANIFEST}: array {name!r} has dtype {dtype!r} "
                            f"(valid: {', '.join(fmt.STORED_DTYPES)})")
        stored = zmeta.get("attributes", {}).get("sgdd_dtype", dtype)
        if zmeta.get("data_type") != fmt.STORED_DTYPES[dtype][0].name or stored != dtype:
            raise SgddError(f"{self.dir / fmt.MANIFEST} says array {name!r} is {dtype}, but {d.name} stores "
                            f"{stored} ({zmeta.get('data_type')}); edited manifest? recollect the split")
        if zmeta.get("shape") != [rows, *info["row_shape"]]:
            raise SgddError(f"shard {d}: array {name!r} has shape {zmeta.get('shape')}, the manifest says "
                            f"{[rows, *info['row_shape']]}")

    # -- metadata ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def kind(self) -> str:
        """sentences, pairs or windows (see ``sgdd.cache.format.SCHEMAS``)."""
        return self.manifest.get("kind", "sentences")

    @property
    def num_rows(self) -> int:
        return self.manifest["num_rows"]

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def array_names(self) -> list[str]:
        return list(self.manifest["arrays"])

    # -- rows ----------------------------------------------------------------------------------
    @cached_property
    def table(self) -> pa.Table:
        """All rows (the columns of the split's kind), memory-mapped Arrow."""
        tables = []
        for meta, d in zip(self.manifest["shards"], self.shard_dirs):
            try:
                with pa.memory_map(str(d / fmt.ROWS_FILE)) as source:
                    t = pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise SgddError(f"shard {d}: cannot read {fmt.ROWS_FILE} ({e})") from None
            if t.num_rows != meta["rows"]:
                raise SgddError(f"shard {d} has {t.num_rows} rows, its manifest entry says {meta['rows']}")
            tables.append(t)
        return pa.concat_tables(tables) if tables else pa.table({})

    def column(self, name: str) -> list:
        if name not in self.table.column_names:
            raise SgddError(f"{self.dir} ({self.kind}) has no column {name!r} (has: {', '.join(self.table.column_names)})")
        return self.table.column(name).to_pylist()

    # -- dense arrays --------------------------------------------------------------------------
    def _array_info(self, name: str) -> dict:
        if name not in self.manifest["arrays"]:
            raise SgddError(f"{self.dir} has no array {name!r} (has: {', '.join(self.array_names) or 'none'})")
        return self.manifest["arrays"][name]

    def lazy_array(self, name: str) -> "LazyArray":
        """``name`` without reading it: rows, (row, position) pairs and batches are read on demand
        from the shards that hold them. See ``LazyArray``."""
        info = self._array_info(name)
        shards = [(str(d), meta["first_row"], meta["rows"]) for meta, d in zip(self.manifest["shards"], self.shard_dirs)]
        return LazyArray(name, shards, tuple(info["row_shape"]), info["dtype"])

    def array(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """A dense array over the whole split (or a row slice), in its stored precision.
        Reads everything asked for into memory; ``lazy_array`` reads on demand."""
        lazy = self.lazy_array(name)
        start, stop, step = (rows or slice(None)).indices(self.num_rows)
        out = lazy.rows(start, max(start, stop))
        return out if step == 1 else out[::step]


class DirectChunks:
    """Single chunks of a per-position array, read straight from its Zarr shard files.

    sgdd writes [N, S, H] arrays as Zarr v3 ``sharding_indexed`` arrays whose inner chunks are
    (1, C, H) encoded bytes(little) -> zstd -> crc32c, with the shard index (bytes(little) ->
    crc32c) at the end of each shard file (the Zarr v3 sharding spec). Reading one chunk is then
    one ``pread`` plus a crc32c check and a zstd decode: ~60 us instead of ~1 ms through zarr's
    asynchronous machinery, which is what makes random (row, position) reads fast. ``open``
    returns None for any other layout, which is then read through zarr.
    """

    EMPTY = 2**64 - 1
    INNER_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}, {"name": "crc32c"}]
    INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]

    def __init__(self, array_dir: Path, shard_shape: tuple[int, ...], inner: tuple[int, ...], dtype: np.dtype):
        self.dir, self.shard_shape, self.inner, self.dtype = array_dir, shard_shape, inner, dtype
        self.grid = tuple(s // c for s, c in zip(shard_shape, inner))  # inner chunks per shard file
        self._index: dict[tuple[int, ...], np.ndarray | None] = {}
        self._fds: dict[tuple[int, ...], int] = {}
        self._decoded: dict[tuple[int, ...], np.ndarray] = {}  # a few recently decoded chunks

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": {}, "_fds": {}, "_decoded": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    @classmethod
    def open(cls, array_dir: Path) -> "DirectChunks | None":
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            inner_ok = [{k: v for k, v in c.items() if k == "name" or c["name"] == "bytes"} for c in conf["codecs"]]
            if (codec["name"] != "sharding_indexed" or inner_ok != cls.INNER_CODECS or conf["index_codecs"] != cls.INDEX_CODECS
                    or conf.get("index_location", "end") != "end" or meta["fill_value"] != 0
                    or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}):
                return None
            shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            return cls(array_dir, shard, tuple(conf["chunk_shape"]), np.dtype(meta["data_type"]).newbyteorder("<"))
        except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError):
            return None

    def _fd(self, shard: tuple[int, ...]) -> int | None:
        if shard not in self._fds:
            path = self.dir / "c" / "/".join(map(str, shard))
            if not path.is_file():
                return None  # every chunk of this shard file is empty (all fill value)
            self._fds[shard] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[shard]

    @staticmethod
    def _checked(raw: bytes, what: str) -> bytes:
        if len(raw) < 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise ValueError(f"crc32c checksum mismatch in {what}")
        return raw[:-4]

    def _shard_index(self, shard: tuple[int, ...]) -> np.ndarray | None:
        if shard not in self._index:
            fd = self._fd(shard)
            if fd is None:
                self._index[shard] = None
            else:
                n = int(np.prod(self.grid)) * 16 + 4
                size = os.fstat(fd).st_size
                raw = self._checked(os.pread(fd, n, size - n) if size >= n else b"", f"the shard index of {shard}")
                self._index[shard] = np.frombuffer(raw, "<u8").reshape(*self.grid, 2)
        return self._index[shard]

    def chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """The inner chunk at inner-chunk coordinates ``coords`` -> array of shape ``inner``."""
        if coords in self._decoded:
            return self._decoded[coords]
        shard = tuple(c * i // s for c, i, s in zip(coords, self.inner, self.shard_shape))
        local = tuple(c - sh * s // i for c, sh, s, i in zip(coords, shard, self.shard_shape, self.inner))
        index = self._shard_index(shard)
        if index is None or index[local][0] == self.EMPTY:
            out = np.zeros(self.inner, self.dtype)
        else:
            offset, nbytes = (int(x) for x in index[local])
            raw = self._checked(os.pread(self._fd(shard), nbytes, offset), f"chunk {coords}")
            out = np.frombuffer(_ZSTD.decode(raw), self.dtype).reshape(self.inner)
        if len(self._decoded) >= 16:
            self._decoded.pop(next(iter(self._decoded)))
        self._decoded[coords] = out
        return out

    def position(self, row: int, pos: int) -> np.ndarray:
        """Values at (row, pos) -> [H, ...]."""
        c = self.inner[1]
        return self.chunk((row, pos // c, *([0] * (len(self.inner) - 2))))[0, pos % c].copy()  # the cache stays intact

    def row(self, row: int, positions: int) -> np.ndarray:
        """A whole row [positions, H, ...]."""
        c = self.inner[1]
        parts = [self.chunk((row, j, *([0] * (len(self.inner) - 2))))[0] for j in range(-(-positions // c))]
        return np.concatenate(parts)[:positions]


_ZSTD = Zstd()


class LazyArray:
    """A dense array of a cache split, read on demand (nothing is loaded when it is created).

    ``arr[i]`` -> row i ``[*row_shape]``; ``arr[i, j]`` -> position j of row i ``[H]``;
    ``arr[i, a:b]`` -> ``[b - a, H]``; ``arr.rows(a, b)`` -> ``[b - a, *row_shape]``;
    ``arr.gather(rows, positions)`` -> ``[k, H]`` (one read per shard touched; ``positions``
    None gathers whole rows). Values come back in the stored precision (fp16/bf16/fp32).
    Picklable: DataLoader workers reopen the shards in their own process.
    """

    def __init__(self, name: str, shards: list[tuple[str, int, int]], row_shape: tuple[int, ...], dtype: str):
        self.name, self.shards, self.row_shape, self.stored_dtype = name, shards, row_shape, dtype
        self._starts = [first for _, first, _ in shards]
        self._num_rows = sum(n for _, _, n in shards)
        self._open: dict[int, zarr.Array] = {}
        self._direct: dict[int, DirectChunks | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}, "_direct": {}}

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._num_rows, *self.row_shape)

    @property
    def dtype(self) -> torch.dtype:
        return fmt.STORED_DTYPES[self.stored_dtype][1]

    def __len__(self) -> int:
        return self._num_rows

    def check_shapes(self) -> None:
        """Open the array in every shard and check its shape (metadata only, nothing is read)."""
        for k in range(len(self.shards)):
            self._zarr(k)

    def _zarr(self, k: int) -> zarr.Array:
        if k not in self._open:
            path, _, n = self.shards[k]
            try:
                arr = zarr.open_array(str(Path(path) / fmt.ARRAYS_DIR / self.name), mode="r")
            except Exception as e:  # a missing or damaged array: say which shard
                raise SgddError(f"shard {path}: cannot open array {self.name!r} ({type(e).__name__}: {e})") from None
            if tuple(arr.shape) != (n, *self.row_shape):
                raise SgddError(f"shard {path}: array {self.name!r} has shape {tuple(arr.shape)}, "
                                f"expected {(n, *self.row_shape)}")
            self._open[k] = arr
        return self._open[k]

    def _chunks(self, k: int) -> "DirectChunks | None":
        """The fast chunk reader of shard k's array (per-position arrays in sgdd's layout)."""
        if k not in self._direct:
            self._zarr(k)  # checks the shape
            self._direct[k] = None if len(self.row_shape) < 2 else DirectChunks.open(
                Path(self.shards[k][0]) / fmt.ARRAYS_DIR / self.name)
        return self._direct[k]

    def _read(self, k: int, select) -> np.ndarray:
        """``select(zarr_array)`` on shard ``k``; a failed checksum or decode names the shard."""
        arr = self._zarr(k)
        try:
            return select(arr)
        except IndexError:
            raise
        except Exception as e:  # crc32c mismatch, undecodable chunk, truncated shard file
            raise SgddError(f"shard {self.shards[k][0]} is corrupt: array {self.name!r} "
                            f"({type(e).__name__}: {e}); recollect the split") from None

    def _locate(self, row: int) -> tuple[int, int]:
        """Global row -> (shard number, row inside the shard)."""
        if row < 0:
            row += self._num_rows
        if not 0 <= row < self._num_rows:
            raise IndexError(f"row {row} out of range for {self._num_rows} rows")
        k = bisect.bisect_right(self._starts, row) - 1
        return k, row - self._starts[k]

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return fmt.from_storage(np.asarray(a), self.stored_dtype)

    def __getitem__(self, key) -> torch.Tensor:
        row, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        if isinstance(row, slice):
            start, stop, step = row.indices(self._num_rows)
            out = self.rows(start, max(start, stop))[::step]
            return out[(slice(None), *rest)] if rest else out
        k, local = self._locate(int(row))
        direct = self._chunks(k)
        if direct is not None and len(rest) <= 1 and not isinstance(rest[0] if rest else 0, slice):
            pos = int(rest[0]) if rest else None
            if pos is not None and not -self.row_shape[0] <= pos < self.row_shape[0]:
                raise IndexError(f"position {pos} out of range [0, {self.row_shape[0]})")
            if pos is None:
                return self._tensor(self._read(k, lambda a: direct.row(local, self.row_shape[0])))
            return self._tensor(self._read(k, lambda a: direct.position(local, pos % self.row_shape[0])))
        return self._tensor(self._read(k, lambda a: a[(local, *rest)]))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start .. stop - 1`` ``[stop - start, *row_shape]``, shard by shard."""
        parts = []
        for k, (_, first, n) in enumerate(self.shards):
            lo, hi = max(start, first), min(stop, first + n)
            if lo < hi:
                parts.append(self._tensor(self._read(k, lambda a: a[lo - first : hi - first])))
        if not parts:
            return torch.empty(0, *self.row_shape, dtype=self.dtype)
        return torch.cat(parts)

    def gather(self, rows: Sequence[int] | torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Vectors at (rows[i], positions[i]) -> ``[k, *row_shape[1:]]``; whole rows when
        ``positions`` is None -> ``[k, *row_shape]``. Order follows the arguments."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).tolist()
        pos = None if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1).tolist()
        if pos is not None and len(pos) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(pos)} positions")
        by_shard: dict[int, list[int]] = {}
        located = [self._locate(r) for r in rows]
        for i, (k, _) in enumerate(located):
            by_shard.setdefault(k, []).append(i)
        tail = self.row_shape if pos is None else self.row_shape[1:]
        out = torch.empty(len(rows), *tail, dtype=self.dtype)
        for k, items in by_shard.items():
            local = np.array([located[i][1] for i in items])
            if pos is None:
                data = self._read(k, lambda a: a.get_orthogonal_selection((local,)))
            else:
                p = np.array([pos[i] for i in items])
                if (p < 0).any() or (p >= self.row_shape[0]).any():
                    raise IndexError(f"position out of range [0, {self.row_shape[0]})")
                extra = [np.arange(s).reshape((1,) * (j + 1) + (s,) + (1,) * (len(tail) - j - 1))
                         for j, s in enumerate(tail)]
                idx = (local.reshape(-1, *([1] * len(tail))), p.reshape(-1, *([1] * len(tail))), *extra)
                direct = self._chunks(k)
                if direct is not None:
                    data = self._read(k, lambda a: np.stack([direct.position(int(r), int(q)) for r, q in zip(local, p)]))
                else:
                    data = self._read(k, lambda a: a.vindex[idx])
            out[torch.as_tensor(items)] = self._tensor(data)
        return out


class Cache:
    """A cache directory: its splits and the encoder files that replace the encoder downstream."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        if self.dir.exists() and not self.dir.is_dir():
            raise SgddError(f"{self.dir} is a file, not a cache: give the cache directory (the one holding "
                            f"{fmt.ENCODER_DIR}/ and one directory per split)")
        if not self.dir.is_dir():
            raise SgddError(f"cache directory {self.dir} does not exist (run `sgdd collect` first)")
        if (self.dir / fmt.MANIFEST).is_file():
            raise SgddError(f"{self.dir} is one split of a cache: give the cache directory {self.dir.parent}")
        self._encoder_checked: bool | None = None
        self.splits = sorted(p.name for p in self.dir.iterdir() if (p / fmt.MANIFEST).is_file())
        if not self.splits:
            if any((p / fmt.COLLECT_STATE).is_file() for p in self.dir.iterdir()):
                raise SgddError(f"{self.dir}: collect has not finished (rerun the same `sgdd collect` to resume)")
            raise SgddError(f"{self.dir} holds no collected split (no */{fmt.MANIFEST}); run `sgdd collect` first")

    def split(self, name: str, verify: bool = True) -> CacheSplit:
        if name not in self.splits:
            raise SgddError(f"cache {self.dir} has no split {name!r} (has: {', '.join(self.splits)})")
        return CacheSplit(self.dir / name, verify=verify)

    @property
    def encoder_dir(self) -> Path:
        return self.dir / fmt.ENCODER_DIR

    @cached_property
    def encoder_info(self) -> dict:
        self.check_encoder_files()
        path = self.encoder_dir / fmt.ENCODER_META
        if not path.is_file():
            raise SgddError(f"{self.dir} has no {fmt.ENCODER_DIR}/{fmt.ENCODER_META}; recollect it")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SgddError(f"{path} is unreadable ({type(e).__name__}); recollect the cache") from None

    def manifests(self) -> dict[str, dict]:
        """Split name -> its manifest, read as is (CacheSplit checks the shards)."""
        out = {}
        for name in self.splits:
            path = self.dir / name / fmt.MANIFEST
            try:
                out[name] = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise SgddError(f"{path} is unreadable ({type(e).__name__}); recollect the split") from None
        return out

    def check_encoder_files(self) -> bool:
        """Check ``encoder/`` file by file against the sha256s the manifests record (once per
        Cache); anything that differs raises SgddError naming the file. A cache written before
        these were recorded is still read, with a note on stderr; returns False then."""
        if self._encoder_checked is not None:
            return self._encoder_checked
        recorded = {name: m["encoder_files"] for name, m in self.manifests().items() if "encoder_files" in m}
        if not recorded:
            print(f"sgdd: note: {self.dir} predates encoder hashes, so {fmt.ENCODER_DIR}/ is not checked "
                  "(recollect the cache to add them)", file=sys.stderr)
            self._encoder_checked = False
            return False
        if not self.encoder_dir.is_dir():
            raise SgddError(f"{self.dir} has no {fmt.ENCODER_DIR}/ directory; recollect the cache")
        try:
            now = fmt.encoder_hashes(self.encoder_dir)
        except ValueError as e:
            raise SgddError(f"{self.encoder_dir}: {e}") from None
        for split, files in recorded.items():
            for rel in sorted(set(files) | set(now)):
                if files.get(rel) != now.get(rel):
                    what = ("is missing" if rel not in now else "is not listed there" if rel not in files
                            else "does not match its sha256 there")
                    raise SgddError(f"{self.encoder_dir / rel} {what} ({split}/{fmt.MANIFEST}); encoder/ was edited "
                                    "or damaged: recollect the cache")
        self._encoder_checked = True
        return True

    def _load_weight(self, path: Path) -> torch.Tensor:
        self.check_encoder_files()
        try:
            return load_file(str(path))["weight"]
        except (SafetensorError, OSError, KeyError) as e:
            raise SgddError(f"{path} is unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            "recollect the cache") from None

    def embeddings(self) -> torch.Tensor:
        """The encoder's input-embedding matrix [V, E] (safetensors: nothing is unpickled).
        For a causal LM, V = base vocabulary + 1: the last row is the added mask token."""
        return self._load_weight(self.encoder_dir / fmt.EMBEDDINGS_FILE)

    def lm_head(self) -> torch.Tensor:
        """A causal LM's output layer [base_vocab_size, H] (also when tied to the embeddings)."""
        path = self.encoder_dir / fmt.LM_HEAD_FILE
        if not path.is_file():
            raise SgddError(f"{self.dir} has no {fmt.ENCODER_DIR}/{fmt.LM_HEAD_FILE} (not collected from a causal LM)")
        return self._load_weight(path)

    def body(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The encoder's Hugging Face config and weights, to start a decoder body from."""
        weights, config = self.encoder_dir / fmt.BODY_FILE, self.encoder_dir / fmt.BODY_CONFIG
        if not weights.is_file() or not config.is_file():
            raise SgddError(f"{self.dir} holds no encoder weights ({fmt.ENCODER_DIR}/{fmt.BODY_FILE}): collected from "
                            "a causal LM or by an older sgdd; rerun the same `sgdd collect` command to add them")
        return json.loads(config.read_text()), load_file(str(weights))

    def tokenizer(self):
        from transformers import AutoTokenizer

        self.check_encoder_files()
        return AutoTokenizer.from_pretrained(str(self.encoder_dir))


def open_cache(path: str | Path) -> Cache:
    return Cache(path)
