"""What changes while training (:class:`TrainState`: weights, optimizer, schedule, scaler, data
order, noise generator, EMA, clock, step) and its round trip through ``trainer.pt``: saved
whole, a resumed run continues bit for bit like one that was never stopped."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from sgdd.errors import SgddError
from sgdd.models.checkpoint import (BEST, LAST, TRAINER_STATE, checkpoint_dir, decoder_config, load_ema_weights,
                                    load_model, load_trainer_state)
from sgdd.models.decoder import Decoder
from sgdd.models.ema import EMA
from sgdd.runtime import Precision, Ranks
from sgdd.stages.train import distributed as ddp
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.data import TrainData
from sgdd.stages.train.loss import LossVocab, build_loss_vocab
from sgdd.stages.train.optim import Clock, build_optimizer
from sgdd.stages.train.samplers import EpochSampler, make_sampler

TRAINER_STATE_VERSION = 2  # 2: EMA updates and per-rank RNG states
NOISE_SEED_OFFSET = 1  # training noise generator: cfg.seed + 1 (data order: cfg.seed)


@dataclass
class TrainState:
    """What changes while training; all of it goes into the checkpoint."""

    model: Decoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: EpochSampler
    noise_rng: torch.Generator
    ema: EMA | None = None
    dist: Ranks = field(default_factory=Ranks)
    clock: Clock = field(default_factory=Clock)
    step: int = 0
    best_val: float = math.inf
    wrapped: nn.Module | None = None  # the model in DistributedDataParallel under torchrun, else None
    loss_vocab: LossVocab | None = None  # diffusion.loss_vocab's sampled softmax (fixed: rebuilt from the data)


def new_state(model: Decoder, cfg: TrainConfig, data: TrainData, prec: Precision, device: torch.device,
              dist: Ranks = Ranks()) -> TrainState:
    clock = Clock(None if cfg.optim.max_minutes is None else 60.0 * cfg.optim.max_minutes)
    if cfg.optim.freeze_embeddings:  # no gradient and no optimizer state for the [V, E] matrix
        model.tok_emb.weight.requires_grad_(False)
    optimizer, scheduler = build_optimizer(model, cfg.optim, clock)
    return TrainState(
        model=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=prec.needs_scaler),
        sampler=make_sampler(cfg, data.train, dist.world),
        noise_rng=torch.Generator().manual_seed(cfg.seed + NOISE_SEED_OFFSET),
        ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        dist=dist,
        clock=clock,
        loss_vocab=build_loss_vocab(cfg.diffusion, data, model, cfg.seed),
    )


def trainer_state(state: TrainState) -> dict:
    """Everything but the weights that a resumed run needs to continue exactly. Collective under
    torchrun (every rank's RNG state is gathered): call it on every rank."""
    rng = ddp.gather_objects(state.dist, {"torch": torch.get_rng_state(),
                                          "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
    return {
        "version": TRAINER_STATE_VERSION,
        "step": state.step,
        "best_val": state.best_val,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "sampler": state.sampler.state_dict(),
        "noise_rng": state.noise_rng.get_state(),
        "rng_per_rank": rng,
        "world": state.dist.world,
        "ema_updates": None if state.ema is None else state.ema.updates,
        "train_seconds": state.clock.spent_s,
    }


def check_compatible(meta: dict, model: Decoder, where: Path) -> None:
    """A checkpoint resumes only into a decoder of the same shape, on a cache of the same sizes."""
    problems = []
    for key, now in (("vocab_size", model.vocab_size), ("cond_dim", model.cond_dim),
                     ("embed_dim", model.tok_emb.embedding_dim), ("mask_id", model.mask_id)):
        if meta.get(key) != now:
            problems.append(f"{key} {meta.get(key)} in the checkpoint, {now} now")
    saved = dataclasses.asdict(decoder_config(meta))
    for key, now in dataclasses.asdict(model.cfg).items():
        if saved.get(key) != now:
            problems.append(f"model.{key} {saved.get(key)} in the checkpoint, {now} now")
    if problems:
        raise SgddError(f"cannot resume {where}: " + "; ".join(problems))


def restore(state: TrainState, run_dir: Path) -> None:
    """Load weights, EMA and trainer state from ``checkpoints/last`` into ``state``. A damaged
    file is refused; resume never falls back to ``best`` on its own (the step, optimizer and
    data order of ``best`` are not saved), the message says how to start from it instead."""
    last = checkpoint_dir(run_dir, LAST)
    try:
        saved, meta = load_model(last, prefer_ema=False)
        ts = load_trainer_state(last / TRAINER_STATE)
    except SgddError as e:
        raise SgddError(f"cannot resume: {e}; to continue from checkpoints/{BEST} instead, start a new run "
                        f"with --init-from {checkpoint_dir(run_dir, BEST)}") from None
    check_compatible(meta, state.model, last)
    state.model.load_state_dict(saved.state_dict())
    if ts.get("version") != TRAINER_STATE_VERSION:
        raise SgddError(f"{last / TRAINER_STATE} has version {ts.get('version')!r}; this sgdd reads "
                        f"{TRAINER_STATE_VERSION} (start a new run with --init-from {last})")
    state.optimizer.load_state_dict(ts["optimizer"])
    state.scheduler.load_state_dict(ts["scheduler"])
    state.scaler.load_state_dict(ts["scaler"])
    state.sampler.load_state_dict(ts["sampler"])
    state.noise_rng.set_state(ts["noise_rng"])
    if ts["world"] != state.dist.world:
        raise SgddError(f"{last} was written by a run of {ts['world']} processes, this one has "
                        f"{state.dist.world}: the global batch would change; resume with as many processes "
                        "(or start a new run with --init-from)")
    restore_rng(ts, state.dist)
    restore_ema(state, last, ts["ema_updates"])
    state.step, state.best_val = ts["step"], ts["best_val"]
    state.clock.spent_s = float(ts.get("train_seconds", 0.0))


def restore_rng(ts: dict, dist: Ranks) -> None:
    """This rank's torch (and CUDA) RNG state from the checkpoint."""
    mine = ts["rng_per_rank"][dist.rank]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])


def restore_ema(state: TrainState, last: Path, updates: int | None) -> None:
    """The EMA weights and update count of ``last``; refused when the run kept no EMA and now does, or the reverse."""
    weights = load_ema_weights(last)
    if state.ema is None:
        if weights is not None:
            raise SgddError(f"{last} holds EMA weights but ema_decay is 0 now")
        return
    if weights is None or updates is None:
        raise SgddError(f"{last} has no EMA weights but ema_decay is {state.ema.decay} now")
    state.ema.load_state_dict(weights, updates)
