"""Writing one split of a cache: atomic shards, a lock, resume, and the manifest last.

A shard is built in a hidden temporary directory (``.shard-00003.tmp-<pid>``), fsynced and
renamed to ``shard-00003``: it either exists whole or not at all. Shards are numbered by their
position in the split, so several writers (torchrun ranks) can each commit their own shards
into one split; the owner (rank 0) lists them in ``manifest.json`` once every one exists.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import zarr
from safetensors import SafetensorError
from safetensors.torch import save_file
from zarr.codecs import Crc32cCodec, ZstdCodec

from sgdd.cache import format as fmt
from sgdd.config import diff_dicts
from sgdd.errors import SgddError
from sgdd.io import TMP_MARK, atomic_path, fsync_dir, publish_dir, temp_name, write_json_atomic

FP16_MAX = 65504.0


def settings_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two settings dicts."""
    return diff_dicts(old, new)


# What a failed write raises besides OSError: safetensors reports a full disk as its own error.
WRITE_ERRORS = (OSError, SafetensorError)


def io_error(what: str, e: BaseException, hint: str = "") -> SgddError:
    """One line for a failed write: what, why (disk full, read-only, ...), what to do."""
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0] or type(e).__name__
    if "No space left on device" in reason or "StorageFull" in reason or "os error 28" in reason:
        reason = "No space left on device"
    return SgddError(f"{what} failed ({reason}){'; ' + hint if hint else ''}")


class DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``: the kernel drops it when the holder dies, so a
    crash (even ``kill -9``) never leaves it stuck. The file names the holder for the message."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / fmt.LOCK_FILE
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise io_error(f"creating the lock file {self.path}", e, "is the directory writable?") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise SgddError(f"{self.path.parent} is being written by {holder}; wait for it or choose "
                                "another --out") from None
            raise io_error(f"locking {self.path}", e) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise io_error(f"writing the lock file {self.path}", e) from None
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class SplitWriter:
    """Writes ``<cache>/<split>/``.

    ``arrays`` maps an array name to ``(row_shape, stored_dtype)``, e.g.
    ``{"vectors": ((384,), "fp16"), "hidden": ((512, 576), "bf16")}``. ``settings`` is everything
    that makes two collects comparable; a split collected with other settings is never resumed
    or mixed. ``kind`` (sentences, pairs, windows) picks the row schema.

    The owner (``worker=False``, the default) holds the split's lock, clears or resumes the
    directory and writes the manifest. A worker (another torchrun rank) only commits shards into
    a split its owner has prepared with the same settings.
    """

    def __init__(self, split_dir: str | Path, settings: dict, arrays: dict[str, tuple[tuple[int, ...], str]],
                 overwrite: bool = False, kind: str = "sentences", worker: bool = False, rank: int = 0):
        self.dir = Path(split_dir)
        self.rank = rank  # recorded in each shard this writer commits
        self.settings = settings
        self.kind = kind
        self.schema = fmt.schema_for(kind)
        self.arrays = {k: (tuple(shape), dtype) for k, (shape, dtype) in arrays.items()}
        self.committed: dict[int, dict] = {}
        self.complete = False
        self._lock: DirLock | None = None
        # pyarrow imports pandas (where installed) the first time it converts Python objects: about
        # 0.6 s of CPU, once per process. Paid here, before the rows stream, rather than inside the
        # first shard's commit, where on a small machine it competes with encoding the next shard
        pa.array([0])
        if worker:
            self._attach()
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise SgddError(f"output path {self.dir} exists and is not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(f"creating cache directory {self.dir}", e) from None
        self._lock = DirLock(self.dir)
        try:
            self._prepare(overwrite)
        except OSError as e:
            self.close()
            raise io_error(f"preparing {self.dir}", e) from None
        except BaseException:
            self.close()
            raise

    # -- lock ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------
    def _old_settings(self) -> dict | None:
        for name in (fmt.COLLECT_STATE, fmt.MANIFEST):
            path = self.dir / name
            if path.exists():
                try:
                    return json.loads(path.read_text())["settings"]
                except (json.JSONDecodeError, KeyError):
                    return {"<unreadable>": name}
        return None

    def _write_state(self) -> None:
        write_json_atomic(self.dir / fmt.COLLECT_STATE,
                          {"schema_version": fmt.SCHEMA_VERSION, "kind": self.kind, "settings": self.settings})

    def _new_cap_fits(self, old: dict) -> bool:
        """An unfinished split whose settings differ only in the row cap (``max_rows``) goes on
        under the new cap when its committed rows fit in it: they are the first rows of the same
        stream (a collect stopped early and finished with fewer rows, or given more)."""
        def rest(settings: dict) -> dict:
            return {k: v for k, v in settings.items() if k != "max_rows"}

        if (self.dir / fmt.MANIFEST).exists() or rest(old) != rest(self.settings):
            return False
        self.rescan()
        cap = self.settings.get("max_rows")
        return cap is None or self.committed_rows <= cap

    def _prepare(self, overwrite: bool) -> None:
        old = self._old_settings()
        if old is not None and old != self.settings and not overwrite and self._new_cap_fits(old):
            self._write_state()
            old = self.settings
        if old is not None and old != self.settings:
            if not overwrite:
                diff = "; ".join(settings_diff(old, self.settings))
                raise SgddError(f"{self.dir} was collected with other settings ({diff}); "
                                "pass --overwrite to replace it or choose another --out")
            old = None
        if old is None:
            self._clear()
            self._write_state()
            return
        # Same settings: keep the committed shards, drop anything half-written by a killed run.
        for p in self.dir.iterdir():
            if p.name.startswith(".") and TMP_MARK in p.name:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.rescan()
        self.complete = (self.dir / fmt.MANIFEST).exists()

    def _attach(self) -> None:
        old = self._old_settings()
        if old != self.settings:
            raise SgddError(f"{self.dir} was not prepared for these settings by rank 0 "
                            f"({'; '.join(settings_diff(old or {}, self.settings))})")
        self.rescan()
        self.complete = (self.dir / fmt.MANIFEST).exists()

    def rescan(self) -> None:
        """Re-read which shards are committed (a directory ``shard-NNNNN`` holding shard.json)."""
        self.committed = {}
        for p in self.dir.iterdir():
            index = fmt.shard_index(p.name)
            if index is not None and (p / fmt.SHARD_META).is_file():
                try:
                    self.committed[index] = json.loads((p / fmt.SHARD_META).read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise SgddError(f"{p / fmt.SHARD_META} is unreadable ({e}); delete {p} and rerun the same "
                                    "command to collect that shard again") from None

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name == fmt.LOCK_FILE:
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    @property
    def shards(self) -> list[dict]:
        """Committed shards' metadata, in shard order."""
        return [self.committed[i] for i in sorted(self.committed)]

    @property
    def committed_rows(self) -> int:
        return sum(s["rows"] for s in self.committed.values())

    # -- shards --------------------------------------------------------------------------------
    def begin_shard(self, index: int, n: int, first_row: int, after: Future | None = None) -> "ShardBuilder":
        """Start shard ``index`` holding rows ``first_row .. first_row + n - 1`` of the split.
        ``after``: the commit of an earlier shard still in flight (see ``ShardBuilder``)."""
        if n < 1:
            raise ValueError("a shard needs at least one row")
        if index in self.committed:
            raise ValueError(f"shard {index} is already committed")
        return ShardBuilder(self, index, n, first_row, after)

    def finalize(self, extra: dict | None = None, num_shards: int | None = None) -> Path:
        """Write ``manifest.json`` (last, atomically): the split now exists for readers.

        ``num_shards``: the shards the split must have (0 .. num_shards - 1); with several
        writers the owner re-reads the directory and refuses a gap.
        """
        self.rescan()
        indices = sorted(self.committed)
        expected = list(range(num_shards if num_shards is not None else len(indices)))
        if indices != expected:
            missing = sorted(set(expected) - set(indices))
            raise SgddError(f"{self.dir}: shards {missing or indices} are missing or unexpected; "
                            "rerun the same command to resume")
        row = 0
        for meta in self.shards:
            if meta["first_row"] != row:
                raise SgddError(f"{self.dir}: shard {meta['path']} starts at row {meta['first_row']}, expected {row}")
            row += meta["rows"]
        manifest = {
            "schema_version": fmt.SCHEMA_VERSION,
            "kind": self.kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "split": self.dir.name,
            "num_rows": self.committed_rows,
            "settings": self.settings,
            "arrays": {k: {"row_shape": list(s), "dtype": d} for k, (s, d) in self.arrays.items()},
            "columns": self.schema.names,
            "encoder_dir": f"../{fmt.ENCODER_DIR}",
            "shards": self.shards,
            **(extra or {}),
        }
        encoder_dir = self.dir.parent / fmt.ENCODER_DIR
        if encoder_dir.is_dir():  # what readers check encoder/ against
            try:
                manifest["encoder_files"] = fmt.encoder_hashes(encoder_dir)
            except ValueError as e:
                raise SgddError(f"{encoder_dir}: {e}") from None
        path = self.dir / fmt.MANIFEST
        try:
            write_json_atomic(path, manifest)
            (self.dir / fmt.COLLECT_STATE).unlink(missing_ok=True)
            fsync_dir(self.dir)
        except OSError as e:
            raise io_error(f"writing {path}", e, "the committed shards are intact; rerun the same command") from None
        self.complete = True
        return path


class ShardBuilder:
    """One shard being written: arrays block by block (``write``), then rows and the atomic
    rename (``commit``). Any failure removes the temporary directory and raises SgddError.
    ``after``: an earlier shard's commit running meanwhile; a failure here waits for it, so that
    the error counts the shards that are on disk."""

    def __init__(self, writer: SplitWriter, index: int, n: int, first_row: int, after: Future | None = None):
        self.writer, self.index, self.n, self.first_row, self.after = writer, index, n, first_row, after
        self.name = fmt.shard_name(index)
        self.final = writer.dir / self.name
        self.tmp = temp_name(self.final)
        self.written: dict[str, int] = {}
        try:
            self.tmp.mkdir()
            group = zarr.open_group(str(self.tmp / fmt.ARRAYS_DIR), mode="w", zarr_format=3)
            self.zarr = {}
            for key, (shape, dtype) in writer.arrays.items():
                self.zarr[key] = group.create_array(
                    key, shape=(n, *shape), dtype=fmt.STORED_DTYPES[dtype][0], fill_value=0,
                    attributes={"sgdd_dtype": dtype}, compressors=[ZstdCodec(), Crc32cCodec()],
                    **fmt.array_layout(n, shape, dtype))
        except OSError as e:
            raise self._fail(e) from None

    def _fail(self, e: OSError) -> SgddError:
        self.abort()
        if self.after is not None:
            futures.wait([self.after])
        return io_error(f"writing {self.final}", e, f"the {len(self.writer.committed)} shards committed before "
                        "it are intact, rerun the same command to resume")

    def block_rows(self, name: str) -> int:
        """Rows to write at a time into ``name`` so that each write fills whole Zarr shard files."""
        shape, dtype = self.writer.arrays[name]
        return fmt.block_rows(shape, dtype) or self.n

    def write(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Rows ``start .. start + len(tensor) - 1`` of array ``name``."""
        shape, dtype = self.writer.arrays[name]
        if tuple(tensor.shape[1:]) != shape or start + tensor.shape[0] > self.n:
            raise ValueError(f"array {name!r}: rows [{start}, {start + tensor.shape[0]}) of shape "
                             f"{tuple(tensor.shape[1:])} do not fit {(self.n, *shape)}")
        if dtype == "fp16" and tensor.is_floating_point() and tensor.numel() and tensor.abs().max() > FP16_MAX:
            raise SgddError(f"array {name!r} has values up to {tensor.abs().max().item():.0f}, beyond fp16's "
                            f"{FP16_MAX:.0f}; use --dtype bf16 or fp32")
        data = fmt.to_storage(tensor, dtype)
        try:
            self.zarr[name][start : start + len(data)] = data
        except OSError as e:
            raise self._fail(e) from None
        self.written[name] = self.written.get(name, 0) + len(data)

    def commit(self, rows: dict[str, list]) -> dict:
        """Write the rows, checksum, fsync and rename: the shard now exists."""
        short = {k: v for k, v in self.written.items() if v != self.n} | {k: 0 for k in self.zarr if k not in self.written}
        if short:
            raise ValueError(f"arrays not fully written before commit: {short}")
        if len(rows["id"]) != self.n:
            raise ValueError(f"{len(rows['id'])} rows for a shard of {self.n}")
        schema = self.writer.schema
        try:
            table = pa.Table.from_pydict({k: rows[k] for k in schema.names}, schema=schema)
            with pa.OSFile(str(self.tmp / fmt.ROWS_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
                w.write_table(table)
            files = sorted(p for p in self.tmp.rglob("*") if p.is_file())
            meta = {"path": self.name, "rows": self.n, "first_row": self.first_row,
                    "first_id": rows["id"][0], "last_id": rows["id"][-1], "rank": self.writer.rank,
                    "sha256": fmt.hash_files(files, self.tmp),
                    "rows_sha256": fmt.hash_files([self.tmp / fmt.ROWS_FILE], self.tmp),
                    "files": {p.relative_to(self.tmp).as_posix(): p.stat().st_size for p in files}}
            write_json_atomic(self.tmp / fmt.SHARD_META, meta)
            publish_dir(self.tmp, self.final)
        except OSError as e:
            raise self._fail(e) from None
        except pa.ArrowException as e:  # Arrow reports a full disk as its own IOError
            self.abort()
            raise SgddError(f"writing {self.final} failed ({e}); the committed shards are intact, rerun the "
                            "same command to resume") from None
        self.writer.committed[self.index] = meta
        return meta

    def abort(self) -> None:
        """Remove the temporary directory (nothing if already committed)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_encoder_files(cache_dir: Path, tokenizer: Any, embeddings: torch.Tensor, info: dict,
                        tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``<cache>/encoder/``: what Stages 2 and 3 need instead of the encoder itself.

    The tokenizer files, the input-embedding matrix (to initialise the decoder), ``tensors``
    (file name -> matrix, e.g. a causal LM's ``lm_head.safetensors``) and ``encoder.json``
    (special token ids, sizes, fingerprints). Written to a temporary directory and renamed, so it
    is either complete or absent. An existing one must describe the same encoder.
    """
    final = cache_dir / fmt.ENCODER_DIR
    meta_path = final / fmt.ENCODER_META
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = encoder_identity_diff(old, info)
        if diff:
            raise SgddError(f"{cache_dir} holds data of another encoder ({'; '.join(diff)}); "
                            "pass --overwrite or choose another --out")
        return final
    for stale in cache_dir.glob(f".{fmt.ENCODER_DIR}{TMP_MARK}*"):  # left by a killed collect
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_name(final)
    try:
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(str(tmp))
        save_file({"weight": embeddings.detach().to("cpu").contiguous()}, str(tmp / fmt.EMBEDDINGS_FILE))
        for name, tensor in (tensors or {}).items():
            save_file({"weight": tensor.detach().to("cpu").contiguous()}, str(tmp / name))
        write_json_atomic(tmp / fmt.ENCODER_META, info)
        publish_dir(tmp, final, replace=True)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, WRITE_ERRORS) or "(os error" in str(e):  # the tokenizers library's I/O errors
            raise io_error(f"writing {final}", e) from None
        raise
    return final


def write_body_files(cache_dir: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """``encoder/body.safetensors`` + ``encoder/body.json``: the encoder's own weights and config, so
    that Stage 2 can start a decoder body from them without loading the encoder. Written once
    (each file atomically); a cache collected before they existed gains them on the next collect."""
    final = cache_dir / fmt.ENCODER_DIR
    weights, meta = final / fmt.BODY_FILE, final / fmt.BODY_CONFIG
    if weights.is_file() and meta.is_file():
        return
    try:
        with atomic_path(weights) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp))
        write_json_atomic(meta, config)
    except OSError as e:
        raise io_error(f"writing {weights}", e) from None


# What makes two encoder directories the same: a cache never mixes splits that differ in these.
ENCODER_IDENTITY = ("model", "weights_sha256", "tokenizer_sha256", "kind", "pooling", "layer")


def encoder_identity_diff(old: dict, new: dict) -> list[str]:
    """Differences in ENCODER_IDENTITY (an encoder.json without "kind" predates causal LMs: an encoder)."""
    old, new = {"kind": "encoder", **old}, {"kind": "encoder", **new}
    return settings_diff({k: old.get(k) for k in ENCODER_IDENTITY}, {k: new.get(k) for k in ENCODER_IDENTITY})
