"""One training run: the loop, and what it does every log_every / eval_every / save_every steps
(log lines, validation and the best checkpoint, the last checkpoint), until max_steps or the time
budget; ``run(cfg)`` is the stage's entry."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sgdd.cache.reader import open_cache
from sgdd.config import to_dict
from sgdd.log import get_logger, progress
from sgdd.models.checkpoint import BEST, LAST, MODEL_FILE, checkpoint_dir, model_meta, read_meta
from sgdd.models.decoder import Decoder
from sgdd.models.portable import copy_encoder_files
from sgdd.runtime import default_threads, launched_ranks, pick_precision, rank_device
from sgdd.stages.train import distributed as ddp
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.data import check_cache_fits, load_data
from sgdd.stages.train.model import build_model, compile_model, init_from
from sgdd.stages.train.rundir import (CONFIG_FILE, METRICS_FILE, append_metrics, check_config_unchanged, check_run_dir,
                                      json_safe, last_validation, recover_checkpoint, reset_metrics, run_dir_for,
                                      write_checkpoint, write_config)
from sgdd.stages.train.state import new_state, restore, trainer_state
from sgdd.stages.train.step import StepStats, train_step, validation_loss
from sgdd.stages.train.trackers import Tracker, open_trackers

RANK_SEED_OFFSET = 1000  # torch RNG (dropout) of rank r > 0: cfg.seed + 1000 r

log = get_logger("train")


class Meter:
    """Step statistics accumulated between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.samples, self.seconds, self.data_s = 0, 0, 0.0, 0.0
        self.loss = self.ce_sum = self.correct = self.n_masked = 0.0
        self.grad_norm: float | None = None
        self.lr = 0.0
        self.length_acc: float | None = None

    def add(self, s: StepStats, seconds: float) -> None:
        self.steps += 1
        self.samples += s.samples
        self.seconds += seconds
        self.data_s += s.data_s
        self.loss += s.loss.item()
        self.ce_sum += s.ce_sum.item()
        self.correct += s.correct.item()
        self.n_masked += s.n_masked.item()
        self.lr = s.lr
        self.grad_norm = None if s.grad_norm is None else s.grad_norm.item()
        if s.length_acc is not None:
            self.length_acc = (self.length_acc or 0.0) + s.length_acc.item()

    def row(self, step: int, epoch: int, length: int, elapsed: float) -> dict:
        """The log line: means over the steps since the last one (lr and grad_norm of the last step).
        ``data_share``: the share of step time rank 0 spent getting its batches."""
        masked = max(1.0, self.n_masked)
        return {"step": step, "epoch": epoch, "lr": self.lr, "loss": self.loss / max(1, self.steps),
                "masked_ce": self.ce_sum / masked, "masked_acc": self.correct / masked,
                "grad_norm": self.grad_norm, "tokens_per_s": self.samples * length / max(self.seconds, 1e-9),
                "data_share": self.data_s / max(self.seconds, 1e-9), "elapsed": elapsed} | (
                {} if self.length_acc is None else {"length_acc": self.length_acc / max(1, self.steps)})


@dataclass
class TrainResult:
    """What a run ends with: its directory, the trained model, the last step, the best validation
    loss, the seconds it took and the rows of metrics.jsonl."""

    run_dir: Path
    model: Decoder
    step: int
    best_val: float
    wall_s: float
    metrics: list[dict] = field(default_factory=list)


class Trainer:
    """One training run: the loop and what it does every log_every / eval_every / save_every steps."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = rank_device(cfg.device, launched_ranks())
        self.dist = ddp.init_distributed(self.device)
        self.run_dir = run_dir_for(cfg)
        if self.dist.is_main:
            for which in (LAST, BEST):
                recover_checkpoint(checkpoint_dir(self.run_dir, which))
        ddp.barrier(self.dist)
        check_run_dir(self.run_dir, cfg.resume)
        if cfg.resume:
            check_config_unchanged(self.run_dir, cfg)
        self.prec = pick_precision(cfg.precision, self.device)
        log.info(f"training on {self.device}, {self.prec.describe()}")
        self.data = load_data(cfg)
        model = build_model(cfg, self.data)
        if cfg.resume:
            last = checkpoint_dir(self.run_dir, LAST)
            check_cache_fits(read_meta(last), self.data, cfg.shards, f"the run to resume ({last})", cfg.allow_foreign_cache)
            if cfg.init_from:
                log.info("resuming: the weights come from checkpoints/last, init_from applies to a new run only")
        elif cfg.init_from:
            init_from(model, cfg, self.data)
        if self.dist.rank > 0:  # dropout differs per rank; weights and data order do not
            torch.manual_seed(cfg.seed + RANK_SEED_OFFSET * self.dist.rank)
        self.state = new_state(model.to(self.device), cfg, self.data, self.prec, self.device, self.dist)
        if cfg.compile:
            compile_model(self.state.model)
        validated_at = None
        if cfg.resume:
            restore(self.state, self.run_dir)
            log.info(f"resumed {self.run_dir} at step {self.state.step}")
            validated_at = last_validation(self.run_dir / METRICS_FILE, self.state.step)
        self.state.wrapped = ddp.wrap(self.dist, self.state.model, self.device)  # rank 0's weights everywhere
        if self.state.wrapped is not None:
            log.info(f"DistributedDataParallel over {self.dist.world} processes ({torch.distributed.get_backend()})")
        ddp.barrier(self.dist)  # every rank has read the run directory before rank 0 writes to it
        self.metrics_path = self.run_dir / METRICS_FILE
        self.trackers: list[Tracker] = []
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(cfg, self.run_dir / CONFIG_FILE)
            copy_encoder_files(open_cache(cfg.shards), self.run_dir)  # the run decodes without its cache
            reset_metrics(self.metrics_path, self.state.step if cfg.resume else None)
            self.trackers = open_trackers(cfg.report_to, self.run_dir, self.run_dir.name, to_dict(cfg))
        self.saved_at = self.state.step if cfg.resume else None
        self.evaluated_at: int | None = validated_at  # a finished run resumed is not validated twice
        self.started = time.perf_counter()

    # -- what happens between steps -------------------------------------------------------------
    def meta(self) -> dict:
        return model_meta(self.state.model, self.cfg.shards, self.data.special_ids) | {
            "step": self.state.step, "view": self.data.view, "tokenizer_sha256": self.data.tokenizer_sha256,
            "ema_decay": self.cfg.ema_decay or None, "encoder": self.data.identity, "batching": self.cfg.batching,
            "diffusion": {"schedule": self.cfg.diffusion.schedule, "kappa": self.cfg.diffusion.kappa}} | (
            {"block_length": self.data.train.length, "block_tail": self.cfg.block_tail, "given": self.cfg.given,
             "consistent_labels": self.data.train.consistent}
            if self.data.view == "next_block" else {})

    def log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        append_metrics(self.metrics_path, row)
        for tracker in self.trackers:
            tracker.log(json_safe(row), row["step"])

    def write(self, which: str, with_state: dict | None = None) -> None:
        if self.dist.is_main:
            write_checkpoint(checkpoint_dir(self.run_dir, which), self.state.model, self.meta(), with_state,
                             self.state.ema)

    def save_last(self) -> None:
        """checkpoints/last with trainer state (and best = last when there is no validation)."""
        self.write(LAST, trainer_state(self.state))  # collective: every rank gathers RNG states
        if self.data.val is None:
            self.write(BEST)
        self.saved_at = self.state.step

    def eval_model(self) -> Decoder:
        """The weights evaluation uses: the EMA ones when kept."""
        ema = self.state.ema
        return self.state.model if ema is None else ema.averaged_model(self.state.model)

    def validate(self) -> dict:
        """Validation loss (of the EMA weights when kept); a new lowest one writes checkpoints/best."""
        assert self.data.val is not None
        scores = validation_loss(self.eval_model(), self.data.val, self.cfg, self.prec, self.device, self.dist)
        row = {"step": self.state.step, **scores, "elapsed": time.perf_counter() - self.started}
        if self.state.ema is not None:
            row["weights"] = "ema"
        if row["val_loss"] < self.state.best_val:
            self.state.best_val = row["val_loss"]
            self.write(BEST)
            row["best"] = True
        self.log(row)
        self.evaluated_at = self.state.step
        return row

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> TrainResult:
        cfg, state = self.cfg, self.state
        max_steps = cfg.optim.max_steps
        limit = max_steps if stop_at is None else min(stop_at, max_steps)
        meter = Meter()
        bar = progress(total=max_steps, initial=state.step, desc="train", unit="step", main=self.dist.is_main,
                       logger="train")
        try:
            while state.step < limit and not state.clock.out:
                iteration = time.perf_counter()
                began = time.perf_counter()
                stats = train_step(state, self.data.train, cfg, self.prec, self.device)
                meter.add(stats, time.perf_counter() - began)
                bar.update(1)
                if _due(state.step, cfg.log_every) or state.step == max_steps:
                    row = meter.row(state.step, state.sampler.epoch, self.data.train.length,
                                    time.perf_counter() - self.started)
                    self.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['masked_acc']:.3f}")
                    meter.reset()
                if self.data.val is not None and _due(state.step, cfg.eval_every):
                    self.validate()
                if _due(state.step, cfg.save_every):
                    self.save_last()
                self.tick(time.perf_counter() - iteration)
            bar.close()
            if state.clock.out and state.step < max_steps:
                log.info(f"time budget of {cfg.optim.max_minutes:g} minutes spent at step {state.step}")
            if state.step < max_steps and not state.clock.out:  # stopped by stop_at: as if killed right after a save
                if self.saved_at != state.step:
                    self.save_last()
                log.info(f"stopped at step {state.step} of {max_steps}; continue with --resume")
            else:
                self.finish()
            ddp.barrier(self.dist)
            return self.result()
        finally:
            for tracker in self.trackers:
                tracker.close()

    def tick(self, seconds: float) -> None:
        """Count one loop iteration against the time budget; every rank takes rank 0's clock, so
        they agree on the learning rate and on when to stop."""
        if self.state.clock.budget_s is None:
            return
        spent = torch.tensor([self.state.clock.spent_s + seconds if self.dist.is_main else 0.0], dtype=torch.float64)
        ddp.all_reduce_sum(self.dist, spent)
        self.state.clock.spent_s = float(spent)

    def finish(self) -> None:
        """Final validation and checkpoint; make sure checkpoints/best exists."""
        if self.data.val is not None and self.evaluated_at != self.state.step:
            self.validate()
        if self.saved_at != self.state.step or not (checkpoint_dir(self.run_dir, LAST) / MODEL_FILE).is_file():
            self.save_last()
        if self.dist.is_main and not (checkpoint_dir(self.run_dir, BEST) / MODEL_FILE).is_file():
            log.info("no finite validation loss: best checkpoint = last")
            self.write(BEST)
        best = f"{self.state.best_val:.4f}" if math.isfinite(self.state.best_val) else "n/a"
        log.info(f"{self.state.model.num_params() / 1e6:.2f}M parameters, {self.state.step} steps in "
            f"{time.perf_counter() - self.started:.1f}s, best val loss {best} -> {self.run_dir}")

    def result(self) -> TrainResult:
        rows = []
        if self.metrics_path.is_file():
            rows = [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
        return TrainResult(self.run_dir, self.state.model, self.state.step, self.state.best_val,
                           time.perf_counter() - self.started, rows)


def _due(step: int, every: int) -> bool:
    """Every N optimizer steps; 0 = never during the run (only at the end)."""
    return every > 0 and step % every == 0


def fit(cfg: TrainConfig, stop_at: int | None = None) -> TrainResult:
    """Train (or resume) and return the run directory, the trained model and the metrics.

    ``stop_at`` (tests, and anyone who wants to train in slices) stops after that optimizer step
    with ``checkpoints/last`` written, exactly as if the run had been killed right after a save;
    the LR schedule still spans ``cfg.optim.max_steps``. Continue with ``cfg.resume = True``.
    """
    trainer = Trainer(cfg)
    try:
        return trainer.fit(stop_at)
    finally:
        ddp.shutdown(trainer.dist)


def run(cfg: TrainConfig, stop_at: int | None = None) -> Path:
    """Stage 2 entry: train the decoder described by ``cfg``; returns the run directory."""
    default_threads(launched_ranks())
    return fit(cfg, stop_at).run_dir
