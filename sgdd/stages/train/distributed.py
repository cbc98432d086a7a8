"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPU) with torch's
``DistributedDataParallel``.

Every process holds the whole model and walks the same global sample order; each global
micro-batch is cut into one contiguous share per rank (:func:`shard`). The forward-process
noise is drawn for the global samples on every rank, so a sample is masked the same way
whatever the number of processes. Each rank backpropagates ``world * (sum of its samples'
losses) / n`` (n = the step's global sample count) through the DDP wrapper (:func:`wrap`);
DDP averages the gradients over ranks, so every rank ends with ``sum of all losses / n``.
Every micro-batch but the last of an optimizer step runs under ``no_sync()``, so gradients
are exchanged once per step. The result equals one process with the whole global batch up
to float summation order; a rank without a sample in the step's last micro-batch still joins
the exchange with a zero-weighted sample. Clipping, the optimizer and the EMA then see
identical gradients on every rank.

Rank 0 alone writes the run directory (config, metrics, checkpoints, trackers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from sgdd.runtime import Ranks, launched_ranks


def init_distributed(device: torch.device) -> Ranks:
    """Join the process group torchrun set up (once per process); single process: a no-op."""
    ranks = launched_ranks()
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks


def shutdown(info: Ranks) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of n items (the first n % world ranks get one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def barrier(info: Ranks) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(info: Ranks, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (single process: unchanged)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class DataParallel(nn.parallel.DistributedDataParallel):
    """DDP around a decoder that still answers the decoder's own attributes (``logits``,
    ``mask_id``, ``cfg``), so a loss written for the bare model takes the wrapper unchanged."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(info: Ranks, model: nn.Module, device: torch.device) -> nn.Module | None:
    """``model`` in DistributedDataParallel (its weights become rank 0's at construction);
    None in a single process. Buffers (RoPE tables) are identical everywhere and not broadcast."""
    if not info.distributed:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return DataParallel(model, device_ids=ids, broadcast_buffers=False)


def gather_objects(info: Ranks, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
