"""Durable writes and content hashes: the one implementation of atomic replace, fsync and sha256.

A file or directory is written under a temporary name beside its final one (``temp_name``),
fsynced, then renamed over it: a reader sees the old content or the new, never a half. The
temporary name starts with a dot and holds ``.tmp-``, so a sweep can find what a killed
process left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

BLOCK = 1 << 20  # bytes read at a time while hashing
TMP_MARK = ".tmp-"  # in every temporary name (``.<name>.tmp-<pid>``)
OLD_MARK = ".old-"  # a replaced directory, renamed aside until the new one is in place


# ------------------------------------------------------------------------------------------------
# sha256
# ------------------------------------------------------------------------------------------------
def bytes_sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _update(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file's content."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def named_sha256(items: Iterable[tuple[str, Path]]) -> str:
    """Hex sha256 over ``name + NUL + content`` of each (name, file), in the order given: one
    digest for a set of files that also changes when a file is renamed."""
    h = hashlib.sha256()
    for name, path in items:
        h.update(name.encode() + b"\0")
        _update(h, path)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# fsync
# ------------------------------------------------------------------------------------------------
def fsync_path(path: Path) -> None:
    """fsync one file or directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or unlink inside it survives a crash."""
    fsync_path(path)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (and ``root`` itself)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
def temp_name(path: Path) -> Path:
    """The temporary sibling that ``path`` is written under before the rename."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (by any writer, e.g.
    safetensors' ``save_file``); on success it is fsynced and renamed over ``path``, on any
    failure removed."""
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: readers see the old file or the new one."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def publish_dir(tmp: Path, final: Path, replace: bool = False) -> None:
    """Make the fully written directory ``tmp`` appear as ``final``: fsync it, rename it, fsync
    the parent. ``replace``: an existing ``final`` is first renamed aside (``.<name>.old-<pid>``)
    and removed after the new one is in place; :func:`recover_dir` repairs a kill in between."""
    fsync_tree(tmp)
    old = None
    if replace and final.exists():
        old = final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old)


def recover_dir(final: Path) -> bool:
    """Repair what a kill inside ``publish_dir(..., replace=True)`` leaves. When ``final`` is
    missing but an old copy was renamed aside, the temporary copy of the same process is complete
    (it was fsynced before the first rename) and takes its place; otherwise the old copy goes
    back. Leftovers of earlier writes are removed. True when ``final`` was repaired."""
    parent = final.parent
    if not parent.is_dir():
        return False
    repaired = False
    if not final.exists():
        for old in sorted(parent.glob(f".{final.name}{OLD_MARK}*")):
            tmp = parent / f".{final.name}{TMP_MARK}{old.name.rsplit('-', 1)[1]}"
            os.rename(tmp if tmp.is_dir() else old, final)
            repaired = True
            break
    if final.exists():
        for leftover in [*parent.glob(f".{final.name}{OLD_MARK}*"), *parent.glob(f".{final.name}{TMP_MARK}*")]:
            shutil.rmtree(leftover, ignore_errors=True)
    return repaired
