"""Ranks for Stage 1 under ``torchrun``: who owns which shard, barriers, errors raised on every rank.

``torchrun --nproc_per_node=N`` (and multi-node, with the cache on a shared filesystem) sets
RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs as rank 0 of 1. Collect needs
only tiny messages (flags, error texts), so the process group is always gloo, whatever
device the models run on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch

from sgdd.errors import SgddError
from sgdd.runtime import Ranks, launched_ranks

T = TypeVar("T")
# A rank waits at a barrier for the slowest one (at most about one shard of work); a rank that
# dies makes torchrun stop the others, so a long timeout never leaves a job hanging.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass
class CollectRanks(Ranks):
    """The ranks of a collect job, with the few collective steps it needs."""

    started_group: bool = False

    def owns(self, index: int) -> bool:
        """Shards (and generation chunks) are dealt round-robin: index i goes to rank i % world."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 while the others wait; an error there is raised on every rank
        (the same one-line SgddError), so no rank waits forever for a failed rank 0."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except SgddError as e:
                error = str(e)
            except BaseException as e:
                if self.world == 1:
                    raise
                self.broadcast(f"rank 0 failed: {type(e).__name__}: {e}")
                raise
        error = self.broadcast(error)
        if error is not None:
            raise SgddError(error)
        return result

    def all_agree(self, value: Any) -> Any:
        """Every rank's ``value`` must equal rank 0's (a check that the ranks saw the same data)."""
        if self.world == 1:
            return value
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise SgddError(f"ranks disagree ({values}); every rank must read the same data and settings")
        return value

    def close(self) -> None:
        if self.started_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.started_group = False


def init_ranks() -> CollectRanks:
    """The ranks torchrun started (a gloo process group), or a single rank 0."""
    ranks = CollectRanks(**dataclasses.asdict(launched_ranks()))
    if ranks.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        ranks.started_group = True
    return ranks
