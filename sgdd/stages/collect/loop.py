"""Stage 1's loop: run a frozen model over a corpus once and write the cache.

Per split: stream records -> filters -> de-duplicate -> tokenize -> rows (the mode's job,
``modes``), cut the rows into shards of ``shard_size`` and encode each shard; every shard is
committed atomically. Shard i holds rows i*shard_size ... whatever the number of processes,
so a rerun resumes after the committed shards and torchrun ranks (shard i -> rank i % world)
write exactly the shards one process would. Rank 0 writes the manifest once all exist.

Off the critical path: a thread reads and tokenizes the next shard's rows while the model
encodes this one, and shard i is committed (Arrow rows, checksums, fsync, rename) by another
thread while shard i + 1 is encoded.
"""

from __future__ import annotations

import itertools
import json
import queue
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, TypeVar

import yaml

from sgdd.cache import format as fmt
from sgdd.cache.hf import write_dataset_card
from sgdd.cache.writer import (DirLock, SplitWriter, encoder_identity_diff, io_error, write_body_files,
                               write_encoder_files)
from sgdd.config import to_dict
from sgdd.errors import SgddError
from sgdd.io import write_text_atomic
from sgdd.log import get_logger, progress
from sgdd.runtime import default_threads, pick_precision, rank_device
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages.collect.modes import load_mode
from sgdd.stages.collect.ranks import CollectRanks, init_ranks
from sgdd.stages.collect.sources import get_source


def parse_split(spec: str, default_max: int | None) -> tuple[str, int | None]:
    """'train' -> ('train', default_max); 'validation:500' -> ('validation', 500)."""
    name, _, cap = spec.partition(":")
    if not cap:
        return name, default_max
    if not cap.isdigit() or int(cap) < 1:
        raise SgddError(f"split spec {spec!r}: expected NAME or NAME:MAX with a positive MAX")
    return name, int(cap)


# ------------------------------------------------------------------------------------------------
# one split
# ------------------------------------------------------------------------------------------------
def check_committed(meta: dict, rows: list[dict], split_dir: Path) -> None:
    """A shard committed by an earlier run must hold the rows this run would put there."""
    ids = (meta.get("first_id", rows[0]["id"]), meta.get("last_id", rows[-1]["id"]))  # older shards lack ids
    if meta["rows"] != len(rows) or ids != (rows[0]["id"], rows[-1]["id"]):
        raise SgddError(f"{split_dir / meta['path']} holds other rows than the source gives now "
                        f"({meta.get('first_id')}..{meta.get('last_id')} vs {rows[0]['id']}..{rows[-1]['id']}); "
                        "the source changed: pass --overwrite")


def log(ranks: CollectRanks, message: str) -> None:
    if ranks.is_main:
        get_logger("collect").info(message)


T = TypeVar("T")
_END = object()


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a thread up to ``depth`` items ahead of the consumer. An error of the
    producer is raised in the consumer; a consumer that stops early stops the producer."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple) -> bool:
        """Queue ``entry`` unless the consumer has stopped (then False)."""
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            offer((_END, e))

    thread = threading.Thread(target=produce, name="sgdd-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = box.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _commit(shard, columns: dict[str, list]) -> None:
    try:
        shard.commit(columns)
    finally:
        shard.abort()  # nothing left once committed; a half-written shard otherwise


def write_shards(mode, writer: SplitWriter, rows: Iterator[dict], cap: int | None, ranks: CollectRanks) -> tuple[int, int]:
    """Cut ``rows`` into shards; commit the ones this rank owns and no earlier run committed.
    -> (number of shards of the split, rows this rank encoded). The next shard's rows are read
    while this one is encoded (where the mode allows), and each commit overlaps the next encode."""
    index = first = encoded = 0
    bar = progress(total=cap, initial=0, desc=writer.dir.name, unit="row", main=ranks.is_main, logger="collect")
    shards = iter(lambda: list(itertools.islice(rows, mode.shard_size)), [])
    if mode.rows_read_ahead:
        shards = read_ahead(shards)
    pending: Future | None = None  # the commit in flight
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgdd-commit") as committer:
        try:
            for shard_rows in shards:
                meta = writer.committed.get(index)
                if meta is not None:
                    check_committed(meta, shard_rows, writer.dir)
                elif ranks.owns(index):
                    shard = writer.begin_shard(index, len(shard_rows), first, after=pending)
                    try:
                        columns = mode.encode(shard_rows, shard)
                        if pending is not None:
                            pending.result()  # a failed commit stops the run here
                    except BaseException:
                        shard.abort()
                        raise
                    pending = committer.submit(_commit, shard, columns)
                    encoded += len(shard_rows)
                first += len(shard_rows)
                index += 1
                bar.update(len(shard_rows))
        finally:
            getattr(shards, "close", lambda: None)()  # stops the reading thread
    if pending is not None:
        pending.result()  # the last commit (the executor has waited for it)
    bar.close()
    return index, encoded


def collect_split(mode, split: str, cap: int | None, out: Path, settings: dict, ranks: CollectRanks) -> dict:
    cfg = mode.cfg
    split_dir = out / split
    split_settings = {**settings, "split": split, "max_rows": cap}
    writer = ranks.on_main(lambda: SplitWriter(split_dir, split_settings, mode.arrays(), overwrite=cfg.overwrite,
                                               kind=mode.kind))
    try:
        done = ranks.broadcast(writer.committed_rows if writer is not None and writer.complete else None)
        if done is not None:
            log(ranks, f"{split}: already complete ({done} rows), nothing to do")
            return {"rows": done, "skipped": True}
        if writer is None:  # another rank: commit shards into the split rank 0 has prepared
            writer = SplitWriter(split_dir, split_settings, mode.arrays(), kind=mode.kind, worker=True, rank=ranks.rank)
        if writer.committed:
            log(ranks, f"{split}: resuming; {len(writer.committed)} shards ({writer.committed_rows} rows) are committed")
        stats: dict = {}
        rows = mode.rows(split, stats, split_dir, ranks)
        rows = itertools.islice(rows, cap) if cap is not None else rows
        t0 = time.time()
        num_shards, encoded = write_shards(mode, writer, rows, cap, ranks)
        wall = time.time() - t0
        if num_shards == 0:
            raise SgddError(f"split {split!r} is empty after filtering (dropped: {stats or 'nothing to read'}); "
                            "check --dataset/--text-field or relax --min-words/--max-words/--max-tokens")
        ranks.all_agree((num_shards, stats))  # a barrier: every rank has committed its shards, from the same rows
        extra = {"filter_stats": stats, "collect_seconds": round(wall, 2), "world_size": ranks.world,
                 "collect_config": to_dict(cfg), "package_versions": package_versions()}
        ranks.on_main(lambda: finish_split(writer, extra, num_shards))
        rows_total = ranks.broadcast(writer.committed_rows)  # rank 0 has re-read every rank's shards
        rate = encoded / wall if wall > 0 else 0.0
        log(ranks, f"{split}: {rows_total} rows in {num_shards} shards ({rate:.1f} rows/s on rank 0; dropped {stats})")
        return {"rows": rows_total, "stats": stats, "seconds": wall}
    finally:
        if writer is not None:
            writer.close()


def finish_split(writer: SplitWriter, extra: dict, num_shards: int) -> None:
    writer.finalize(extra, num_shards)
    write_dataset_card(writer.dir.parent)  # datasets.load_dataset(<cache>) opens every split
    shutil.rmtree(writer.dir / fmt.GENERATED_DIR, ignore_errors=True)  # continuations are in the rows now


def package_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("sgdd", "torch", "transformers", "tokenizers", "pyarrow", "zarr", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------------------
# the whole collect
# ------------------------------------------------------------------------------------------------
def prepare_cache(out: Path, cfg: CollectConfig, mode, fingerprint: dict) -> DirLock:
    """Lock the cache (one collect at a time), write the encoder files and the resolved config.
    With --overwrite, a cache of another encoder is emptied first: its splits never mix with ours."""
    if out.exists() and not out.is_dir():
        raise SgddError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io_error(f"creating {out}", e) from None
    lock = DirLock(out)
    try:
        info, embeddings, tensors = mode.encoder_info(fingerprint)
        meta = out / fmt.ENCODER_DIR / fmt.ENCODER_META
        if cfg.overwrite and meta.is_file() and encoder_identity_diff(json.loads(meta.read_text()), info):
            get_logger("collect").warning(f"--overwrite: {out} held another encoder's data; removing it")
            for p in out.iterdir():
                if p.name != fmt.LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        write_encoder_files(out, mode.model.tokenizer, embeddings, info, tensors)
        body = mode.body()
        if body is not None:
            write_body_files(out, *body)
        write_text_atomic(out / "collect-config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    except OSError as e:
        lock.release()
        raise io_error(f"writing {out}", e) from None
    except BaseException:
        lock.release()
        raise
    return lock


def run(cfg: CollectConfig) -> Path:
    """Collect every split of ``cfg.splits`` into ``cfg.out`` (default cache/<dataset>).
    Under torchrun every rank runs this; each commits its own shards."""
    ranks = init_ranks()
    try:
        return _collect(cfg, ranks)
    finally:
        ranks.close()


def _collect(cfg: CollectConfig, ranks: CollectRanks) -> Path:
    default_threads(ranks)
    source = get_source(cfg.dataset, cfg.data_dir, cfg.text_field, cfg.source_field, cfg.target_field)
    specs = [parse_split(s, cfg.max_samples) for s in cfg.splits or source.splits]
    for name, _ in specs:
        if name not in source.splits:
            raise SgddError(f"dataset {source.name!r} has no split {name!r} (has: {', '.join(source.splits)})")
    out = Path(cfg.out or Path("cache") / source.name)
    if out.exists() and not out.is_dir():
        raise SgddError(f"output path {out} exists and is not a directory")
    device = rank_device(cfg.device, ranks)
    precision = pick_precision(cfg.precision, device)
    log(ranks, f"encoder on {device}, {precision.describe()}")
    mode = load_mode(cfg, source, device, precision)
    fingerprint = mode.model.fingerprint()
    settings = mode.settings(fingerprint, precision)
    lock = ranks.on_main(lambda: prepare_cache(out, cfg, mode, fingerprint))
    try:
        for name, cap in specs:
            collect_split(mode, name, cap, out, settings, ranks)
    finally:
        if lock is not None:
            lock.release()
    return out
