"""The order training reads samples in: global micro-batches of sample indices, epoch after epoch,
either padded (any lengths together) or one sentence length per batch; and the fixed batches of a
validation. Every rank draws the same order and takes its share (``distributed.shard``)."""

from __future__ import annotations

import torch

from sgdd.errors import SgddError
from sgdd.stages.train.config import TrainConfig


class EpochSampler:
    """Global micro-batches of sample indices in a shuffled order per epoch, epoch after epoch
    (infinite). Every rank draws the same order; each takes its share with ``distributed.shard``.

    The last micro-batch of an epoch may be smaller; nothing is dropped. The state is the epoch,
    the position in its order and the generator state the order was drawn from.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        assert n > 0 and batch_size > 0
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self._draw_order()

    def _draw_order(self) -> None:
        self._epoch_rng = self.generator.get_state()
        self.order = torch.randperm(self.n, generator=self.generator)  # [N]

    def next_batch(self) -> torch.Tensor:
        """Indices [b] with b <= batch_size."""
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._draw_order()
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += idx.numel()
        return idx

    def state_dict(self) -> dict:
        return {"n": self.n, "epoch": self.epoch, "pos": self.pos, "epoch_rng": self._epoch_rng}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise SgddError(f"the training split now has {self.n} usable samples, the checkpoint was written with "
                            f"{state['n']}; resume with the same --shards and max_train_samples")
        self.generator.set_state(state["epoch_rng"])
        self._draw_order()
        self.epoch, self.pos = state["epoch"], state["pos"]


def length_batches(order: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The indices ``order`` grouped by ``lengths[index]`` (a stable sort: within a length they keep
    their order), each group cut into batches of at most batch_size."""
    grouped = order[torch.sort(lengths[order], stable=True).indices]
    sizes = torch.unique_consecutive(lengths[grouped], return_counts=True)[1].tolist()
    return [b for group in grouped.split(sizes) for b in group.split(batch_size)]


class LengthSampler(EpochSampler):
    """Like :class:`EpochSampler`, but every micro-batch holds sentences of one length, so no
    padding is computed. Each epoch shuffles the rows, groups them by length (a stable sort keeps
    the shuffle inside a group), cuts each group into batches and shuffles the batches."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int):
        self.lengths = lengths
        super().__init__(lengths.numel(), batch_size, seed)

    def _draw_order(self) -> None:
        self._epoch_rng = self.generator.get_state()
        perm = torch.randperm(self.n, generator=self.generator)  # [N]
        batches = length_batches(perm, self.lengths, self.batch_size)
        self.batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        self.order = torch.cat(self.batches)

    def next_batch(self) -> torch.Tensor:
        """Indices [b] of sentences of one length, b <= batch_size (``pos`` counts rows)."""
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._draw_order()
        done, k = 0, 0
        while done < self.pos:  # the batch that starts at row pos
            done += self.batches[k].numel()
            k += 1
        idx = self.batches[k]
        self.pos += idx.numel()
        return idx


def make_sampler(cfg: TrainConfig, view, world: int) -> EpochSampler:
    """Global micro-batches of batch_size x processes samples: padded, or one length per batch."""
    size = cfg.optim.batch_size * world
    if cfg.batching == "by_length":
        return LengthSampler(view.lengths, size, cfg.seed)
    return EpochSampler(len(view), size, cfg.seed)


def validation_batches(view, n: int, batch_size: int, by_length: bool) -> list[torch.Tensor]:
    """The first n samples in batches of batch_size; ``by_length``: grouped by sentence length
    first (each batch one length, as training sees them)."""
    idx = torch.arange(n)
    return length_batches(idx, view.lengths, batch_size) if by_length else list(idx.split(batch_size))
