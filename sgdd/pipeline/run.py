"""`sgdd run`: collect -> train -> eval, each stage reading what the previous one wrote."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

import click
import yaml

from sgdd.config import parse_set
from sgdd.errors import SgddError
from sgdd.models.checkpoint import LAST, TRAINER_STATE, checkpoint_dir
from sgdd.stages import collect, evaluate, train
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.rundir import run_dir_for


@dataclass
class RunConfig:
    """`sgdd run`: the three stages from one file."""

    collect: CollectConfig = field(default_factory=CollectConfig, metadata={"help": "Stage 1."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Stage 2."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Stage 3."})

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        return self.collect.problems() + self.train.problems() + self.eval.problems()


# The keys `sgdd run` fills in itself -> what it fills them with.
LINKS = {
    "train.shards": "the cache that collect writes",
    "eval.shards": "the cache that collect writes",
    "eval.run": "the run that train writes",
}


def given_links(config_file: str | Path, sets: tuple[str, ...] | list[str] = ()) -> set[str]:
    """The keys of ``LINKS`` that the YAML file or a ``--set`` names with a value (not null)."""
    data = yaml.safe_load(Path(config_file).read_text()) or {}
    given = {key for key in LINKS if (data.get(key.split(".")[0]) or {}).get(key.split(".")[1]) is not None}
    for key, value in parse_set(sets).items():
        if key in LINKS:
            if value is None:
                given.discard(key)
            else:
                given.add(key)
    return given


def check_link(cfg: RunConfig, key: str, given: Collection[str], linked: Path) -> None:
    """A value the file gives for ``key`` must name ``linked``, the path `sgdd run` uses there."""
    if key not in given:
        return
    section, name = key.split(".")
    value: Any = getattr(getattr(cfg, section), name)
    if Path(value).resolve() != linked.resolve():
        raise SgddError(f"{key} is {value!r}, but `sgdd run` uses {LINKS[key]} there ({linked}); "
                        f"remove {key} from the file or make it {str(linked)!r}")


def run_all(cfg: RunConfig, given: Collection[str] = ()) -> Path:
    """The three stages in order. ``given``: the keys of ``LINKS`` the config file set itself
    (``given_links``); each must agree with the path the stages pass on, or nothing runs further."""
    times = {}
    t0 = time.time()
    cache_dir = collect.run(cfg.collect)
    times["collect"] = time.time() - t0
    check_link(cfg, "train.shards", given, cache_dir)
    check_link(cfg, "eval.shards", given, cache_dir)
    train_cfg = dataclasses.replace(cfg.train, shards=str(cache_dir))
    run_dir = run_dir_for(train_cfg)
    check_link(cfg, "eval.run", given, run_dir)

    t0 = time.time()
    # a rerun after an interruption continues the run instead of refusing it
    resume = (checkpoint_dir(run_dir, LAST) / TRAINER_STATE).is_file()
    run_dir = train.run(dataclasses.replace(train_cfg, resume=cfg.train.resume or resume))
    times["train"] = time.time() - t0

    t0 = time.time()
    report = evaluate.run(dataclasses.replace(cfg.eval, run=str(run_dir), shards=str(cache_dir)))
    times["eval"] = time.time() - t0
    click.echo("wall time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    return report
