"""Exact de-duplication over a stream in 8 bytes per distinct item.

A Python set of hashes costs ~70 bytes per entry; here recent hashes sit in a small set that is
flushed into sorted ``uint64`` arrays (merged like a log-structured tree so each hash is copied
O(log n) times). Memory: 8 bytes per distinct item plus a bounded buffer, so 1M distinct
sentences take ~8 MiB. Collisions of the 64-bit blake2b hash are negligible (~n^2 / 2^65).
"""

from __future__ import annotations

import hashlib

import numpy as np

FLUSH_AT = 1 << 16  # recent hashes kept in a Python set (~5 MiB) before they are flushed


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class SeenHashes:
    """``first_seen(key)`` is True the first time a 64-bit key is offered, False afterwards."""

    def __init__(self, flush_at: int = FLUSH_AT):
        self.flush_at = flush_at
        self.recent: set[int] = set()
        self.levels: list[np.ndarray] = []  # sorted, disjoint; sizes shrink along the list

    def __len__(self) -> int:
        return len(self.recent) + sum(len(a) for a in self.levels)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.levels)

    def _in_levels(self, key: int) -> bool:
        k = np.uint64(key)
        for a in self.levels:
            i = int(np.searchsorted(a, k))
            if i < len(a) and a[i] == k:
                return True
        return False

    def first_seen(self, key: int) -> bool:
        if key in self.recent or self._in_levels(key):
            return False
        self.recent.add(key)
        if len(self.recent) >= self.flush_at:
            self._flush()
        return True

    def _flush(self) -> None:
        new = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        new.sort()
        self.recent = set()
        self.levels.append(new)
        while len(self.levels) > 1 and len(self.levels[-1]) * 2 >= len(self.levels[-2]):
            b, a = self.levels.pop(), self.levels.pop()
            merged = np.concatenate([a, b])
            merged.sort(kind="stable")
            self.levels.append(merged)
