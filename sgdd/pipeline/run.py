"""`sgdd run`: collect -> train -> eval, each stage reading what the previous one wrote."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from sgdd.models.checkpoint import LAST, TRAINER_STATE, checkpoint_dir
from sgdd.pipeline.config import RunConfig
from sgdd.stages.train.rundir import run_dir_for


def run_all(cfg: RunConfig) -> Path:
    from sgdd.stages import collect, evaluate, train

    times = {}
    t0 = time.time()
    cache_dir = collect.run(cfg.collect)
    times["collect"] = time.time() - t0

    t0 = time.time()
    # a rerun after an interruption continues the run instead of refusing it
    resume = (checkpoint_dir(run_dir_for(cfg.train), LAST) / TRAINER_STATE).is_file()
    run_dir = train.run(dataclasses.replace(cfg.train, shards=str(cache_dir), resume=cfg.train.resume or resume))
    times["train"] = time.time() - t0

    t0 = time.time()
    report = evaluate.run(dataclasses.replace(cfg.eval, run=str(run_dir), shards=str(cache_dir)))
    times["eval"] = time.time() - t0
    click.echo("wall time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    return report
