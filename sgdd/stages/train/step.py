"""The computation of training: one optimizer step over exactly ``grad_accum`` global
micro-batches (one clip, one optimizer and scheduler step, one EMA update; under torchrun one
gradient exchange), and the validation loss on fixed batches with fixed noise."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from sgdd.models.decoder import Decoder
from sgdd.models.diffusion import sample_noise
from sgdd.runtime import Precision, Ranks
from sgdd.stages.train import distributed as ddp
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.loss import StepNoise, draw_noise, masked_diffusion_loss
from sgdd.stages.train.samplers import validation_batches
from sgdd.stages.train.state import TrainState


@dataclass
class StepStats:
    loss: torch.Tensor  # the step's loss (weighted, averaged over its samples)
    ce_sum: torch.Tensor
    correct: torch.Tensor
    n_masked: torch.Tensor
    samples: int  # global samples in the step
    lr: float
    grad_norm: torch.Tensor | None
    data_s: float = 0.0  # seconds this process spent getting its batches
    length_acc: torch.Tensor | None = None  # share of sentences whose length head was right


def train_step(state: TrainState, view, cfg: TrainConfig, prec: Precision, device: torch.device) -> StepStats:
    """One optimizer step over exactly ``grad_accum`` global micro-batches."""
    model, ocfg, dist = state.model, cfg.optim, state.dist
    net = state.wrapped if state.wrapped is not None else model  # forward/backward through DDP
    model.train()
    # 1. the step's samples: grad_accum global micro-batches of sample indices
    batches = [state.sampler.next_batch() for _ in range(ocfg.grad_accum)]
    n = sum(b.numel() for b in batches)
    # 2. the forward-process noise of all n global samples at once: t [n], u [n, L], drop [n]
    noise = draw_noise(n, view.length, cfg.diffusion, cfg.model.cond_drop, state.noise_rng)
    # 3. this rank's share of each micro-batch; each backward carries world/n per sample (DDP
    #    averages over ranks); gradients are exchanged only after the last micro-batch
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # weighted loss, ce, correct, scored tokens, lengths right
    start, data_s = 0, 0.0
    for k, idx in enumerate(batches):
        mine = ddp.shard(idx.numel(), dist.rank, dist.world)
        rows = slice(start + mine.start, start + mine.stop)
        start += idx.numel()
        last = k == len(batches) - 1
        weight = dist.world / n
        if mine.stop == mine.start:
            if not (last and state.wrapped is not None):
                continue
            # no sample here, but every rank joins the step's gradient exchange: a zero-weighted one
            mine, rows, weight = slice(0, 1), slice(start - idx.numel(), start - idx.numel() + 1), 0.0
        began = time.perf_counter()
        batch = view.batch_unpadded(idx[mine]) if cfg.batching == "by_length" else view.batch(idx[mine])
        x0 = batch.x0.to(device, non_blocking=True)  # [b, L]
        z = batch.cond.to(device, non_blocking=True)  # [b, D]
        lengths = None if batch.lengths is None else batch.lengths.to(device)  # [b]
        data_s += time.perf_counter() - began
        sync = contextlib.nullcontext() if last or state.wrapped is None else net.no_sync()
        with sync:
            with prec.autocast():
                parts = masked_diffusion_loss(net, x0, z, noise.select(rows, device), cfg.diffusion, cfg.given,
                                              lengths, vocab=state.loss_vocab, draw=state.step * ocfg.grad_accum + k)
            state.scaler.scale(parts.weighted * weight).backward()
        if weight:
            sums += torch.stack([parts.weighted.detach(), parts.ce_sum, parts.correct, parts.n_masked,
                                 parts.length_correct]).double()
    # 4. the step's statistics summed over ranks, then one clip and one optimizer step
    ddp.all_reduce_sum(dist, sums)
    lr = state.optimizer.param_groups[0]["lr"]
    grad_norm = None
    if ocfg.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1
    if state.ema is not None:
        state.ema.update(model)
    loss, ce_sum, correct, n_masked, length_correct = sums.unbind()
    length_acc = length_correct / n if getattr(model, "length_head", None) is not None else None
    return StepStats(loss / n, ce_sum, correct, n_masked, n, lr, grad_norm, data_s, length_acc)


@torch.no_grad()
def validation_loss(model: Decoder, view, cfg: TrainConfig, prec: Precision, device: torch.device,
             dist: Ranks = Ranks()) -> dict:
    """The training loss on the first ``eval_batches`` micro-batches of ``view``, with the condition
    always kept and noise from a generator seeded by ``cfg.seed`` (the same at every validation).
    Under torchrun each rank scores its share of every batch and the sums are added."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    bs = cfg.optim.batch_size * dist.world
    n = min(len(view), cfg.eval_batches * bs)
    sums = torch.zeros(5, dtype=torch.float64)
    by_length = cfg.batching == "by_length"
    for idx in validation_batches(view, n, bs, by_length):
        t, u = sample_noise(idx.numel(), view.length, cfg.diffusion.time_eps, generator)
        mine = ddp.shard(idx.numel(), dist.rank, dist.world)
        if mine.stop == mine.start:
            continue
        batch = view.batch_unpadded(idx[mine]) if by_length else view.batch(idx[mine])
        noise = StepNoise(t[mine].to(device), u[mine].to(device), None)
        lengths = None if batch.lengths is None else batch.lengths.to(device)
        with prec.autocast():
            parts = masked_diffusion_loss(model, batch.x0.to(device), batch.cond.to(device), noise, cfg.diffusion,
                                          cfg.given, lengths)
        sums += torch.tensor([parts.weighted.item(), parts.ce_sum.item(), parts.correct.item(), parts.n_masked.item(),
                              parts.length_correct.item()], dtype=torch.float64)
    ddp.all_reduce_sum(dist, sums)
    model.train(was_training)
    weighted, ce_sum, correct, n_masked, length_correct = sums.tolist()
    out = {"val_loss": weighted / n, "val_ce": ce_sum / max(1, n_masked), "val_acc": correct / max(1, n_masked)}
    if model.length_head is not None and view.name == "sentence":
        out["val_length_acc"] = length_correct / n
    return out
